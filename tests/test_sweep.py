"""resjax.sweeps and `python -m resjax.sweep`: enumeration, naming, key checking, running (skip,
resume, failure), the subcommands launch.sh uses."""

import json

import pytest
from conftest import tiny_run
from processes import ROOT, command, run

from resjax.sweeps import points as sweep_points
from resjax.sweeps import report, runner
from resjax.sweeps import status as sweep_status
from resjax.training import train_and_evaluate
from resjax.training.metric_writer import MetricWriter
from resjax.workdir import STATUS

DEPTH_SWEEP = str(ROOT / "configs" / "depth_sweep.py")


@pytest.fixture
def tiny_sweep(tmp_path):
    """A config file: the tiny run of 6 steps as a 2-point sweep, resnet8 and plain8."""
    tiny = tiny_run(
        total_steps=6,
        eval_every_steps=0,
        checkpoint_every_steps=4,
        eval_batch_size=64,
        **{"model.overrides.widths": (4, 8, 8), "data.test_split": "test[:128]"},
    )
    path = tiny.write_config_file(
        tmp_path / "tiny_sweep.py",
        points={"plain8": {"model.name": "plain8"}},
        sweeps={None: ["resnet8", "plain8"]},
    )
    return str(path)


def test_default_depth_sweep_points_and_names():
    # The depths and ordering are the recipe's to choose (configs/depth_sweep.py's _DEPTH); the
    # order and the names are the sweep's: plain then residual, in the recipe's depth order.
    depth = sweep_points.load_config_module(DEPTH_SWEEP)._DEPTH
    (ordering,) = depth["ordering"]  # one ordering, named in the point ('pre' is not the default)
    points = sweep_points.enumerate_points(DEPTH_SWEEP)
    assert [p.name for p in points] == [
        f"{family}_{ordering}_d{d}_s0" for family in ("plain", "resnet") for d in depth["depths"]
    ]
    assert {p.config.model.overrides.ordering for p in points} == {ordering}
    depths = depth["depths"]
    d, deepest = max(depths), points[len(depths) - 1]  # the deepest plain net
    arg = f"depth={d},plain=1,seed=0,ordering={ordering}"
    assert deepest.arg == arg and runner.model_depth(deepest.config) == d
    assert deepest.flags() == [f"--config={DEPTH_SWEEP}:{arg}"]
    assert deepest.config.is_locked and deepest.config.model.name == f"plain{d}"
    # The point string alone rebuilds the same config: a point is reproducible from its name.
    again = sweep_points.enumerate_points(DEPTH_SWEEP, f"depth={d},plain=1,ordering={ordering}")
    assert [p.name for p in again] == [f"plain_{ordering}_d{d}_s0"]
    assert again[0].config.to_dict() == deepest.config.to_dict()
    assert not sweep_points.is_sweep(DEPTH_SWEEP, "depth=56,plain=1") and sweep_points.is_sweep(
        DEPTH_SWEEP, None
    )


def test_named_sweeps():
    cifar = sweep_points.enumerate_points(DEPTH_SWEEP, "cifar10")
    assert len(cifar) == 10 and cifar[0].name == "cifar10_plain_d20_s0"
    assert sorted({runner.model_depth(p.config) for p in cifar}) == [20, 32, 44, 56, 110]
    r110 = next(p.config for p in cifar if p.name == "cifar10_resnet_d110_s0")
    assert r110.data.name == "cifar10" and r110.total_steps == 64_000
    assert (r110.optim.warmup_steps, r110.optim.warmup_lr) == (400, 0.01)  # He et al. sec. 4.2
    pre = [p.name for p in sweep_points.enumerate_points(DEPTH_SWEEP, "preact")]
    assert "resnet_pre_d56_s0" in pre and "resnet_d56_s0" in pre
    shortcuts = sweep_points.enumerate_points(DEPTH_SWEEP, "shortcut")
    assert {p.config.model.overrides.shortcut for p in shortcuts} == {"A", "B", "C"}


