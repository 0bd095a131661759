"""Where one train step's time goes, per XLA op: resjax's ResNet-20 step under JAX's profiler.

    python benchmarks/step_profile.py                     # resjax's XLA defaults, this stack
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/step_profile.py --json

Traces `--steps` train steps after a warm-up (`jax.profiler.trace`, Perfetto format), then sums
the trace's events by name: by op (`convolution.12`, `fusion.3`, …) and by kind (the name
without its number). Times are thread-milliseconds per step: events on the two cores' threads
add up, so the total can exceed the step's wall time. Run it with each stack's interpreter and
compare kinds side by side to see which ops a jaxlib release made slower.

What the trace cannot see: XLA's Eigen convolutions (resjax's default on jaxlib 0.10-0.11) run
asynchronously on Eigen's own thread pool, and their `conv_general_dilated.N` events time only
the dispatch; YNNPACK's (`ynn_fusion.N`) run inside their events. The step's wall time minus
what the events account for is that unseen work; `benchmarks/conv_layers.py` times the
convolution kernels themselves, per layer, on either path.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import resjax.xla_flags

# Events that are not XLA ops: the profiler's own, Python's, the runtime's bookkeeping.
_NOT_OPS = re.compile(r"^(?:\$|PjRt|Thunk|ThreadPool|TfrtCpu|Execute|XlaModule|jit_|pjit|<)|::|\(")


def op_times(trace: dict, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """({op: ms per step}, {kind: ms per step}) from a Perfetto/Chrome trace's complete events."""
    per_op: collections.Counter[str] = collections.Counter()
    for event in trace.get("traceEvents", []):
        name = event.get("name", "")
        if event.get("ph") == "X" and "dur" in event and not _NOT_OPS.search(name):
            per_op[name] += event["dur"] / 1e3 / steps  # microseconds -> ms per step
    per_kind: collections.Counter[str] = collections.Counter()
    for name, ms in per_op.items():
        per_kind[re.sub(r"[._]\d+$", "", name)] += ms
    return dict(per_op), dict(per_kind)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="traced steps")
    p.add_argument("--top", type=int, default=15, help="ops and kinds to print")
    p.add_argument("--json", action="store_true", help="one JSON line instead of text")
    args = p.parse_args()
    applied = resjax.xla_flags.apply_defaults()

    import importlib.metadata

    import jax

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from jax_resnet import make_resjax_step

    run, _, _ = make_resjax_step(args.depth, args.batch_size)
    run(3)  # warm-up: first runs allocate
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            run(args.steps)
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        (path,) = Path(folder).rglob("perfetto_trace.json.gz")
        with gzip.open(path, "rt") as f:
            per_op, per_kind = op_times(json.load(f), args.steps)

    def top(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[: args.top]}

    result = {
        "jax": importlib.metadata.version("jax"),
        "jaxlib": importlib.metadata.version("jaxlib"),
        "python": sys.version.split()[0],
        "resjax_xla_defaults": applied,
        "model": f"resnet{args.depth}",
        "batch_size": args.batch_size,
        "step_wall_ms_traced": round(wall_ms, 1),
        "op_thread_ms_per_step": round(sum(per_op.values()), 1),
        "kinds": top(per_kind),
        "ops": top(per_op),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"jax {result['jax']} (Python {result['python']}), resnet{args.depth} b{args.batch_size}: "
        f"{wall_ms:.1f} ms/step traced, {result['op_thread_ms_per_step']} thread-ms in ops; "
        f"XLA defaults: {applied}"
    )
    for title, table in (("kind", result["kinds"]), ("op", result["ops"])):
        print(f"\n{title:<48} ms/step")
        for name, ms in table.items():
            print(f"{name[:48]:<48} {ms:8.2f}")


if __name__ == "__main__":
    main()
