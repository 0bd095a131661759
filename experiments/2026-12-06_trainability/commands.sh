#!/usr/bin/env bash
# The record's commands, in order, from the repository root (see README.md here for what each
# produced, when, and on what machine). Steps 1-2 need a few hours of 2 CPU cores; every later
# step reads only the committed weights files (and, for step 5, the training workdirs).
set -euo pipefail
R=experiments/2026-12-06_trainability
W=runs/trainability

# 1. Train the six nets: the default depth sweep's recipe (configs/depth_sweep.py, 1,000 steps
#    of 64 on the 5k Fashion-MNIST subset), seed 0, a checkpoint every 100 steps, all kept.
for depth in 56 14 32; do
  for plain in 0 1; do
    fam=$([ $plain = 1 ] && echo plain || echo resnet)
    python -m resjax.train --config=configs/depth_sweep.py:depth=$depth,plain=$plain,seed=0,ordering=pre \
      --config.checkpoint_every_steps=100 --config.keep_checkpoints=20 --workdir=$W/${fam}_d${depth}_s0
  done
done

# 2. Their final weights as portable weights files (committed here).
for net in plain_d14 resnet_d14 plain_d32 resnet_d32 plain_d56 resnet_d56; do
  python -m resjax.export --workdir=$W/${net}_s0 --out=$R/weights/$net.msgpack
done

# 3. Loss landscapes: 2D planes of the 14- and 56-layer pairs (side by side, same levels), the
#    straight line from step 0 to the final weights for all six.
python -m resjax.trainability landscape $R/weights/plain_d14.msgpack $R/weights/resnet_d14.msgpack \
  --out=$R/plane_14 --resolution=11 --examples=250 --batch-size=250
python -m resjax.trainability landscape $R/weights/plain_d56.msgpack $R/weights/resnet_d56.msgpack \
  --out=$R/plane_56 --resolution=11 --examples=250 --batch-size=250
python -m resjax.trainability landscape $R/weights/plain_d56.msgpack $R/weights/resnet_d56.msgpack \
  --kind=line --out=$R/line_56 --resolution=21 --examples=250 --batch-size=250
python -m resjax.trainability landscape $R/weights/{plain,resnet}_d{14,32,56}.msgpack \
  --kind=interpolation --out=$R/interpolation --resolution=21 --examples=250 --batch-size=250

# 4. Top Hessian eigenvalue against training step, the 56-layer pair (kept checkpoints), then
#    at the end of training for all six, with the same settings into the same folder (the
#    56-layer pair's step-1000 estimates are reused, not recomputed). The workdirs' final
#    weights are the committed weights files (same SHA-256, recorded in curvature.json).
python -m resjax.trainability curvature $W/plain_d56_s0 $W/resnet_d56_s0 \
  --steps=100,300,500,1000 --out=$R/curvature --examples=256 --top-k=1 \
  --lanczos-steps=12 --trace-probes=4 --slq-probes=0
python -m resjax.trainability curvature $W/{plain,resnet}_d{14,32,56}_s0 \
  --out=$R/curvature --examples=256 --top-k=1 --lanczos-steps=12 --trace-probes=4 --slq-probes=0

# 5. Spectral density (SLQ) and top-3 eigenvalues of the final weights, 14- and 56-layer pairs.
python -m resjax.trainability curvature $R/weights/{plain,resnet}_d{14,56}.msgpack \
  --out=$R/density --examples=256 --top-k=3 --lanczos-steps=20 --trace-probes=1 \
  --slq-probes=1 --slq-steps=20

# 6. Gradient correlation at initialisation, three seeds.
python -m resjax.trainability gradcorr --depths=14,32,56 --seeds=0,1,2 --lines=2 --points=128 \
  --pairs=32 --out=$R/gradcorr

# 7. Grid points against the plain evaluation step, side by side.
python benchmarks/landscape_throughput.py --batch=500 --rounds=5 --json
