"""Benchmark the train step: compile time, steady images/s, memory, FLOPs and MFU.

    python -m resjax.bench --model=resnet20 --batch=128                # CPU, synthetic data
    python -m resjax.bench --model=resnet50 --batch=256 --dtype=bfloat16 --json   # GPU
    python -m resjax.bench --model=resnet20 --real-data --dataset=fashion_mnist   # + pipeline
    python -m resjax.bench --model=resnet1202 --scan --remat --steps=5            # deep nets

Synthetic data lives on the device (no input pipeline); `--real-data` also runs the same step
fed by resjax's data pipeline and reports real/synthetic. Throughput is the median over timed
windows after warm-up; the host synchronises only at window edges.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax import cli, data, optim, xla_flags
from resjax.config import base_config
from resjax.models.registry import IMAGENET_STAGES
from resjax.training import parallel
from resjax.training.step import create_train_state

# Dense bf16 peak FLOP/s by device kind (NVIDIA datasheets; sparsity excluded).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: jax.Device) -> float | None:
    """The device's dense bf16 peak, where known (MFU is reported against it)."""
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_FLOPS.items() if k in kind), None)


def bench_config(args: argparse.Namespace):
    c = base_config()
    c.model.name = args.model
    c.model.overrides.scan = args.scan or None
    c.model.overrides.remat = args.remat or None
    c.model.overrides.cpu_convs = {"auto": None, "on": True, "off": False}[args.cpu_convs]
    c.dtype = args.dtype
    c.batch_size = args.batch
    c.parallelism = args.parallelism
    c.data.name = args.dataset
    c.data.val_examples = 0
    return c


def _memory() -> dict[str, float]:
    out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
    return out


def _step_memory(compiled) -> dict[str, float]:
    """XLA's buffer assignment for the compiled step: what one step needs on the device.

    arguments (the state and batch) + outputs + temporaries (activations kept for the backward
    pass, gradients, workspace), less what donation lets outputs reuse.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return {}
    if m is None:
        return {}
    gb = 2**30
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return {"step_temp_gb": m.temp_size_in_bytes / gb, "step_total_gb": total / gb}


def _timed_windows(run_window, windows: int) -> list[float]:
    """Seconds of each window; `run_window` dispatches its steps and returns the last output."""
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        jax.block_until_ready(run_window())
        times.append(time.perf_counter() - start)
    return times


def prepare(
    config, mesh: Mesh, shape: tuple[int, ...], num_classes: int, splits: data.Splits | None = None
):
    """(train step, state, batch, init seconds): resjax's train step for `config` on `mesh` (the
    parallelism `config` asks for; with `splits`, also taking their uint8 batches), with a fixed
    synthetic batch of `config.batch_size` float images on the devices."""
    step = parallel.compile_train_step(
        config, mesh, None if splits is None else splits.normalize_images
    )
    model = parallel.build_model(config, num_classes)
    tx = optim.make_optimizer(config.optim, optim.learning_rate_schedule(config.optim, 10**6, ()))

    t0 = time.perf_counter()
    state = create_train_state(config, model, tx, shape, NamedSharding(mesh, P()))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    batch_sharding = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(0)
    size = config.batch_size
    batch = {
        "image": jax.device_put(rng.normal(size=(size, *shape)).astype(np.float32), batch_sharding),
        "label": jax.device_put(
            rng.integers(0, num_classes, size).astype(np.int32), batch_sharding
        ),
    }
    return step, state, batch, init_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark described by `args`; returns the numbers it prints."""
    config = bench_config(args)
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    mesh = Mesh(np.array(devices), ("data",))
    splits = None
    if args.real_data:
        splits = data.load_splits(config.data)
        shape, num_classes = splits.image_shape, splits.num_classes
    else:
        imagenet = args.model in {f"resnet{d}" for d in IMAGENET_STAGES}
        shape = (224, 224, 3) if imagenet else (32, 32, 3)
        num_classes = 1000 if imagenet else 10
    step, state, batch, init_s = prepare(config, mesh, shape, num_classes, splits)
    metrics = step.empty_metrics()
    if args.parallelism == "jit":
        t0 = time.perf_counter()
        compiled = step.run.lower(state, batch, metrics).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        step_memory = _step_memory(compiled)
    else:
        compile_s, flops, step_memory = float("nan"), float("nan"), {}
        batch = jax.device_get(batch)
    result: dict[str, Any] = {
        "model": args.model,
        "batch": args.batch,
        "dtype": args.dtype,
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "parallelism": args.parallelism,
        "scan": args.scan,
        "remat": args.remat,
        "init_s": init_s,
        "compile_s": compile_s,
        "flops_per_step": flops,
        **step_memory,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "resjax_xla_defaults": xla_flags.status(),
        "cpu_convs": config.model.overrides.cpu_convs,
    }
    if args.compile_only:
        return {**result, **_memory()}
    state = step.step_state(state)
    for _ in range(args.warmup):
        state, metrics = step.run(state, batch, metrics)
    jax.block_until_ready(metrics)

    def synthetic_window():
        nonlocal state, metrics
        for _ in range(args.steps):
            state, metrics = step.run(state, batch, metrics)
        return metrics

    times = _timed_windows(synthetic_window, args.windows)
    step_s = statistics.median(times) / args.steps
    result.update(
        images_per_s=args.batch / step_s,
        step_ms=step_s * 1e3,
        window_images_per_s=[args.batch * args.steps / t for t in times],
    )
    peak = peak_flops(devices[0])
    if peak and np.isfinite(flops):
        result["mfu"] = flops / step_s / (peak * len(devices))
    if args.real_data:
        it = data.TrainIterator(
            splits,
            global_batch_size=args.batch,
            seed=0,
            data_config=config.data,
            mesh=step.data_mesh,
            normalize_on_host=False,  # uint8, normalised in the step, as in training
        )
        for _ in range(args.warmup):
            state, metrics = step.run(state, next(it), metrics)

        def real_window():
            nonlocal state, metrics
            for _ in range(args.steps):
                state, metrics = step.run(state, next(it), metrics)
            return metrics

        real = _timed_windows(real_window, args.windows)
        it.close()
        result["real_images_per_s"] = args.batch * args.steps / statistics.median(real)
        result["real_over_synthetic"] = result["real_images_per_s"] / result["images_per_s"]
        result["dataset"] = args.dataset
    result.update(_memory())
    return result


