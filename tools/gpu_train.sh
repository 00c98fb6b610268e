#!/usr/bin/env bash
# The whole GPU training job in one device call of at most 9 minutes: multi-scale LESRCNN-S on
# T91 + BSD200 with a wall-time recipe, validated on Set5, weights + metrics + summary in $OUT.
#
#   python tools/pack_train_data.py            # once, on the CPU: train_data/ (lossless WebP, ~42 MB, + Set5)
#   OUT=/tmp/out tools/gpu_train.sh            # on the GPU machine (run tool: carry ["train_data"])
#   OUT=/tmp/out tools/gpu_train.sh --device cpu --minutes 0.2 --batch 4 --hr-patch 24   # the same, tiny, on a CPU
#
# Recipe (the defaults below): L1 loss, Adam (fused on CUDA), linear warm-up then cosine to zero
# over the wall time (--minutes), batch 64, one HR patch side (96) for x2/x3/x4, bf16 autocast,
# channels-last, EMA 0.999; the start is our own shipped LESRCNN-S weights (--init shipped) or a
# cubic interpolator (--init interp); never the authors' checkpoints. The better of the EMA and
# the raw weights by Set5 PSNR (paper protocol) is written as $OUT/lesrcnn_s.safetensors.
# Any other `lesrcnn train` flag can follow `--`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-runs/gpu_train}
device=cuda minutes=7 batch=64 hr_patch=96 init=shipped lr= ema=0.999 precision=bf16 scale=multi
data=() val=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2;;
    --minutes) minutes=$2; shift 2;;
    --batch) batch=$2; shift 2;;
    --hr-patch) hr_patch=$2; shift 2;;
    --init) init=$2; shift 2;;
    --lr) lr=$2; shift 2;;
    --ema) ema=$2; shift 2;;
    --scale) scale=$2; shift 2;;
    --precision) precision=$2; shift 2;;
    --data) data+=("$2"); shift 2;;
    --val) val+=("$2"); shift 2;;
    --) shift; extra+=("$@"); break;;
    *) echo "gpu_train.sh: unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
if [ ${#data[@]} -eq 0 ]; then
  for d in train_data/T91 train_data/BSD200; do [ -d "$d" ] && data+=("$d"); done
  [ ${#data[@]} -eq 0 ] && for d in ../shared/data/train/T91 ../shared/data/train/BSD200; do [ -d "$d" ] && data+=("$d"); done
  [ ${#data[@]} -eq 0 ] && { echo "gpu_train.sh: no training data (run tools/pack_train_data.py)" >&2; exit 2; }
fi
if [ ${#val[@]} -eq 0 ]; then
  for d in train_data/Set5 ../shared/data/benchmarks/Set5; do [ -d "$d" ] && { val+=("$d"); break; }; done
fi
case "$init" in
  shipped) start=(--init-weights src/lesrcnn/pretrained/lesrcnn_s.safetensors); lr=${lr:-5e-4};;
  interp) start=(--init interp); lr=${lr:-1e-3};;
  *) echo "gpu_train.sh: --init must be shipped or interp" >&2; exit 2;;
esac
[ "$device" = cpu ] && precision=fp32  # bf16 autocast on a CPU without AMX is only slower
run="$OUT/run"
rm -rf "$run"
mkdir -p "$OUT"
args=(train --scale "$scale" --out "$run" --device "$device" --precision "$precision" --loss l1 --lr "$lr"
      --schedule cosine --warmup 300 --steps 100000000 --max-minutes "$minutes" --batch "$batch"
      --hr-patch "$hr_patch" --ema "$ema" --save-every 2000 --log-every 200 --val-every 4000 "${start[@]}")
for d in "${data[@]}"; do args+=(--data "$d"); done
for d in "${val[@]}"; do args+=(--val "$d"); done
echo "lesrcnn ${args[*]} ${extra[*]}" | tee "$OUT/command.txt" >&2
start_s=$(date +%s)
python -m lesrcnn "${args[@]}" "${extra[@]}" 2> >(tee "$OUT/train.log" >&2)
python - "$run" "$OUT" "$(( $(date +%s) - start_s ))" <<'PY'
import json, shutil, sys
from pathlib import Path
run, out, wall = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
best = next(p for p in (run / "best.safetensors", run / "ema.safetensors", run / "last.safetensors") if p.exists())
shutil.copyfile(best, out / "lesrcnn_s.safetensors")
shutil.copyfile(run / "metrics.jsonl", out / "metrics.jsonl")
s = json.loads((run / "summary.json").read_text())
summary = {"train": {k: s[k] for k in ("step", "reason", "loss", "seconds")}, "shipped": best.name,
           "wall_seconds": wall, "command": (out / "command.txt").read_text().strip()}
if s.get("last_val"):
    summary["val"] = {"final": s["last_val"], "final_weights": s.get("last_val_weights"), "best_mean": s["best_val"]}
from lesrcnn import weights as W
summary["provenance"] = W.load(out / "lesrcnn_s.safetensors").metadata.get("provenance")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
