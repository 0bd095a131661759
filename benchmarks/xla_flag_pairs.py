"""Does resjax's XLA:CPU default help on this jaxlib? Runs the ResNet-20 train-step benchmark
with and without the flag in alternating pairs, in the Python that runs this script:

    python benchmarks/xla_flag_pairs.py [--pairs=4] [--windows=5]
    python benchmarks/xla_flag_pairs.py --flags=--xla_cpu_use_onednn=true   # any candidate

Each run is a fresh process (XLA reads XLA_FLAGS once); "with" sets the flag in XLA_FLAGS
itself, which works on every jaxlib that knows it, whatever resjax.xla_flags decides; "without"
opts out of resjax's defaults. The pair order alternates so that a drift in machine speed
falls on both sides. Prints each run's images/s and each pair's ratio (with / without); only
ratios from a quiet machine mean anything.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys

from resjax.xla_flags import CPU_DEFAULTS, OPT_OUT


def images_per_s(with_flag: bool, windows: int, flags: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update({"XLA_FLAGS": flags} if with_flag else {OPT_OUT: "0"})
    cmd = [sys.executable, "-m", "resjax.bench", "--model=resnet20", "--batch=128"]
    cmd += ["--devices=1", f"--windows={windows}", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument(
        "--flags",
        default=" ".join(CPU_DEFAULTS),
        help="the XLA flags of the 'with' runs (default: resjax's CPU defaults); the 'without' "
        "runs have none",
    )
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, jaxlib {importlib.metadata.version('jaxlib')}, "
        f"with: {args.flags}"
    )
    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)
        speed = {flag: images_per_s(flag, args.windows, args.flags) for flag in order}
        ratios.append(speed[True] / speed[False])
        print(
            f"pair {i + 1}: with {speed[True]:.0f} img/s, without {speed[False]:.0f} img/s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"median ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
