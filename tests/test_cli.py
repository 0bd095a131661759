"""resjax.cli: every command answers bad input with one line, `error: ...`, and exit status 1 or 2.

Each kind of bad input through the flag parsing that resjax.train and resjax.diagnose share, in
this process; then each command as a subprocess, several at a time (most start JAX). launch.sh's
answers are in test_launch.py, a missing workdir's (export, train) in test_checkpoint.py, an
unknown model's (bench) in test_bench.py.
"""

import sys

import pytest
from absl import flags
from ml_collections import config_flags
from processes import environ, start

from resjax import cli

FMNIST = "configs/fashion_mnist_resnet.py"


def _parse(*args):
    """resjax.train's config flag and --workdir on a fresh FlagValues, parsed by resjax.cli."""
    values = flags.FlagValues()
    argv = ["resjax.train", *args]
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=values)
    cli.parse_flags(values, argv)
    return values


def test_parse_flags_says_what_is_wrong_in_one_line():
    values = _parse(f"--config={FMNIST}:resnet8", "--config.batch_size=16", "--workdir=w")
    assert values.config.batch_size == 16 and values.config.model.name == "resnet8"
    cases = [
        (("--config=configs/nope.py",), "config file configs/nope.py does not exist"),
        (
            ("--config=configs/depth_sweep.py:depth=57,plain=1",),
            "configs/depth_sweep.py:depth=57,plain=1: depth_sweep depth must be 6n+2 "
            "(8, 20, 32, 44, 56, 110, ...); got 57",
        ),
        (
            (f"--config={FMNIST}", "--config.optim.lrr=1"),
            "unknown config key 'lrr' in --config.optim.lrr=1. "
            'Did you mean "lr" instead of "lrr"?',
        ),
        (
            (f"--config={FMNIST}", "--config.batch_size=abc"),
            "flag --config.batch_size=abc: invalid literal for int() with base 10: 'abc'",
        ),
        ((f"--config={FMNIST}", "--wrokdir=w"), "Unknown command line flag 'wrokdir'"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError) as e:
            _parse(*args)
        assert cli.one_line(e.value).startswith(message), (args, str(e.value))


def _start(*module_and_args, env=None):
    """`python -m MODULE ARGS`, with `env`'s variables added to this process's."""
    return start([sys.executable, "-m", *module_and_args], environ(**(env or {})))


def test_every_command_answers_bad_input_in_one_line(tmp_path):
    nowhere = tmp_path / "nowhere"
    cases = [  # (command and arguments, exit status, what the line says)
        # Where new users err most: a mistyped key, a mistyped or an invalid point.
        (
            ("resjax.train", f"--config={FMNIST}", "--config.batch_sise=32"),
            1,
            "unknown config key 'batch_sise' in --config.batch_sise=32. "
            'Did you mean "batch_size" instead of "batch_sise"?',
        ),
        (
            ("resjax.train", "--config=configs/depth_sweep.py:dpeth=56"),
            1,
            "configs/depth_sweep.py:dpeth=56: depth_sweep point 'dpeth=56': unknown key 'dpeth'",
        ),
        (
            ("resjax.train", "--config=configs/depth_sweep.py:depth=57,plain=1"),
            1,
            "configs/depth_sweep.py:depth=57,plain=1: depth_sweep depth must be 6n+2",
        ),
        (
            ("resjax.diagnose", f"--config={FMNIST}", "--config.optim.lrr=1"),
            1,
            "unknown config key 'lrr' in --config.optim.lrr=1. Did you mean",
        ),
        (("resjax.sweep", "list", "configs/depth_sweep.py:dpeth=56"), 1, "configs/depth_sweep"),
        (("resjax.sweep", "list", "configs/nope.py"), 1, "config file configs/nope.py does not"),
        (
            ("resjax.sweep", "list", "configs/depth_sweep.py", "--config.batch_size=abc"),
            1,
            "flag --config.batch_size=abc: invalid literal for int()",
        ),
        (("resjax.sweep", "lsit", "configs/depth_sweep.py"), 2, "argument {list,workdir,state"),
        (("resjax.report", str(nowhere)), 1, f"{nowhere} holds no sweep points"),
        (("resjax.report",), 2, "the following arguments are required: WORKDIR"),
        (("resjax.export", f"--workdir={nowhere}"), 2, "the following arguments are required"),
        (("resjax.bench", "--batch=abc"), 2, "argument --batch: invalid int value: 'abc'"),
        (
            ("resjax.convert", f"--from={nowhere}.npz", f"--out={tmp_path}/x.msgpack"),
            1,
            f"{nowhere}.npz is not a readable .npz file",
        ),
    ]
    procs = [(_start(*args), status, message) for args, status, message in cases]
    for (args, _, _), (proc, status, message) in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == status, (args, err)
        assert err.startswith(f"error: {message}"), (args, err)
        assert err.count("\n") == 1 and out == "", (args, err, out)


def test_a_traceback_when_asked_for():
    proc = _start("resjax.sweep", "list", "configs/nope.py", env={cli.TRACEBACK_VARIABLE: "1"})
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" in err and "SweepError" in err
