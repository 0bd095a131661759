"""Throughput of the training input pipeline on its own, in images/s.

    python -m resjax.data.bench --dataset=fashion_mnist
    python -m resjax.data.bench --dataset=cifar10 --batch=128
    python -m resjax.data.bench --dataset=jpegs --batch=256          # ImageNet-like JPEGs on disk
    python -m resjax.data.bench --dataset=imagenet2012 --data_dir=DIR --batch=256

Datasets held in RAM: augmented batches per second, uint8 (what training sends; the step
normalises them on the device) beside float32 normalised on the host (what it sent before), as
host numpy batches and as global jax.Arrays on a mesh of the local devices. CIFAR-shaped data
that is not prepared is replaced by a synthetic in-memory split of 50,000 random 32x32x3 images,
which costs the pipeline exactly the same.

Datasets read from disk (JPEG): side by side in one run, alternating `--rounds` times, the
pipeline's images/s (uint8 global arrays, `--workers` worker processes) and the decode limit of
the same cores: a plain process pool of as many processes doing the same read + decode + crop
per batch and sending nothing back; then their ratio, the main process's CPU time per batch,
and the estimate for a host with `--cores` cores. `--dataset=jpegs` generates (once, cached in
`--data_dir`, default ~/.cache/resjax) a realistic ImageNet stand-in: `--images` JPEGs of
~500x375 pixels and ~100 KB in a TFDS ImageNet-format dataset (`tfds.features.Image`,
array_record). `--short_side=S` also measures the dataset re-encoded at shorter side S
(`resjax.data.resize`; prepared here for the generated one). `--before` adds the pipeline as
it was: threads of the main process, float32 normalised on the host.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from resjax import xla_flags
from resjax.config import base_config
from resjax.data import augment, disk, pipeline, resize, sources
from resjax.data.errors import DataError
from resjax.data.plan import BatchPlan
from resjax.data.standin import generated_jpegs
from resjax.data.workers import cpu_count

GENERATED = "jpegs"  # --dataset value for the generated ImageNet stand-in
_DISK_STEPS = 40  # batches per timing on disk: ~10k images of 224 px at batch 256


def synthetic_splits(name: str, n: int, shape: tuple[int, int, int], num_classes: int):
    """Random uint8 images standing in for a dataset that is not on disk."""
    rng = np.random.default_rng(0)
    train = sources.ArraySource(
        rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        rng.integers(0, num_classes, n, dtype=np.int32),
    )
    mean, std = np.full(shape[-1], 127.5, np.float32), np.full(shape[-1], 73.9, np.float32)
    return sources.Splits(name, train, None, train.slice(0, 10_000), num_classes, shape, mean, std)


# --- measurements ---


def measure(it: pipeline.TrainIterator, steps: int, batch: int, warmup: int = 2) -> float:
    """Images/s over `steps` batches, after `warmup` batches; waits for device arrays."""
    return measure_with_cpu(it, steps, batch, warmup)[0]


def measure_with_cpu(
    it: pipeline.TrainIterator, steps: int, batch: int, warmup: int
) -> tuple[float, float]:
    """(images/s, this process's CPU seconds per batch) over `steps` batches after `warmup`."""
    for _ in range(warmup):
        out = next(it)
    jax.block_until_ready(out)
    cpu = _own_cpu_s()
    start = time.perf_counter()
    for _ in range(steps):
        out = next(it)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    return steps * batch / seconds, (_own_cpu_s() - cpu) / steps


def _own_cpu_s() -> float:
    """CPU seconds of this process, all its threads (not its worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_POOL_MAKE: disk.TrainBatches | None = None  # each pool process's batch maker


def _pool_init(make: disk.TrainBatches) -> None:
    global _POOL_MAKE
    _POOL_MAKE = make


def _pool_batch(position: int) -> tuple[int, ...]:
    return _POOL_MAKE(position)["image"].shape  # the batch stays in the pool process


def decode_limit(make: disk.TrainBatches, processes: int, steps: int) -> float:
    """Images/s of a plain process pool making batches with `make` (read, decode, crop, stack)
    and sending nothing back: what the same cores can decode, with no pipeline around it."""
    context = multiprocessing.get_context("spawn")  # as grain's workers; fork is unsafe with JAX
    with context.Pool(processes, initializer=_pool_init, initargs=(make,)) as pool:
        pool.map(_pool_batch, range(processes), chunksize=1)  # start-up, page cache
        start = time.perf_counter()
        for _ in pool.imap(_pool_batch, range(processes, processes + steps), chunksize=1):
            pass
        seconds = time.perf_counter() - start
    return steps * make.plan.local_batch_size / seconds


def _describe_jpegs(splits: sources.Splits, sample: int = 100) -> str:
    source = splits.train
    rows = source.read(np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int))
    sizes = [len(r["image"]) for r in rows if isinstance(r["image"], bytes)]
    shapes = [augment.decode(r["image"]).shape[:2] for r in rows]
    h, w = np.mean(shapes, axis=0)
    kb = f", {np.mean(sizes) / 1e3:.0f} KB" if sizes else ""
    return f"{len(source):,} train images, mean {w:.0f}x{h:.0f} px{kb}"


def bench_disk(splits: sources.Splits, config, args, mesh: Mesh) -> dict[str, float]:
    """Prints the disk rows; returns the medians."""
    workers = pipeline.workers_of(config.data)
    if workers == 0:
        raise DataError("the pipeline on disk compares worker processes: --workers must be >= 1")
    steps = args.steps or _DISK_STEPS
    it_args = dict(data_config=config.data, normalize_on_host=False)
    make = disk.TrainBatches(
        splits.train,
        BatchPlan(len(splits.train), args.batch, 0, 1, 0),  # process 0 of 1, seed 0
        size=splits.image_shape[0],
        crop=config.data.augment != "none",
        flip=config.data.augment == "pad_crop_flip",
        erase=config.data.random_erase,
    )
    print(
        f"{splits.name}: {_describe_jpegs(splits)}; batch {args.batch}, "
        f"{'random-resized crop + flip' if make.flip else config.data.augment} to "
        f"{make.size}x{make.size}; {workers} worker process(es), prefetch "
        f"{config.data.prefetch_batches}; "
        f"{cpu_count()} CPUs"
    )
    devices = f"{mesh.size} {mesh.devices.flat[0].platform} device(s)"
    print(f"{'round':>6} {'decode limit':>14} {'pipeline':>12} {'ratio':>7}   images/s")
    limits, rates, cpus = [], [], []
    for r in range(args.rounds):
        limits.append(decode_limit(make, workers, steps))
        it = pipeline.TrainIterator(splits, args.batch, 0, mesh=mesh, **it_args)
        rate, cpu = measure_with_cpu(it, steps, args.batch, warmup=2 * workers + 2)
        it.close()
        rates.append(rate)
        cpus.append(cpu)
        print(f"{r + 1:>6} {limits[-1]:>14,.0f} {rates[-1]:>12,.0f} {rates[-1] / limits[-1]:>7.2f}")
    limit, rate = statistics.median(limits), statistics.median(rates)
    ratio = statistics.median(p / q for p, q in zip(rates, limits, strict=True))
    print(
        f"{'median':>6} {limit:>14,.0f} {rate:>12,.0f} {ratio:>7.2f}   "
        f"(pipeline: uint8 global arrays on {devices}; limit: {workers}-process pool)"
    )
    if args.before:
        before_config = config.data.copy_and_resolve_references()
        before_config.workers = 0
        it = pipeline.TrainIterator(splits, args.batch, 0, before_config, mesh=mesh)
        before = measure(it, steps, args.batch, warmup=2)
        it.close()
        print(
            f"before: decoded by threads of the main process, float32 normalised on the host: "
            f"{before:,.0f} images/s, {before / limit:.2f} of the limit"
        )
    main_ms = 1e3 * statistics.median(cpus)
    per_core = limit / workers  # images/s one process decodes
    cost = 1 / per_core + main_ms / 1e3 / args.batch  # CPU seconds per image, all processes
    estimate = min(args.cores / cost, args.batch / (main_ms / 1e3))
    print(
        f"main process: {main_ms:.1f} ms CPU per batch of {args.batch} "
        f"(alone it could feed {args.batch / (main_ms / 1e3):,.0f} images/s)"
    )
    print(
        f"estimate for {args.cores} cores: {estimate:,.0f} images/s = min({args.cores} cores / "
        f"({1e3 / per_core:.2f} ms decode + {main_ms / args.batch:.3f} ms main-process CPU per "
        f"image), the main process's own limit); assumes a core decodes as fast as here"
    )
    return {"limit": limit, "pipeline": rate, "ratio": ratio, "main_ms": main_ms}


def bench_memory(splits: sources.Splits, config, args, mesh: Mesh | None) -> None:
    """Prints the in-memory rows: uint8 and float32, host batches and global arrays."""
    steps = args.steps or 500
    for on_host, what in ((False, "uint8"), (True, "float32 normalised on the host (before)")):
        host = pipeline.TrainIterator(splits, args.batch, 0, config.data, normalize_on_host=on_host)
        rate = measure(host, steps, args.batch)
        host.close()
        print(f"host numpy batches, {what}: {rate:,.0f} images/s")
        if mesh is not None:
            on_mesh = pipeline.TrainIterator(
                splits, args.batch, 0, config.data, mesh=mesh, normalize_on_host=on_host
            )
            rate = measure(on_mesh, steps, args.batch)
            on_mesh.close()
            platform = mesh.devices.flat[0].platform
            print(
                f"global jax.Arrays on {mesh.size} {platform} device(s), {what}: {rate:,.0f} images/s"
            )


def _error(message: str) -> int:
    """Bad input as every command answers it: one `error:` line on stderr, exit status 1."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Prints the pipeline's images/s for one dataset; a dataset that does not exist or is not
    prepared, or a batch the devices cannot split, is one `error:` line and exit status 1."""
    xla_flags.apply_defaults()  # a command: resjax's XLA:CPU defaults, as every command
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="cifar10", help=f"a TFDS name, or {GENERATED!r}")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, help="batches per timing (default 500; disk 40)")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--augment", default="pad_crop_flip")
    parser.add_argument("--workers", type=int, help="config.data.workers (default: CPUs)")
    parser.add_argument("--prefetch", type=int, help="config.data.prefetch_batches (default 2)")
    parser.add_argument("--images", type=int, default=3000, help=f"for --dataset={GENERATED}")
    parser.add_argument("--rounds", type=int, default=2, help="disk: alternating timings")
    parser.add_argument("--cores", type=int, default=16, help="disk: host size to estimate for")
    parser.add_argument("--short_side", type=int, help="disk: also the dataset re-encoded so")
    parser.add_argument("--before", action="store_true", help="disk: also the pipeline as it was")
    args = parser.parse_args(argv)

    config = base_config()
    config.data.dir, config.data.augment = args.data_dir, args.augment
    config.data.workers = args.workers
    if args.prefetch is not None:
        config.data.prefetch_batches = args.prefetch
    config.data.val_examples = 0
    config.data.name = args.dataset
    if args.dataset == GENERATED:
        data_dir = Path(args.data_dir or "~/.cache/resjax").expanduser() / f"jpegs{args.images}"
        generated_jpegs(data_dir, args.images)
        config.data.name, config.data.dir = "resjax_bench_jpegs", str(data_dir)
    devices = jax.devices()
    mesh = None
    if args.batch % len(devices) == 0:
        mesh = Mesh(np.array(devices), (pipeline.BATCH_AXIS,))
    start = time.perf_counter()
    try:
        splits = sources.load_splits(config.data)
        origin = f"prepared {config.data.name}, loaded in {time.perf_counter() - start:.1f} s"
    except DataError as e:
        if args.dataset not in ("cifar10", "cifar100"):
            return _error(str(e))
        splits = synthetic_splits(args.dataset, 50_000, (32, 32, 3), 10)
        origin = f"synthetic 50k x 32x32x3 ({args.dataset} not available: {str(e)[:80]}...)"
    if splits.in_memory:
        print(f"{args.dataset}: {origin}; train {len(splits.train)} x {splits.image_shape}")
        bench_memory(splits, config, args, mesh)
        return 0
    if mesh is None:
        return _error(f"--batch {args.batch} must be a multiple of the {len(devices)} devices")
    original = bench_disk(splits, config, args, mesh)
    if args.short_side:
        if (
            args.dataset == GENERATED
            and not (
                Path(config.data.dir) / sources.resized_name(config.data.name, args.short_side)
            ).is_dir()
        ):
            print(f"re-encoding at shorter side {args.short_side} px (once)...", flush=True)
            resize.prepare_resized(config.data.name, config.data.dir, args.short_side)
        config.data.short_side = args.short_side
        resized = bench_disk(sources.load_splits(config.data), config, args, mesh)
        print(
            f"shorter side {args.short_side} px: decode limit {resized['limit'] / original['limit']:.2f}x, "
            f"pipeline {resized['pipeline'] / original['pipeline']:.2f}x the original's"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