def test_status_names_the_sweep_and_its_committed_reference():
    default = sweep_points.enumerate_points(DEPTH_SWEEP)
    status = sweep_status.new(default, None)
    committed = ROOT / "experiments/2026-12-02_depth_sweep/report_summary.csv"
    assert status["sweep"] == DEPTH_SWEEP and status["reference"] == str(committed)
    assert set(report.read_reference(committed)) >= {p.name[: -len("_s0")] for p in default}
    # Where an override changes what the points compute, they are not the reference's points.
    shorter = sweep_points.enumerate_points(DEPTH_SWEEP, "fmnist", {"total_steps": 3})
    assert sweep_status.new(shorter, None) | {"points": None} == {
        "command": None, "sweep": f"{DEPTH_SWEEP}:fmnist", "reference": None, "points": None
    }  # fmt: skip


def test_unknown_keys_fail_before_anything_runs(tmp_path):
    with pytest.raises(sweep_points.SweepError, match=r"sweep point 1 'plain_(pre_)?d\d+_s0'.*'optim.lrr'.*"
                       r"Did you mean 'optim.lr'"):  # fmt: skip
        sweep_points.enumerate_points(DEPTH_SWEEP, None, {"optim.lrr": 0.1})
    with pytest.raises(sweep_points.SweepError, match=r"unknown key 'plian'; allowed keys: depth"):
        sweep_points.enumerate_points(DEPTH_SWEEP, "depth=20,plian=1")
    with pytest.raises(sweep_points.SweepError, match=r"depth must be 6n\+2 .* got 21"):
        sweep_points.enumerate_points(DEPTH_SWEEP, "depth=21")
    with pytest.raises(sweep_points.SweepError, match=r"unknown depth_sweep sweep 'bogus'"):
        sweep_points.enumerate_points(DEPTH_SWEEP, "bogus")
    # Override-dict points: the bad key is named with its point; names must differ.
    path = tmp_path / "dict_sweep.py"
    path.write_text(
        "from resjax.config import base_config, lock\n"
        "def get_config(arg=None):\n    return lock(base_config())\n"
        "def sweep(arg=None):\n"
        "    return [{'optim.lr': 0.1}, {'optim.lr': 0.2, 'model.overides.scan': True}]\n"
    )
    with pytest.raises(sweep_points.SweepError, match=r"sweep point 2 'lr0.2_scanTrue'.*"
                       r"'model.overides.scan'.*Did you mean 'model.overrides'"):  # fmt: skip
        sweep_points.enumerate_points(str(path))
    path.write_text(path.read_text().replace("'model.overides.scan': True", "'seed': 1"))
    points = sweep_points.enumerate_points(str(path))
    assert [p.name for p in points] == ["lr0.1", "lr0.2_seed1"]
    assert points[1].config.optim.lr == 0.2 and points[1].config.seed == 1
    assert points[1].flags() == [
        f"--config={path}",
        "--point=lr0.2_seed1",
        "--config.optim.lr=0.2",
        "--config.seed=1",
    ]
    with pytest.raises(sweep_points.SweepError, match="cannot set config.optim.lr = 'fast'"):
        sweep_points.enumerate_points(str(path), None, {"optim.lr": "fast"})
    path.write_text(path.read_text().replace("'seed': 1", "'optim.lr': 0.1"))
    with pytest.raises(sweep_points.SweepError, match="same name as sweep point 1"):
        sweep_points.enumerate_points(str(path))


def _fake_train(fail=()):
    """A train_fn that writes what a finished run leaves (config.json, results.json)."""
    calls = []

    def train_fn(config, workdir):
        calls.append(workdir.name)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort())
        if workdir.name in fail:
            raise RuntimeError(f"{workdir.name} broke\nsecond line")
        results = {"train_error": 0.5, "test_error": 0.5, "residual": True, "depth": 8}
        (workdir / "results.json").write_text(json.dumps(results))
        return results

    return train_fn, calls


