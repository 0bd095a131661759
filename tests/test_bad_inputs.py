"""Bad input a new user types: one `error: ...` line, a non-zero exit, nothing trained or written.

Config files that do not compile, import or define get_config; hyperparameters that cannot
train (resjax.hyperparameters); a dataset that does not exist (data.bench); a workdir of the
user's own (resjax.workdir.check_run_dir); launch.sh with a Python that cannot import resjax.
Mostly in this process (resjax.cli, resjax.sweeps.points); one subprocess per command.
"""

import json
import sys

import pytest
from absl import flags
from ml_collections import config_flags
from processes import LAUNCH, ROOT, command, environ, finish, run, start

from resjax import cli, hyperparameters
from resjax.config import base_config
from resjax.sweeps import points
from resjax.workdir import check_run_dir

FMNIST = "configs/fashion_mnist_resnet.py"
DEPTH = "configs/depth_sweep.py:depth=14,plain=1"  # 1,000 steps, warm-up 100, decay 500/750


def _parse(*args):
    """resjax.train's --config flag on a fresh FlagValues, parsed by resjax.cli."""
    values = flags.FlagValues()
    argv = ["resjax.train", *args]
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
    )
    cli.parse_flags(values, argv)
    return values


def _error(*args) -> str:
    with pytest.raises(ValueError) as e:
        _parse(*args)
    return cli.one_line(e.value)


@pytest.fixture
def config_files(tmp_path):
    files = {
        "syntax": "def get_config(arg=None)\n    return None\n",
        "no_get_config": "from resjax.config import base_config\n\nCONFIG = base_config()\n",
        "raises_on_import": "import math\n\nSCALE = math.log(0)\n",
        "get_config_raises": "def get_config(arg=None):\n    raise ValueError(f'no such arm {arg!r}')\n",
    }
    for name, text in files.items():
        (tmp_path / f"{name}.py").write_text(text)
    return tmp_path


def test_config_files_that_do_not_compile_import_or_define_get_config(config_files):
    d = config_files
    assert _error(f"--config={d}/syntax.py") == (
        f"config file {d}/syntax.py, line 1: expected ':' (a Python syntax error)"
    )
    assert _error(f"--config={d}/no_get_config.py") == (
        f"config file {d}/no_get_config.py defines no get_config(arg); a config file defines "
        "get_config(arg: str | None = None) returning the run's config (see configs/)"
    )
    assert _error(f"--config={d}/raises_on_import.py") == (
        f"config file {d}/raises_on_import.py, line 3: ValueError: math domain error "
        "(while importing it)"
    )
    assert _error(f"--config={d}/get_config_raises.py:x") == (
        f"{d}/get_config_raises.py:x: no such arm 'x'"
    )
    # The sweep commands load config files through the same function.
    with pytest.raises(points.SweepError, match=r"syntax\.py, line 1: expected ':'"):
        points.enumerate_points(f"{d}/syntax.py")


def test_hyperparameters_that_cannot_train():
    cases = [
        ("--config.optim.lr=-0.1", "config.optim.lr must be > 0; got -0.1"),
        ("--config.optim.lr=0", "config.optim.lr must be > 0; got 0.0"),
        (
            "--config.optim.weight_decay=-1e-4",
            "config.optim.weight_decay must be >= 0; got -0.0001",
        ),
        (
            "--config.optim.momentum=-0.9",
            "config.optim.momentum must be in [0, 1) (0: plain SGD; He et al.: 0.9); got -0.9",
        ),
        (
            "--config.optim.warmup_steps=1000",
            "config.optim.warmup_steps 1000 is as long as the run or longer (total_steps 1000): "
            "the lr would never reach config.optim.lr 0.05; allowed: 0 <= warmup_steps < 1000",
        ),
        (
            "--config.optim.decay_steps=(500, 1500)",
            "config.optim.decay_steps (500, 1500): 1500 is at or past the end of the run "
            "(total_steps 1000), so its decay never happens; allowed: boundaries below 1000",
        ),
        (
            "--config.total_steps=0",
            "config.total_steps must be >= 1 (0 steps would train nothing); got 0",
        ),
    ]
    for flag, message in cases:
        assert _error(f"--config={DEPTH}", flag) == f"{DEPTH}: {message}", flag
    # --config.total_steps alone shortens a run and keeps its schedule: its first N steps.
    assert _parse(f"--config={DEPTH}", "--config.total_steps=3").config.optim.warmup_steps == 100
    # ... not when the schedule is set too: then it must fit the run.
    assert "warmup_steps 100 is as long as the run" in _error(
        f"--config={DEPTH}", "--config.total_steps=50", "--config.optim.warmup_steps=100"
    )


