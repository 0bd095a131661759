#!/usr/bin/env bash
# Issue 9's GPU measurements in one run, for a lent H100/H200 (Python 3.12, jax 0.11 with CUDA,
# flax/optax/orbax present; tensorflow-datasets, ml-collections and friends carried as wheels
# in .whl/, see benchmarks/README.md). Writes $OUT/gpu_bench.jsonl and $OUT/gpu_check.log.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/resjax_gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
bench() {
  echo "--- resjax.bench $*"
  timeout 110 python3 -m resjax.bench "$@" --json | tee -a "$OUT/gpu_bench.jsonl"
}
# ResNet-50 at 224², bf16 compute with fp32 params (the MLPerf-style number: images/s, MFU).
bench --model=resnet50 --batch=256 --dtype=bfloat16 --steps=20 --windows=5
# CIFAR ResNet-20 / -56 (epoch = 45k/128 = 351 steps), bf16 and fp32.
bench --model=resnet20 --batch=128 --dtype=bfloat16 --steps=50 --windows=5
bench --model=resnet56 --batch=128 --dtype=bfloat16 --steps=50 --windows=5
# Deep nets: compile time unrolled vs scanned.
bench --model=resnet110 --batch=128 --dtype=bfloat16 --steps=10 --windows=3
bench --model=resnet110 --batch=128 --dtype=bfloat16 --steps=10 --windows=3 --scan
bench --model=resnet1202 --batch=128 --dtype=bfloat16 --steps=5 --windows=3 --scan --remat
# Does the XLA:CPU convolution backward (models/conv.py; off on GPU by default) cost or gain here?
bench --model=resnet110 --batch=128 --dtype=bfloat16 --steps=10 --windows=3 --scan --cpu-convs=on
# The input pipeline on that host's cores (CIFAR-shaped synthetic split).
timeout 120 python3 -m resjax.data.bench --dataset=cifar10 --batch=128
echo "--- done"
