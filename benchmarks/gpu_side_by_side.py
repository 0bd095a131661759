"""resjax's train step and PyTorch's on the same accelerator, in one process, windows alternating.

    python benchmarks/gpu_side_by_side.py --model=resnet50 --batches=256,512 --dtypes=bfloat16
    python benchmarks/gpu_side_by_side.py --model=resnet20 --batches=128 --dtypes=bfloat16,float32
    python benchmarks/gpu_side_by_side.py --model=resnet50 --image_size=32 --batches=2,4 \\
        --steps=1 --rounds=2 --torch_compile=aot_eager          # a smoke test on a CPU

resjax: `resjax.bench.prepare`'s step (what `python -m resjax.train` runs: its BatchNorm, SGD with
momentum 0.9, lr 0.1, L2 1e-4, donated state), `--dtypes` compute with float32 parameters, one
fixed synthetic batch on the device, compiled ahead of time (the compile time is reported).
PyTorch: the same network (torchvision's ResNet-50, or the option-A CIFAR ResNet of
torch_resnet.py), channels_last, bf16 autocast for bfloat16, `torch.compile(model)` (its default
mode; the optimizer's foreach SGD step stays eager), `torch.optim.SGD` with the same momentum,
lr and weight decay, BatchNorm in train mode, float32 matmuls in TF32 as XLA does on NVIDIA GPUs.

Per batch size and dtype, after compiling and warming up both, `--rounds` rounds of one window of
`--steps` steps each, the order alternating (torch, jax, jax, torch, ...), the host
synchronising only at window edges. One JSON line per (dtype, batch) is appended to `--jsonl`:
median images/s of each, the median of the per-round ratios resjax/PyTorch, compile times,
XLA's FLOPs per step (cost analysis) and MFU against the chip's dense bf16 peak (both
frameworks divided by the same FLOPs), memory (XLA's buffer assignment for the step; device
peaks where the backend reports them) and, for CIFAR nets, seconds per 45k-image epoch.

A framework that fails at one size (out of memory, a compile error) is recorded as an `error`
in that row and the run goes on; PyTorch is left out when it is not installed or (on a GPU) has
no CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from resjax import bench, xla_flags  # noqa: E402
from resjax.config import base_config  # noqa: E402
from resjax.models.registry import IMAGENET_STAGES  # noqa: E402

CIFAR_EPOCH_IMAGES = 45_000  # He et al. 2015's 45k/5k train/val split of CIFAR-10


def is_imagenet(model: str) -> bool:
    return model in {f"resnet{d}" for d in IMAGENET_STAGES}


# --- resjax ---


def make_jax_step(model: str, batch: int, dtype: str, image_size: int) -> dict[str, Any]:
    """Compiles resjax's train step; returns {"run": run(k) -> loss, "compile_s", "flops", ...}."""
    config = base_config()
    config.model.name = model
    config.batch_size = batch
    config.dtype = dtype
    imagenet = is_imagenet(model)
    shape = (image_size, image_size, 3)
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    step, state, images, init_s = bench.prepare(config, mesh, shape, 1000 if imagenet else 10)
    metrics = step.empty_metrics()
    t0 = time.perf_counter()
    compiled = step.run.lower(state, images, metrics).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state.params))
    box = [step.step_state(state), metrics]

    def run(k: int) -> float:
        for _ in range(k):
            box[0], box[1] = compiled(box[0], images, box[1])  # state and metrics donated
        return float(jax.block_until_ready(box[1]["loss"]))

    return {
        "run": run,
        "compile_s": compile_s,
        "init_s": init_s,
        "flops": flops,
        "params": params,
        "step_memory": bench._step_memory(compiled),
    }


def jax_device_peak_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


# --- PyTorch ---


def torch_device(torch) -> str | None:
    """'cuda' or 'cpu' to match JAX's backend; None when PyTorch cannot run beside it."""
    if jax.default_backend() == "gpu":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu"


def torch_model(torch, model: str):
    """(module, where it comes from): torchvision's ImageNet ResNet, else the tests' rewrite of
    it (same modules, same parameters; torchvision does not install beside torch 2.13 CPU); or
    torch_resnet.py's CIFAR ResNet."""
    if is_imagenet(model):
        depth = int(model.removeprefix("resnet"))
        try:
            import torchvision

            return getattr(torchvision.models, model)(), f"torchvision {torchvision.__version__}"
        except ImportError:
            sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
            from torchvision_resnet import TorchResNet

            return TorchResNet(depth), "tests/torchvision_resnet.py (no torchvision)"
    import torch_resnet

    return torch_resnet.CifarResNet(int(model.removeprefix("resnet"))), "torch_resnet.py"


