"""`python -m resjax.train`: train one config, or every point of a sweep.

    python -m resjax.train --config=configs/fashion_mnist_resnet.py --workdir=/tmp/r20
    python -m resjax.train --config=configs/depth_sweep.py:depth=56,plain=1 --workdir=runs/p56
    python -m resjax.train --config=configs/depth_sweep.py --workdir=runs/depth_sweep

When FILE[:ARG] names a sweep (FILE defines `sweep(ARG)`), every point runs in turn in
DIR/<point>/ and the report is written to DIR (resjax.sweeps); otherwise the one config trains in
DIR (resjax.training). --workdir defaults to runs/<config>[_<arg>]. Bad input is answered with
one `error:` line (resjax.cli).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from resjax import cli, distributed
from resjax.sweeps import points, runner
from resjax.training import NonFiniteLossError, Preempted, train_and_evaluate

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """The command, its flags parsed (`python -m resjax.train --help` lists them)."""
    try:
        return cli.run(lambda: _train(argv), bad_input=(*cli.BAD_INPUT, NonFiniteLossError))
    except Preempted as e:  # a checkpoint was saved: exit 0, so that a scheduler requeues
        print(e.message, file=sys.stderr)
        return 0


def _train(argv: list[str]) -> int:
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    config_file, arg = points.split_config_spec(FLAGS["config"].config_filename)
    workdir = FLAGS.workdir or str(points.default_workdir(config_file, arg))
    distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.point or points.is_sweep(config_file, arg):  # the sweep runner, point by point
        overrides = FLAGS["config"].override_values
        return runner.run_from_flags(config_file, arg, overrides, workdir, point=FLAGS.point)
    train_and_evaluate(FLAGS.config, workdir)
    return 0


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file[:ARG].", lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
    flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
    flags.DEFINE_string(
        "point", None, "Run only this named point of the config's sweep (see resjax.sweep)."
    )
    flags.mark_flags_as_required(["config"])  # --workdir defaults to runs/<config>[_<arg>]


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser)