def test_failure_is_recorded_and_the_rest_run(tiny_sweep, tmp_path, capsys):
    train_fn, calls = _fake_train(fail=("resnet8",))
    code = runner.run_from_flags(tiny_sweep, None, {}, tmp_path / "w", train_fn=train_fn)
    assert code == 1 and calls == ["resnet8", "plain8"]
    status = json.loads((tmp_path / "w" / STATUS).read_text())["points"]
    assert status["resnet8"]["status"] == "failed"
    assert status["resnet8"]["error"] == "RuntimeError: resnet8 broke"
    assert status["plain8"]["status"] == "finished"
    out = capsys.readouterr()
    assert "point 1/2 resnet8: FAILED" in out.out and "point 2/2 plain8: starting" in out.out
    assert "ETA of the sweep 0:00:00" in out.out and "1 point(s) did not finish: resnet8" in out.err
    assert (
        "| resnet8 | failed: RuntimeError: resnet8 broke |"
        in (tmp_path / "w" / "report.md").read_text()
    )
    # The rerun skips the finished point and retries the failed one.
    train_fn, calls = _fake_train()
    assert runner.run_from_flags(tiny_sweep, None, {}, tmp_path / "w", train_fn=train_fn) == 0
    assert calls == ["resnet8"]
    # A changed config is not "finished": the point goes back to train_fn (which may extend it).
    train_fn, calls = _fake_train()
    runner.run_from_flags(tiny_sweep, None, {"total_steps": 8}, tmp_path / "w", train_fn=train_fn)
    assert calls == ["resnet8", "plain8"]


