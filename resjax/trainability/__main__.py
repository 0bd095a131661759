"""Why residual networks train: loss landscapes, curvature and gradient correlation.

    python -m resjax.trainability landscape RUN [RUN ...] --out=DIR [--kind=plane|line|interpolation]
    python -m resjax.trainability curvature RUN [RUN ...] --out=DIR [--every-step]
    python -m resjax.trainability gradcorr --config=configs/depth_sweep.py:ordering=pre --out=DIR

RUN is a portable weights file (`python -m resjax.export`) or a training run's workdir (its
latest checkpoint; `curvature --every-step`: every kept checkpoint). Every instrument evaluates
the network as the run's own evaluation does (BatchNorm in evaluation mode, the run's
normalisation) on a fixed set of its training examples, the first --examples of its training
part, and writes JSON + CSV + PNG into --out, each file naming the examples, iterations, probe
vectors and wall time it used.

landscape   the loss and error on a grid: 'plane' (default) two random filter-normalised
            directions around the final weights (Li et al. 2018; contours with logarithmic
            levels and a 3D surface, all runs side by side on the same levels), 'line' one such
            direction, 'interpolation' the straight line from the run's step-0 weights to its
            final ones (Goodfellow et al. 2015). Points are spread over every device of every
            process (start one command per process with --coordinator-address,
            --num-processes and --process-id, or JAX's env vars, or under srun; process 0
            writes); the grid file fills as it goes, so a rerun resumes, and a finished grid
            only redraws.
curvature   the top Hessian eigenvalues (Lanczos with full reorthogonalisation), the trace
            (Hutchinson, Rademacher probes) and the spectral density (stochastic Lanczos
            quadrature) of the mean training loss (Ghorbani et al. 2019).
gradcorr    shattered gradients at initialisation (Balduzzi et al. 2017): the correlation of
            the input gradients of neighbouring inputs, plain vs residual, per depth and seed.

Bad input is one `error:` line (resjax.cli).
"""

from __future__ import annotations

import sys
from argparse import ArgumentTypeError, RawDescriptionHelpFormatter
from collections.abc import Sequence
from pathlib import Path

from resjax import cli, distributed
from resjax.trainability import instruments


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ArgumentTypeError(f"expected comma-separated integers (e.g. 14,32,56); got {text!r}")
    return values


