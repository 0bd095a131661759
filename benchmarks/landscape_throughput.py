"""Loss-landscape grid points against the plain evaluation step, side by side in one process.

    python benchmarks/landscape_throughput.py                   # ResNet-56 of the default sweep
    python benchmarks/landscape_throughput.py --config=configs/depth_sweep.py:depth=56,plain=1 \
        --batch=1000 --rounds=7 --json

Both sides push the same batch of images through the same network with BatchNorm in
evaluation mode: (A) `resjax.training.step.eval_sums` under `jax.jit`, the run's own evaluation
step; (B) `resjax.trainability.landscape.point_evaluator` on a plane of two filter-normalised
directions, one grid point per device per call (the weights moved to the point inside the
call). Windows alternate A, B, B, A, ... so that drifting load from other processes hits both
alike; reported: images/s per side (median over rounds) and the ratio B / A, which the
landscape is meant to keep at 0.8 or more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax.config import model_overrides
from resjax.models import get_model
from resjax.sweeps.points import load_config
from resjax.trainability import directions, landscape
from resjax.training.step import create_train_state, eval_sums


def _time(fn, calls: int) -> float:
    """Seconds for `calls` calls of fn(), the last one waited for."""
    start = time.perf_counter()
    out = None
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/depth_sweep.py:depth=56,plain=0,ordering=pre")
    parser.add_argument("--batch", type=int, default=1000, help="images per call (both sides)")
    parser.add_argument("--calls", type=int, default=3, help="calls per timed window")
    parser.add_argument("--rounds", type=int, default=5, help="A/B window pairs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    model = get_model(config.model.name, **model_overrides(config, 10))
    shape = (28, 28, 1)  # the default sweep's Fashion-MNIST
    state = create_train_state(config, model, optax.identity(), shape)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (args.batch, *shape), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 10, args.batch, dtype=np.int32)),
        "mask": jnp.ones(args.batch, jnp.float32),
    }

    def normalize(x):  # uint8 -> float, on the device in both steps
        return (x.astype(jnp.float32) - 73.0) / 90.0

    plain = jax.jit(lambda v, b: eval_sums(model.apply, v, b, normalize))
    mesh = landscape.points_mesh()
    dirs = directions.random_directions(jax.random.key(0), variables["params"], 2)
    operands = landscape.replicate({**variables, "directions": dirs}, mesh)
    grid = landscape.point_evaluator(model.apply, landscape.plane, mesh, normalize)
    coords = jnp.full((mesh.size, 2), 0.3, jnp.float32)
    grid_batch = landscape.replicate(batch, mesh)

    sides = {
        "eval_step": lambda: plain(variables, batch),
        "grid_point": lambda: grid(coords, operands, grid_batch),
    }
    images = {"eval_step": args.batch, "grid_point": args.batch * mesh.size}
    for fn in sides.values():  # compile and warm up
        _time(fn, 2)
    rates = {name: [] for name in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            rates[name].append(images[name] * args.calls / _time(sides[name], args.calls))
    median = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "config": args.config,
        "model": config.model.name,
        "batch": args.batch,
        "devices": mesh.size,
        "rounds": args.rounds,
        "calls_per_window": args.calls,
        "images_per_s": {k: round(v, 1) for k, v in median.items()},
        "images_per_s_all_rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "ratio": round(median["grid_point"] / median["eval_step"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{config.model.name}, batch {args.batch}, {mesh.size} device(s), {args.rounds} "
            f"rounds: eval step {median['eval_step']:.0f} img/s, grid point "
            f"{median['grid_point']:.0f} img/s, ratio {result['ratio']:.2f}"
        )


if __name__ == "__main__":
    main()
