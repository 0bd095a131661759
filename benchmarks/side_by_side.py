"""PyTorch vs JAX CIFAR ResNet train steps in one process, timed in alternating windows.

    python benchmarks/side_by_side.py                       # resjax's step, ResNet-20, batch 128
    python benchmarks/side_by_side.py --depth=56 --batch_size=64 --json
    XLA_FLAGS=... python benchmarks/side_by_side.py --jax=copy --bn=onepass   # the plain copy

Both frameworks use all cores in turn; windows alternate (torch, jax, jax, torch, ...) with a
short pause between them, so drifting load from other processes hits both alike. Each window also
records how much CPU *other* processes used meanwhile (from /proc/stat): PyTorch's OpenMP
barriers collapse when another process takes a core (5-10x slower), XLA's task pool much less, so
a ratio from a loaded machine flatters JAX. Reports medians over the clean rounds (others < 10%
of the cores in both windows) when there are at least two, else over all rounds, and says which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax_resnet  # noqa: E402  (imports jax: XLA_FLAGS must already be set)
import torch_resnet  # noqa: E402
from machine_load import busy_s  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument(
        "--jax",
        default="resjax",
        choices=("resjax", "copy"),
        help="resjax: resjax's own train step and defaults; copy: jax_resnet.py's plain Flax "
        "network (with --bn)",
    )
    p.add_argument("--bn", default="flax", choices=jax_resnet.BN_KINDS, help="with --jax=copy")
    p.add_argument("--nchw", action="store_true", help="torch in NCHW instead of channels_last")
    p.add_argument("--warmup_steps", type=int, default=5)
    p.add_argument("--window_steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--pause_s", type=float, default=0.2)
    p.add_argument(
        "--clean_below",
        type=float,
        default=0.1,
        help="a round is clean when other processes used less than this share of cores",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    t_step, t_params = torch_resnet.make_train_step(args.depth, args.batch_size, not args.nchw)
    if args.jax == "resjax":
        import resjax  # noqa: F401  (before any JAX computation: applies resjax's XLA defaults)

        j_run, j_params, compile_s = jax_resnet.make_resjax_step(args.depth, args.batch_size)
    else:
        j_run, j_params, compile_s = jax_resnet.make_train_step(
            args.depth, args.batch_size, args.bn
        )
    assert t_params == j_params, (t_params, j_params)
    for _ in range(args.warmup_steps):
        t_step()
    j_run(args.warmup_steps)

    def torch_window():
        return torch_resnet.time_window(t_step, args.window_steps, args.batch_size)[0]

    def jax_window():
        return jax_resnet.time_window(j_run, args.window_steps, args.batch_size)[0]

    t_rates, j_rates, t_other, j_other = [], [], [], []
    for r in range(args.rounds):
        order = (torch_window, jax_window) if r % 2 == 0 else (jax_window, torch_window)
        for fn in order:
            time.sleep(args.pause_s)
            busy0, own0, t0 = busy_s(), time.process_time(), time.perf_counter()
            rate = fn()
            wall = time.perf_counter() - t0
            other = (busy_s() - busy0 - (time.process_time() - own0)) / wall / os.cpu_count()
            (t_rates if fn is torch_window else j_rates).append(rate)
            (t_other if fn is torch_window else j_other).append(max(other, 0.0))
    clean = [i for i in range(args.rounds) if max(t_other[i], j_other[i]) < args.clean_below]
    use = clean if len(clean) >= 2 else list(range(args.rounds))
    ratios = [j_rates[i] / t_rates[i] for i in use]
    result = {
        "depth": args.depth,
        "params": j_params,
        "batch_size": args.batch_size,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_step": args.jax,
        "bn": args.bn if args.jax == "copy" else "resjax",
        "torch_layout": "nchw" if args.nchw else "channels_last",
        "jax_img_per_s": round(statistics.median(j_rates[i] for i in use), 1),
        "torch_img_per_s": round(statistics.median(t_rates[i] for i in use), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(x, 3) for x in ratios],
        "rounds_used": "clean" if use == clean else "all",
        "clean_rounds": len(clean),
        "rounds": args.rounds,
        "other_load_torch": [round(x, 2) for x in t_other],
        "other_load_jax": [round(x, 2) for x in j_other],
        "jax_best_img_per_s": round(max(j_rates), 1),
        "torch_best_img_per_s": round(max(t_rates), 1),
        "jax_compile_s": round(compile_s, 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"ResNet-{args.depth} batch {args.batch_size} jax={args.jax} bn={result['bn']} "
            f"XLA_FLAGS='{result['xla_flags']}': jax {result['jax_img_per_s']} img/s, "
            f"torch ({result['torch_layout']}) {result['torch_img_per_s']} img/s, "
            f"ratio {result['ratio']} ({result['rounds_used']} rounds: {result['ratios']}; "
            f"{len(clean)}/{args.rounds} clean; best windows jax {result['jax_best_img_per_s']}, "
            f"torch {result['torch_best_img_per_s']})"
        )


if __name__ == "__main__":
    main()
