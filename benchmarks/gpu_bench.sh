#!/usr/bin/env bash
# CUDA rows (benchmarks/gpu_bench.py: fp32 with TF32 off, bf16, fp16; device-synchronised) and the
# CUDA correctness test. Writes to ${OUT:-benchmarks/results}. Usage: bash benchmarks/gpu_bench.sh
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} > "$OUT/gpu_env.txt" 2>&1
cat "$OUT/gpu_env.txt"
python -c "import numpy, PIL, tqdm, safetensors" 2>/dev/null || pip install -q numpy pillow tqdm safetensors 2>&1 | tail -1
timeout 420 python benchmarks/gpu_bench.py --scales 2,3,4 --sizes 256,512,1024 --repeat 20 --warmup 5 \
  > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.log"
echo "bench rc=$?"
python - "$OUT/bench_gpu.json" <<'PY' | tee "$OUT/bench_gpu.txt"
import json, sys
rows = json.load(open(sys.argv[1]))
print(f"{'backend':<10} {'scale':>5} {'HR':>9} {'seconds':>9} {'MP/s':>8} {'GFLOP/s':>9} {'peak%':>6} {'GPU MB':>7}")
for r in rows:
    print(f"{r['backend']:<10} {'x'+str(r['scale']):>5} {r['hr'][0]:>4}x{r['hr'][1]:<4} {r['seconds']:>9.5f} "
          f"{r['mpx_per_s']:>8.1f} {r['gflops']:>9.0f} {r['peak_fraction']:>6.1%} {r.get('peak_gpu_mb', 0):>7.0f}")
print("peaks (GFLOP/s, same run):", {r['backend']: round(r['peak_gflops']) for r in rows})
PY
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_bench.py -k "cuda or runners" 2>&1 | tail -3
