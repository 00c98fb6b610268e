#!/usr/bin/env bash
# CPU figures of issues 4 and 10, written to benchmarks/results/: `lesrcnn bench` (every installed
# backend interleaved in one process, x2 256x256 -> 512x512, 2 threads, median of 5, and the
# whole-file upscale of a 1920x1080 JPEG at x2), then the INT8 accuracy table (needs ../shared).
# Run on a quiet machine: bash benchmarks/cpu_bench.sh
set -eu
cd "$(dirname "$0")/.."
R=benchmarks/results
mkdir -p $R
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
python -m lesrcnn bench -j 2 | tee $R/bench_cpu.txt
OMP_NUM_THREADS=2 python benchmarks/int8_psnr.py | tee $R/int8_psnr.txt