def make_torch_step(
    model: str, batch: int, dtype: str, image_size: int, backend: str
) -> dict[str, Any]:
    """The PyTorch step, compiled and run once; returns {"run", "compile_s", "params", ...}."""
    import torch
    import torch.nn.functional as F

    device = torch_device(torch)
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")  # TF32, as XLA's default precision on GPUs
    net, source = torch_model(torch, model)
    net = net.to(device=device, memory_format=torch.channels_last).train()
    params = sum(p.numel() for p in net.parameters())
    # He et al. 2015, sec. 3.4 / 4.2, as resjax's default optimiser: L2 added to the gradient.
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    compiled = net if backend == "off" else torch.compile(net, backend=backend)
    classes = 1000 if is_imagenet(model) else 10
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)
    bf16 = dtype == "bfloat16"

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(compiled(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()  # compiles forward and backward
    sync()
    compile_s = time.perf_counter() - t0

    def run(k: int) -> float:
        for _ in range(k):
            loss = step()
        return float(loss.detach())  # synchronises

    def peak_gb() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None

    def release() -> None:
        nonlocal net, compiled, opt
        del net, compiled, opt
        gc.collect()
        torch._dynamo.reset()
        if device == "cuda":
            torch.cuda.empty_cache()

    return {
        "run": run,
        "compile_s": compile_s,
        "params": params,
        "source": source,
        "device": device,
        "peak_gb": peak_gb,
        "release": release,
        "version": torch.__version__,
    }


# --- the comparison ---


def timed(run, steps: int, batch: int) -> float:
    """Images/s of one window of `steps` steps (one synchronisation at its end)."""
    t0 = time.perf_counter()
    run(steps)
    return steps * batch / (time.perf_counter() - t0)


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def compare(args: argparse.Namespace, dtype: str, batch: int, torch_ok: bool) -> dict[str, Any]:
    """One row: both frameworks at (dtype, batch), alternating windows."""
    row: dict[str, Any] = {
        "stage": args.stage,
        "model": args.model,
        "batch": batch,
        "dtype": dtype,
        "image_size": args.image_size,
        "device_kind": jax.devices()[0].device_kind,
        "steps_per_window": args.steps,
        "rounds": args.rounds,
        "resjax_xla_defaults": xla_flags.status(),
    }
    runners: dict[str, Any] = {}
    try:
        j = make_jax_step(args.model, batch, dtype, args.image_size)
        j["run"](args.warmup)
        runners["jax"] = j["run"]
        row.update(
            jax_compile_s=j["compile_s"],
            jax_init_s=j["init_s"],
            flops_per_step=j["flops"],
            params=j["params"],
            **{f"jax_{k}": v for k, v in j["step_memory"].items()},
        )
    except Exception as e:  # noqa: BLE001  (recorded; the other framework and sizes go on)
        traceback.print_exc()
        row["jax_error"] = error_text(e)
    t = None
    if torch_ok:
        try:
            t = make_torch_step(args.model, batch, dtype, args.image_size, args.torch_compile)
            t["run"](args.warmup)
            runners["torch"] = t["run"]
            row.update(
                torch_compile_s=t["compile_s"],
                torch_params=t["params"],
                torch_model=t["source"],
                torch_compile_backend=args.torch_compile,
                torch_version=t["version"],
            )
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row["torch_error"] = error_text(e)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        order = sorted(runners, reverse=r % 2 == 0)  # torch first in even rounds
        for name in order:
            try:
                rates[name].append(timed(runners[name], args.steps, batch))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                row[f"{name}_error"] = error_text(e)
                runners.pop(name)
                rates.pop(name)
    peak = bench.peak_flops(jax.devices()[0])
    for name, values in rates.items():
        rate = statistics.median(values)
        row[f"{name}_img_per_s"] = rate
        row[f"{name}_img_per_s_windows"] = values
        flops = row.get("flops_per_step", float("nan"))
        if peak and np.isfinite(flops):
            row[f"{name}_mfu"] = flops * rate / batch / peak
        if not is_imagenet(args.model):
            row[f"{name}_epoch_s"] = CIFAR_EPOCH_IMAGES / rate
    if "jax" in rates and "torch" in rates:
        ratios = [a / b for a, b in zip(rates["jax"], rates["torch"], strict=True)]
        row["ratio"] = statistics.median(ratios)
        row["ratios"] = ratios
        row["params_match"] = row["params"] == row["torch_params"]
    row["jax_device_peak_gb"] = jax_device_peak_gb()
    if t is not None:
        row["torch_device_peak_gb"] = t["peak_gb"]()
        t["release"]()
    row["host_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def describe(row: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    text = (
        f"{row['model']} batch {row['batch']} {row['dtype']} {row['image_size']}px on "
        f"{row['device_kind']}: resjax {num('jax_img_per_s', ',.0f')} img/s "
        f"(compile {num('jax_compile_s', '.1f')} s, MFU {num('jax_mfu', '.1%')}), PyTorch "
        f"{num('torch_img_per_s', ',.0f')} img/s (compile {num('torch_compile_s', '.1f')} s, "
        f"MFU {num('torch_mfu', '.1%')}), ratio {num('ratio', '.2f')}"
    )
    errors = [f"{k}: {v}" for k, v in row.items() if k.endswith("_error")]
    return text + "".join(f"\n  {e}" for e in errors)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet50", help="resnet50 (ImageNet) or a CIFAR resnetN")
    p.add_argument("--batches", default="256", help="comma-separated batch sizes, in order")
    p.add_argument("--dtypes", default="bfloat16", help="comma-separated: bfloat16, float32")
    p.add_argument("--image_size", type=int, default=0, help="0: 224 for ImageNet nets, else 32")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds (one window each)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument(
        "--torch_compile",
        default="inductor",
        help="torch.compile backend (inductor; aot_eager traces without generating code, "
        "for a quick check on a CPU); off: eager",
    )
    p.add_argument("--no_torch", action="store_true", help="resjax alone")
    p.add_argument("--stage", default="side_by_side", help="the rows' 'stage' field")
    p.add_argument("--jsonl", help="append each row to this file as one JSON line")
    args = p.parse_args(argv)
    args.image_size = args.image_size or (224 if is_imagenet(args.model) else 32)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    xla_flags.apply_defaults()  # as every resjax command does, before JAX's backends start
    torch_ok = False
    if not args.no_torch:
        try:
            import torch

            torch_ok = torch_device(torch) is not None
            if not torch_ok:
                print("PyTorch has no CUDA here: resjax alone", file=sys.stderr)
        except ImportError:
            print("PyTorch is not installed: resjax alone", file=sys.stderr)
    failed = False
    for dtype in args.dtypes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            row = compare(args, dtype, batch, torch_ok)
            print(describe(row), flush=True)
            failed |= "jax_img_per_s" not in row
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
