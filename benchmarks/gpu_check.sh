#!/usr/bin/env bash
# The one-shot GPU check (what it measures: benchmarks/gpu_check.py). From the
# repository root, on a GPU machine with resjax's dependencies installed (benchmarks/README.md,
# "GPU", gives the one command line that installs the carried wheels and runs this):
#   bash benchmarks/gpu_check.sh --manual_dir=.fmnist              # ~7 min
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh --data_dir=DIR    # every stage shrunk, CPU
# Writes $OUT/gpu_check.jsonl and $OUT/gpu_check.log (OUT defaults to /tmp/resjax_gpu_check;
# --out=DIR overrides). Exit status 1 when a stage failed; its error is in the JSON lines.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/resjax_gpu_check}
for arg in "$@"; do
  case $arg in
    --out=*) OUT=${arg#--out=} ;;
    --tiny) GPU_CHECK_TINY=1 ;;
  esac
done
export OUT GPU_CHECK_TINY=${GPU_CHECK_TINY:-0} PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ $GPU_CHECK_TINY == 1 ]]; then
  export JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1  # one CPU device: the tiny run is a smoke test
fi
mkdir -p "$OUT"
"${PYTHON:-python3}" benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