def _print(result: dict[str, Any]) -> None:
    lines = [
        f"{result['model']} batch {result['batch']} {result['dtype']} on {result['devices']} × "
        f"{result['device_kind']} ({result['parallelism']}"
        + (", scan" if result["scan"] else "")
        + (", remat" if result["remat"] else "")
        + ")",
        f"  compile {result['compile_s']:.1f} s (init {result['init_s']:.1f} s)",
    ]
    if "images_per_s" in result:
        lines.append(
            f"  train   {result['images_per_s']:,.0f} images/s ({result['step_ms']:.1f} ms/step, "
            f"median of {len(result['window_images_per_s'])} windows)"
        )
    lines.append(
        f"  FLOPs   {result['flops_per_step'] / 1e9:,.1f} GFLOP/step"
        + (f", MFU {100 * result['mfu']:.1f}%" if "mfu" in result else "")
    )
    memory = f"  memory  host peak RSS {result['host_peak_rss_gb']:.2f} GB"
    if "step_total_gb" in result:
        memory += (
            f", step needs {result['step_total_gb']:.2f} GB "
            f"({result['step_temp_gb']:.2f} GB temporaries)"
        )
    if "device_peak_gb" in result:
        memory += f", device peak {result['device_peak_gb']:.2f} GB"
    lines.append(memory)
    lines.append(
        f"  XLA     XLA_FLAGS={result['xla_flags'] or '(none)'}; resjax defaults: "
        f"{result['resjax_xla_defaults']}"
    )
    if "real_images_per_s" in result:
        lines.append(
            f"  real data ({result['dataset']}) {result['real_images_per_s']:,.0f} images/s = "
            f"{100 * result['real_over_synthetic']:.1f}% of synthetic"
        )
    print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="python -m resjax.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="resnet20", help="a registered name (resjax.models.list_models)"
    )
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--devices", type=int, default=0, help="devices to use (0: all)")
    p.add_argument("--parallelism", default="jit", choices=parallel.PARALLELISMS)
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--scan", action="store_true", help="nn.scan over identical blocks")
    p.add_argument("--remat", action="store_true", help="recompute activations (nn.remat)")
    p.add_argument(
        "--cpu-convs",
        default="auto",
        choices=("auto", "on", "off"),
        help="models/conv.py's XLA:CPU backward pass; auto: on for the CPU backend",
    )
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="report compile time and the step's memory, then stop (no timed steps)",
    )
    p.add_argument("--real-data", action="store_true", help="also time the real input pipeline")
    p.add_argument("--dataset", default="fashion_mnist", help="with --real-data")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return cli.run(lambda: _report(run(args), args.json))


def _report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        _print(result)


if __name__ == "__main__":
    raise SystemExit(main())
