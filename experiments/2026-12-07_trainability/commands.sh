#!/usr/bin/env bash
# The record's commands, in order, from the repository root (README.md here says what each
# produced, when, and on what machine). Step 1 needs ~47 min of 2 CPU cores; every later step
# but 3 reads only the committed weights files.
set -euo pipefail
R=experiments/2026-12-07_trainability
W=runs/trainability_converged

# 1. Train the six nets: the depth sweep's `:converged` recipe (configs/depth_sweep.py,
#    recipe=fmnist_long: 3,120 steps of 64 on the 5k Fashion-MNIST subset, 40 passes), seed 0,
#    a checkpoint every 390 steps, all kept. Two at a time, one lane per family.
train() {
  local depth=$1 plain=$2 fam
  fam=$([ "$plain" = 1 ] && echo plain || echo resnet)
  python -m resjax.train \
    --config=configs/depth_sweep.py:depth=$depth,plain=$plain,seed=0,ordering=pre,recipe=fmnist_long \
    --config.keep_checkpoints=10 --workdir=$W/${fam}_d${depth}_s0
}
(train 56 1; train 32 1; train 14 1) &
(train 56 0; train 32 0; train 14 0) &
wait

# 2. Their final weights as portable weights files (committed here).
for net in plain_d14 resnet_d14 plain_d32 resnet_d32 plain_d56 resnet_d56; do
  python -m resjax.export --workdir=$W/${net}_s0 --out=$R/weights/$net.msgpack
done

# 3. Top Hessian eigenvalue and trace against training step (every other kept checkpoint of
#    the 56-layer pair, and the last; `--every-step` takes all eight), then at the end of training for all six, same settings, same folder (the
#    56-layer pair's step-3120 estimates are reused, not recomputed; their weights are the
#    committed files': curvature.json records each estimate's SHA-256).
python -m resjax.trainability curvature $W/plain_d56_s0 $W/resnet_d56_s0 --steps=390,1170,1950,2730,3120 \
  --out=$R/curvature --examples=512 --top-k=1 --lanczos-steps=12 --trace-probes=4 --slq-probes=0
python -m resjax.trainability curvature $W/{plain,resnet}_d{14,32,56}_s0 \
  --out=$R/curvature --examples=512 --top-k=1 --lanczos-steps=12 --trace-probes=4 --slq-probes=0

# 4. Loss landscapes at the command's defaults (21 x 21 points over [-1, 1]^2, 1,000 training
#    examples): the 56-, 14- and 32-layer pairs side by side on shared levels; one random
#    direction for the 56-layer pair; the straight line from step 0 to the end for all six.
python -m resjax.trainability landscape $R/weights/plain_d56.msgpack $R/weights/resnet_d56.msgpack --out=$R/plane_56
python -m resjax.trainability landscape $R/weights/{plain,resnet}_d{14,32,56}.msgpack --kind=interpolation --out=$R/interpolation
python -m resjax.trainability landscape $R/weights/plain_d14.msgpack $R/weights/resnet_d14.msgpack --out=$R/plane_14
python -m resjax.trainability landscape $R/weights/plain_d56.msgpack $R/weights/resnet_d56.msgpack --kind=line --out=$R/line_56
python benchmarks/landscape_throughput.py --batch=1000 --rounds=5 --json > $R/throughput.json
python -m resjax.trainability landscape $R/weights/plain_d32.msgpack $R/weights/resnet_d32.msgpack --out=$R/plane_32

# 5. Spectral density (stochastic Lanczos quadrature) and top-3 eigenvalues, 14- and 56-layer pairs.
python -m resjax.trainability curvature $R/weights/{plain,resnet}_d{14,56}.msgpack \
  --out=$R/density --examples=512 --top-k=3 --lanczos-steps=20 --trace-probes=1 --slq-probes=1 --slq-steps=24

# Gradient correlation at initialisation does not depend on the training recipe (same nets,
# same seeds): experiments/2026-12-06_trainability/gradcorr/ holds it (commands.sh step 6 there).