def test_hyperparameters_in_epochs_and_sweep_points():
    config = base_config()
    config.total_epochs, config.optim.decay_epochs = 10.0, (5.0, 12.0)
    with pytest.raises(ValueError, match=r"decay_epochs \(5.0, 12.0\): 12.0 is at or past the end"):
        hyperparameters.check(config)  # epochs against epochs, before the data is read
    config.optim.decay_epochs, config.optim.warmup_steps = (5.0,), 400
    hyperparameters.check(config)  # warm-up in steps: not known until the data's epoch is
    with pytest.raises(ValueError, match=r"warmup_steps 400 .*\(total_epochs 10, 390 steps\)"):
        hyperparameters.check(config, steps_per_epoch=39)
    # A sweep checks every point before any trains; launch.sh lists its points through it.
    with pytest.raises(points.SweepError, match=r"sweep point 1 .*config.optim.lr must be > 0"):
        points.enumerate_points("configs/depth_sweep.py", None, {"optim.lr": -0.1})
    assert len(points.enumerate_points("configs/depth_sweep.py", None, {"total_steps": 3})) == 6


def test_a_workdir_of_the_users_own_is_refused(tmp_path):
    check_run_dir(tmp_path / "new")  # not there yet
    user = tmp_path / "mine"
    (user / "checkpoints").mkdir(parents=True)
    check_run_dir(user)  # empty folders have nothing to write over
    (user / "notes.txt").write_text("my notes")
    check_run_dir(user)  # nothing a run writes
    (user / "config.json").write_text('{"lr": 3}')
    (user / "checkpoints" / "model.pt").write_text("weights")
    with pytest.raises(ValueError) as e:
        check_run_dir(user)
    assert cli.one_line(e.value) == (
        f"workdir {user} holds checkpoints/, config.json but no resjax run (no "
        "environment.jsonl, checkpoint step or resjax config.json): a run would write over "
        "them; choose a new or empty folder, or a resjax run's workdir to resume it"
    )
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_run_dir(user / "notes.txt")
    # resjax runs, to resume: any one of what only resjax writes.
    for name, make in {
        "environment": lambda d: (d / "environment.jsonl").write_text("{}\n"),
        "step": lambda d: (d / "checkpoints" / "200").mkdir(parents=True),
        "config": lambda d: (d / "config.json").write_text(json.dumps(base_config().to_dict())),
        "sweep": lambda d: (d / "sweep_status.json").write_text("{}"),
    }.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "metrics.jsonl").write_text("{}\n")
        make(run_dir)
        check_run_dir(run_dir)


def test_commands_answer_in_one_line_before_training(config_files, tmp_path):
    workdir = tmp_path / "w"
    cases = [  # (command, what the error line says)
        (
            command("train", f"--config={config_files}/syntax.py", f"--workdir={workdir}"),
            f"config file {config_files}/syntax.py, line 1: expected ':'",
        ),
        (
            command(
                "train", f"--config={FMNIST}", "--config.optim.lr=-0.1", f"--workdir={workdir}"
            ),
            f"{FMNIST}: config.optim.lr must be > 0; got -0.1",
        ),
        (
            command("sweep", "list", "configs/depth_sweep.py", "--config.optim.momentum=1.0"),
            "configs/depth_sweep.py: config.optim.momentum must be in [0, 1)",
        ),
        (
            command("data.bench", "--dataset=fashon_mnist", f"--data_dir={tmp_path}/tfds"),
            "unknown dataset 'fashon_mnist': resjax prepares cifar10, cifar100, fashion_mnist, "
            "mnist itself",
        ),
    ]
    procs = [start(cmd) for cmd, _ in cases]
    for (cmd, message), (status, _, err) in zip(cases, finish(procs, 600), strict=True):
        assert status == 1, (cmd, err)
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, (cmd, err)
    assert not workdir.exists()  # nothing written


def test_launch_sh_with_a_python_that_cannot_import_resjax(tmp_path):
    bare = tmp_path / "python"  # this interpreter without its site-packages: no absl, no jax
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    workdir = tmp_path / "runs"
    for python, says in (
        (str(bare), f"error: {bare} ({bare}) cannot import resjax (ModuleNotFoundError: No module"),
        ("python-nowhere", "error: no Python 'python-nowhere' found: name the one resjax is"),
    ):
        result = run(
            [LAUNCH, "configs/depth_sweep.py", "--workdir", workdir],
            env=environ(RESJAX_PYTHON=python),
        )
        assert result.returncode == 1 and result.stdout == "", result
        assert result.stderr.startswith(says) and result.stderr.count("\n") == 1, result.stderr
        assert "RESJAX_PYTHON=/path/to/python" in result.stderr
    assert not workdir.exists() and ROOT.is_dir()