def test_skip_finished_and_resume_interrupted(tiny_sweep, fashion_mnist_dir, tmp_path, monkeypatch):
    """Point 1 finishes (a stand-in run); point 2 really trains and is interrupted at step 6,
    after its step-4 checkpoint. The rerun skips point 1 and resumes point 2 from step 4."""
    overrides = {"data.dir": str(fashion_mnist_dir)}
    points = sweep_points.enumerate_points(tiny_sweep, None, overrides)
    workdir = tmp_path / "w"
    write = MetricWriter.write
    fake, _ = _fake_train()

    def first_train_fn(config, point_dir):
        if point_dir.name == "resnet8":
            return fake(config, point_dir)
        return train_and_evaluate(config, point_dir)

    def interrupting_write(self, step, metrics):
        if step == 6 and "train_loss" in metrics and "plain8" in str(self._path):
            raise KeyboardInterrupt  # as a Ctrl-C at step 6 would
        write(self, step, metrics)

    monkeypatch.setattr(MetricWriter, "write", interrupting_write)
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(points, workdir, first_train_fn, lead=True, log=lambda line: None)
    status = json.loads((workdir / STATUS).read_text())["points"]
    assert status["resnet8"]["status"] == "finished"
    assert status["plain8"]["status"] == "interrupted"
    assert not (workdir / "plain8" / "results.json").exists()
    assert "| plain8 | interrupted |" in (workdir / "report.md").read_text()

    monkeypatch.setattr(MetricWriter, "write", write)
    trained = []

    def train_fn(config, point_dir):
        trained.append(point_dir.name)
        return train_and_evaluate(config, point_dir)

    status = runner.run_sweep(points, workdir, train_fn, lead=True, log=lambda line: None)
    assert trained == ["plain8"]
    assert status["points"]["resnet8"] == {**status["points"]["resnet8"], "skipped": True}
    assert status["points"]["plain8"]["status"] == "finished"
    rows = [json.loads(x) for x in (workdir / "plain8" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [2, 4, 6]  # steps 1-4 not redone
    assert json.loads((workdir / "plain8" / "results.json").read_text())["steps"] == 6


def test_list_cli_reproduces_points():
    result = _sweep_cli("list", "configs/depth_sweep.py", "--config.total_steps=3")
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    points = sweep_points.enumerate_points(DEPTH_SWEEP)
    assert [name for name, _ in lines] == [p.name for p in points]
    assert lines[0] == [
        points[0].name, f"--config=configs/depth_sweep.py:{points[0].arg} --config.total_steps=3"
    ]  # fmt: skip
    bad = _sweep_cli("list", "configs/depth_sweep.py", "--config.optim.lrr=1")
    assert bad.returncode == 1 and 'Did you mean "lr"' in bad.stderr


def test_train_cli_skips_a_finished_sweep_and_writes_the_report(tiny_sweep, tmp_path):
    """`python -m resjax.train --config=SWEEP` enumerates, skips what is done, reports."""
    train_fn, _ = _fake_train()
    runner.run_sweep(
        sweep_points.enumerate_points(tiny_sweep), tmp_path, train_fn, lead=True, log=print
    )
    (tmp_path / "report.md").unlink()
    result = run(command("train", f"--config={tiny_sweep}", f"--workdir={tmp_path}"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "point 2/2 plain8: already finished, skipped" in result.stdout
    assert (tmp_path / "report.md").exists()
    with pytest.raises(
        sweep_points.SweepError, match="no point named 'nope'.*points: resnet8, plain8"
    ):
        sweep_points.enumerate_points(tiny_sweep, only="nope")


def test_depth_is_the_models_not_a_number_in_its_name(tmp_path):
    """A point's depth (ETA weights, the status file) is its network's; results.json records
    the same number. wrn28_10's name ends in 10; its ResNet has 26 weighted layers."""
    path = tmp_path / "wrn.py"
    path.write_text(
        "from resjax.config import base_config, lock\n"
        "def get_config(arg=None):\n"
        "    c = base_config()\n    c.model.name = arg or 'wrn28_10'\n    return lock(c)\n"
        "def sweep(arg=None):\n    return None if arg else ['wrn28_10', 'resnet_nonexistent']\n"
    )
    wrn, bad = sweep_points.enumerate_points(str(path))
    assert runner.model_depth(wrn.config) == 26 and runner.model_depth(bad.config) is None
    train_fn, _ = _fake_train()
    status = runner.run_sweep([wrn, bad], tmp_path / "w", train_fn, lead=True, log=lambda _: None)
    assert status["points"]["wrn28_10"]["depth"] == 26


def _sweep_cli(*args):
    return run(command("sweep", *args))


def test_workdir_state_and_record_subcommands(tiny_sweep, tmp_path):
    """What launch.sh asks: the default workdir, which points are finished, and the status
    file and report for points it ran."""
    assert _sweep_cli("workdir", "configs/depth_sweep.py:cifar10").stdout == (
        "runs/depth_sweep_cifar10\n"
    )
    workdir = tmp_path / "w"
    train_fn, _ = _fake_train()
    train_fn(sweep_points.enumerate_points(tiny_sweep)[0].config, workdir / "resnet8")
    (workdir / "plain8").mkdir(parents=True)
    (workdir / "plain8" / "config.json").write_text("{}")
    state = _sweep_cli("state", tiny_sweep, workdir)
    assert state.stdout == "resnet8\tfinished\nplain8\tstarted\n", state.stderr
    # Another config is not finished: its run goes on (or is refused) when it trains.
    longer = _sweep_cli("state", tiny_sweep, workdir, "--point=resnet8", "--config.total_steps=9")
    assert longer.stdout == "resnet8\tstarted\n", longer.stderr
    (workdir / "plain8" / "log.txt").write_text("I0101 12:00:00 absl line\nerror: it broke\n")
    record = _sweep_cli(
        "record",
        tiny_sweep,
        workdir,
        "resnet8=finished:12.5",
        "plain8=failed:1:3",
        "--wall-time=65",
    )
    assert record.returncode == 0, record.stderr
    assert "done in 0:01:05: 1 of 2 finished, 1 failed, 0 not run or stopped" in record.stdout
    assert "  FAILED      plain8  (exit 1)" in record.stdout and "error: it broke" in record.stdout
    status = json.loads((workdir / STATUS).read_text())
    assert status["launcher"] == "launch.sh" and status["wall_time_s"] == 65
    assert status["points"]["resnet8"]["status"] == "finished"
    assert status["points"]["resnet8"]["wall_time_s"] == 12.5
    assert status["points"]["plain8"] == {
        "status": "failed",
        "flags": f"--config={tiny_sweep}:plain8",
        "log": str(workdir / "plain8" / "log.txt"),
        "error": "error: it broke",
    }
    assert (workdir / "report.md").exists()
