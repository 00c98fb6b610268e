#!/usr/bin/env bash
# Both GPU training jobs side by side in one device call (what the 2026-11-27 H200 loan ran): the
# bicubic job (tools/gpu_train.sh) and, niced, the real-photo job, which is host-bound and barely
# slows the other. Brings back at most 8 files (the device tool's limit) in $OUT:
#   lesrcnn_s.safetensors summary.json metrics.jsonl train.log              (bicubic: the best weights)
#   real_last.safetensors real_ema.safetensors real_summary.json real_train.log
#
#   OUT=/tmp/out tools/gpu_jobs.sh [--minutes 7] [--lr 2e-4] [--real-lr 1e-4]   # device call, carry train_data
#   OUT=/tmp/out tools/gpu_jobs.sh --device cpu --minutes 0.2 --batch 4 --hr-patch 24   # tiny, on a CPU (tested)
# --device, --batch, --hr-patch, --precision, --data and --val go to both jobs; --real-batch and
# --real-hr-patch override the last two for the real-photo job; --loss, --rescale and --init-weights (default:
# the shipped weights) are the bicubic job's.
# Both start from the shipped weights; compare and ship on the CPU afterwards (README, "Our weights").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_jobs}
minutes=7 lr=2e-4 real_lr=1e-4 common=() real_args=() bic_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2;;
    --lr) lr=$2; shift 2;;
    --real-lr) real_lr=$2; shift 2;;
    --device|--batch|--hr-patch|--precision|--data|--val) common+=("$1" "$2"); shift 2;;
    --real-batch|--real-hr-patch) real_args+=("--${1#--real-}" "$2"); shift 2;;
    --loss|--init-weights|--rescale) bic_args+=("$1" "$2"); shift 2;;
    *) echo "gpu_jobs.sh: unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
work=$(mktemp -d)
mkdir -p "$OUT"
real_minutes=$(python -c "print(max(float('$minutes') - 0.2, 0.1))")
(OUT="$work/real" nice -n 15 bash tools/gpu_train.sh --minutes "$real_minutes" --lr "$real_lr" "${common[@]}" ${real_args[@]+"${real_args[@]}"} \
   -- --degradation real --init-weights src/lesrcnn/pretrained/lesrcnn_s_real.safetensors \
   > "$work/real.log" 2>&1; echo "real job: exit $?" >> "$work/real.log") &
OUT="$work/bic" bash tools/gpu_train.sh --minutes "$minutes" --lr "$lr" "${common[@]}" -- ${bic_args[@]+"${bic_args[@]}"} > "$work/bic.log" 2>&1
bic=$?
echo "bicubic job: exit $bic" >> "$work/bic.log"
wait
cp "$work/bic.log" "$OUT/train.log"
cp "$work/real.log" "$OUT/real_train.log"
for f in lesrcnn_s.safetensors summary.json metrics.jsonl; do cp "$work/bic/$f" "$OUT/" 2>/dev/null; done
cp "$work/real/summary.json" "$OUT/real_summary.json" 2>/dev/null
for f in last ema; do cp "$work/real/run/$f.safetensors" "$OUT/real_$f.safetensors" 2>/dev/null; done
grep -v '^ ' "$OUT/train.log" | tail -4
grep -v '^ ' "$OUT/real_train.log" | tail -4
ls "$OUT"
rm -rf "$work"
[ "$bic" = 0 ] && grep -q "real job: exit 0" "$OUT/real_train.log"
