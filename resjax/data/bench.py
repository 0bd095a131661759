"""Throughput of the training input pipeline on its own, in images/s.

    python -m resjax.data.bench --dataset=fashion_mnist
    python -m resjax.data.bench --dataset=cifar10 --batch=128

Measures augmented, normalised, batched training images per second, as host numpy batches and
as global jax.Arrays on a mesh of all local devices. CIFAR-shaped data that is not prepared on
disk is replaced by a synthetic in-memory split of 50,000 random 32x32x3 images, which costs the
pipeline exactly the same.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from jax.sharding import Mesh

from resjax.config import base_config
from resjax.data import pipeline, sources
from resjax.data.errors import DataError


def synthetic_splits(name: str, n: int, shape: tuple[int, int, int], num_classes: int):
    """Random uint8 images standing in for a dataset that is not on disk."""
    rng = np.random.default_rng(0)
    train = sources.ArraySource(
        rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        rng.integers(0, num_classes, n, dtype=np.int32),
    )
    mean, std = np.full(shape[-1], 127.5, np.float32), np.full(shape[-1], 73.9, np.float32)
    return sources.Splits(name, train, None, train.slice(0, 10_000), num_classes, shape, mean, std)


def measure(it: pipeline.TrainIterator, steps: int, batch: int) -> float:
    """Images/s over `steps` batches, after two warm-up batches; waits for device arrays."""
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        out = next(it)
    jax.block_until_ready(out)
    return steps * batch / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """Prints the pipeline's images/s for one dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--augment", default="pad_crop_flip")
    args = parser.parse_args(argv)

    config = base_config()
    config.data.name, config.data.dir, config.data.augment = (
        args.dataset,
        args.data_dir,
        args.augment,
    )
    start = time.perf_counter()
    try:
        splits = sources.load_splits(config.data)
        origin = f"prepared {args.dataset}, loaded in {time.perf_counter() - start:.1f} s"
    except DataError as e:
        if args.dataset not in ("cifar10", "cifar100"):
            raise
        splits = synthetic_splits(args.dataset, 50_000, (32, 32, 3), 10)
        origin = f"synthetic 50k x 32x32x3 ({args.dataset} not available: {str(e)[:80]}...)"
    print(f"{args.dataset}: {origin}; train {len(splits.train)} x {splits.image_shape}")

    host = pipeline.TrainIterator(splits, args.batch, seed=0, data_config=config.data)
    rate = measure(host, args.steps, args.batch)
    print(f"host numpy batches ({args.augment}, batch {args.batch}): {rate:,.0f} images/s")
    host.close()

    devices = jax.devices()
    if args.batch % len(devices) == 0:
        mesh = Mesh(np.array(devices), (pipeline.BATCH_AXIS,))
        on_mesh = pipeline.TrainIterator(
            splits, args.batch, seed=0, data_config=config.data, mesh=mesh
        )
        rate = measure(on_mesh, args.steps, args.batch)
        print(
            f"global jax.Arrays on {len(devices)} {devices[0].platform} device(s): {rate:,.0f} images/s"
        )
        on_mesh.close()


if __name__ == "__main__":
    main()