def _span(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ArgumentTypeError(f"expected LOW,HIGH (e.g. -1,1); got {text!r}") from None
    return low, high


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m resjax.trainability",
        description=__doc__,
        formatter_class=RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="instrument", required=True, metavar="INSTRUMENT")

    def common(p, examples: int, batch: int) -> None:
        p.add_argument("--out", required=True, type=Path, help="output folder")
        p.add_argument(
            "--examples",
            type=int,
            default=examples,
            help=f"the first N training examples (0: all; default {examples})",
        )
        p.add_argument(
            "--batch-size",
            type=int,
            default=batch,
            help=f"images per forward pass (default {batch}; larger is faster while memory allows)",
        )
        p.add_argument("--seed", type=int, default=0, help="random directions / probe vectors")
        p.add_argument("--data-dir", help="TFDS data dir (default: as in training)")

    land = sub.add_parser(
        "landscape",
        help="loss landscape of runs, side by side",
        description="Loss and error of each RUN on a line or a plane in "
        "weight space; see python -m resjax.trainability --help.",
    )
    land.add_argument("runs", nargs="+", metavar="RUN", help="weights file or workdir")
    land.add_argument("--kind", choices=("plane", "line", "interpolation"), default="plane")
    land.add_argument(
        "--resolution", type=int, default=21, help="points per axis (default 21; Li et al. use 51)"
    )
    land.add_argument(
        "--range",
        type=_span,
        dest="span",
        help="LOW,HIGH of each axis (default -1,1; interpolation -0.5,1.5)",
    )
    land.add_argument(
        "--include-1d",
        action="store_true",
        help="move biases and BatchNorm γ/β too (default: zero direction)",
    )
    land.add_argument(
        "--save-every-s",
        type=float,
        default=30.0,
        help="rewrite the grid file at most this often (default 30)",
    )
    land.add_argument("--coordinator-address", help="host:port of process 0 (multi-process)")
    land.add_argument("--num-processes", type=int, help="processes in a multi-process run")
    land.add_argument("--process-id", type=int, help="this process's index (multi-process)")
    common(land, 1000, 1000)

    cur = sub.add_parser(
        "curvature",
        help="Hessian eigenvalues, trace and spectral density",
        description="Curvature of each RUN's mean training loss; see "
        "python -m resjax.trainability --help.",
    )
    cur.add_argument("runs", nargs="+", metavar="RUN", help="weights file or workdir")
    cur.add_argument(
        "--every-step",
        action="store_true",
        help="every kept checkpoint of each workdir, for sharpness against step",
    )
    cur.add_argument(
        "--steps",
        type=_ints,
        help="these kept checkpoints of each workdir (N,N,...; steps not (yet) kept "
        "are left out, so a rerun during training adds the new ones)",
    )
    cur.add_argument("--top-k", type=int, default=5, help="eigenvalues to report (default 5)")
    cur.add_argument("--lanczos-steps", type=int, default=30, help="default 30")
    cur.add_argument("--trace-probes", type=int, default=30, help="Hutchinson probes (default 30)")
    cur.add_argument(
        "--slq-probes", type=int, default=2, help="SLQ start vectors (default 2; 0: no density)"
    )
    cur.add_argument(
        "--slq-steps", type=int, default=30, help="Lanczos steps per SLQ probe (default 30)"
    )
    common(cur, 1000, 500)

    grad = sub.add_parser(
        "gradcorr",
        help="gradient correlation at initialisation",
        description="Shattered gradients at initialisation, plain vs residual; "
        "see python -m resjax.trainability --help.",
    )
    grad.add_argument(
        "--config",
        default="configs/depth_sweep.py:ordering=pre",
        help="depth-sweep config FILE[:POINT]; depth, plain and seed are set per "
        "net (default configs/depth_sweep.py:ordering=pre, the default sweep's nets)",
    )
    grad.add_argument("--depths", type=_ints, default=[14, 32, 56], help="default 14,32,56")
    grad.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="default 0,1,2")
    grad.add_argument("--lines", type=int, default=4, help="segments between training images")
    grad.add_argument("--points", type=int, default=256, help="inputs per segment (default 256)")
    grad.add_argument("--pairs", type=int, default=64, help="images paired with their nearest")
    grad.add_argument("--pool", type=int, default=1000, help="where nearest images are sought")
    grad.add_argument("--max-lag", type=int, default=16, help="autocorrelation lags (default 16)")
    grad.add_argument(
        "--of",
        choices=("logit", "loss"),
        default="logit",
        help="differentiate the label's logit (default, Balduzzi et al.) or the loss",
    )
    grad.add_argument(
        "--calibration",
        type=int,
        default=500,
        help="training images whose statistics BatchNorm uses at init (default 500)",
    )
    grad.add_argument("--out", required=True, type=Path, help="output folder")
    grad.add_argument("--data-dir", help="TFDS data dir (default: as in the config)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def run() -> None:
        if args.instrument == "landscape":
            distributed.maybe_initialize(
                args.coordinator_address, args.num_processes, args.process_id
            )
            instruments.landscape(
                args.runs,
                args.out,
                kind=args.kind,
                examples=args.examples,
                batch_size=args.batch_size,
                resolution=args.resolution,
                span=args.span,
                seed=args.seed,
                include_1d=args.include_1d,
                data_dir=args.data_dir,
                save_every_s=args.save_every_s,
                progress=say,
            )
        elif args.instrument == "curvature":
            instruments.curvature(
                args.runs,
                args.out,
                examples=args.examples,
                batch_size=args.batch_size,
                top_k=args.top_k,
                lanczos_steps=args.lanczos_steps,
                trace_probes=args.trace_probes,
                slq_probes=args.slq_probes,
                slq_steps=args.slq_steps,
                seed=args.seed,
                every_step=args.every_step,
                steps=args.steps,
                data_dir=args.data_dir,
                progress=say,
            )
        else:
            instruments.gradient_correlation(
                args.config,
                args.out,
                depths=args.depths,
                seeds=args.seeds,
                lines=args.lines,
                points=args.points,
                pairs=args.pairs,
                pool=args.pool,
                max_lag=args.max_lag,
                of=args.of,
                calibration=args.calibration,
                data_dir=args.data_dir,
                progress=say,
            )
        say(f"wrote {args.out}")

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
