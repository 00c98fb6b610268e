#!/usr/bin/env bash
# CPU figures of issue 4, written to benchmarks/results/: (1) the 512x512 x2 case with every CPU
# backend timed alternately in one process (ratios under equal conditions), (2) the full
# `lesrcnn bench` (x2/x3/x4, HR 256/512/1024, one process per case for its peak RSS).
# Run on a quiet machine: bash benchmarks/cpu_bench.sh
set -eu
cd "$(dirname "$0")/.."
R=benchmarks/results
mkdir -p $R
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python -m lesrcnn bench --scales 2 --sizes 512 --repeat 7 --warmup 1 --interleave | tee $R/bench_cpu_x2_512_interleaved.txt
python -m lesrcnn bench --repeat 5 --warmup 1 --json > $R/bench_cpu.json
python - $R/bench_cpu.json <<'PY' | tee $R/bench_cpu.txt
import json, sys
rows = json.load(open(sys.argv[1]))
base = {(r["scale"], r["size"]): r["seconds"] for r in rows if r["backend"] == "eager-nchw"}
print(f"# one process per case; fp32 GEMM peak {rows[0]['peak_gflops']:.0f} GFLOP/s on {rows[0]['threads']} threads, same run")
print(f"{'backend':<11} {'scale':>5} {'HR size':>9} {'seconds':>9} {'MP/s':>7} {'GFLOP/s':>8} {'peak%':>6} {'vs eager':>8} {'RSS MB':>7}")
for r in rows:
    b = base.get((r["scale"], r["size"]))
    print(f"{r['backend']:<11} {'x'+str(r['scale']):>5} {r['hr'][0]:>4}x{r['hr'][1]:<4} {r['seconds']:>9.4f} "
          f"{r['mpx_per_s']:>7.3f} {r['gflops']:>8.1f} {r['peak_fraction']:>6.1%} "
          f"{(f'{b / r['seconds']:.2f}x' if b else '-'):>8} {r['peak_rss_mb']:>7.0f}")
PY
