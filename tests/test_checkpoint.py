"""Checkpoints with real subprocesses and signals: resume is exact, preemption saves, a kill
mid-save loses nothing, a mismatched workdir is refused, and export round-trips."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resjax import checkpoint, export
from resjax.models import load_params

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(workdir, data_dir, *extra, steps=60, every=10):
    """`python -m resjax.train` on a ResNet-8 of width 4 and 512 Fashion-MNIST images."""
    return [
        sys.executable,
        "-m",
        "resjax.train",
        "--config=configs/fashion_mnist_resnet.py:resnet8",
        f"--workdir={workdir}",
        f"--config.data.dir={data_dir}",
        "--config.data.train_split=train[:512]",
        "--config.data.test_split=test[:64]",
        "--config.data.val_examples=64",
        "--config.model.overrides.widths=(4, 4, 8)",
        "--config.model.overrides.stem_width=4",
        f"--config.total_steps={steps}",
        "--config.batch_size=32",
        "--config.eval_batch_size=32",
        "--config.log_every_steps=10",
        "--config.eval_every_steps=20",
        f"--config.checkpoint_every_steps={every}",
        "--config.keep_checkpoints=3",
        *extra,
    ]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)


def start(cmd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError("condition not reached")


def steps_on_disk(workdir):
    folder = Path(workdir) / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


def params_of(workdir):
    _, variables = checkpoint.load_variables(workdir)
    return variables


@pytest.fixture(scope="module")
def uninterrupted(fashion_mnist_dir, tmp_path_factory):
    """A 60-step run that nothing interrupts: the reference for exactness."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(train_cmd(workdir, fashion_mnist_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_killed_and_resumed_run_is_bitwise_identical(uninterrupted, fashion_mnist_dir, tmp_path):
    proc = start(train_cmd(tmp_path, fashion_mnist_dir))
    reached = wait_for(lambda: any(0 < s < 60 for s in steps_on_disk(tmp_path)), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached, "the run finished before it could be killed"
    assert not (tmp_path / "results.json").exists()

    result = run(train_cmd(tmp_path, fashion_mnist_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((tmp_path / "resume_log.jsonl").read_text().splitlines()[0])
    assert 0 < resumed["resumed_at_step"] < 60
    jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path), params_of(uninterrupted))
    ours = json.loads((tmp_path / "results.json").read_text())
    theirs = json.loads((uninterrupted / "results.json").read_text())
    assert ours["test_error"] == theirs["test_error"] and ours["train_loss"] == theirs["train_loss"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_zero(fashion_mnist_dir, tmp_path, sig):
    proc = start(train_cmd(tmp_path, fashion_mnist_dir, steps=100_000, every=10_000))
    reached = wait_for(lambda: "step 10/" in (proc.stdout.readline() or ""), proc)
    assert reached
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "saved a checkpoint at step" in stderr
    saved = steps_on_disk(tmp_path)
    assert len(saved) == 1 and 10 <= saved[0] < 10_000  # saved where it stopped, not at 10k


def test_kill_during_a_save_leaves_the_previous_checkpoint(fashion_mnist_dir, tmp_path):
    # Kill as soon as a temporary (half-written) checkpoint folder appears, if we catch one;
    # also leave a fake half-written step behind, as a kill at any moment could.
    proc = start(train_cmd(tmp_path, fashion_mnist_dir, steps=400, every=2))
    folder = tmp_path / "checkpoints"

    def saving_after_a_complete_one():
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        return any("tmp" in n for n in names) and any(n.isdigit() for n in names)

    wait_for(saving_after_a_complete_one, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = steps_on_disk(tmp_path)
    assert complete, "no complete checkpoint before the kill"
    fake = folder / f"{max(complete) + 1000}.orbax-checkpoint-tmp-1234567"
    (fake / "state").mkdir(parents=True)
    (fake / "state" / "junk").write_bytes(b"half written")

    steps = max(complete) + 6  # a short continuation: more steps are a safe change on resume
    result = run(train_cmd(tmp_path, fashion_mnist_dir, steps=steps, every=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed at step {max(complete)}" in result.stdout
    assert not any("tmp" in p.name for p in folder.iterdir())  # cleaned up on resume


def test_mismatched_workdir_is_refused_and_untouched(uninterrupted, fashion_mnist_dir, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
    deeper = run(train_cmd(uninterrupted, fashion_mnist_dir).copy())
    assert deeper.returncode == 0 and "already finished at step 60" in deeper.stdout
    cmd = train_cmd(uninterrupted, fashion_mnist_dir)
    cmd[3] = "--config=configs/fashion_mnist_resnet.py:resnet14"
    result = run(cmd)
    assert result.returncode == 1
    assert "holds a checkpoint of resnet8" in result.stderr and "asks for resnet14" in result.stderr
    other_lr = run(train_cmd(uninterrupted, fashion_mnist_dir, "--config.optim.lr=0.5"))
    assert other_lr.returncode == 1 and "optim.lr: 0.1 -> 0.5" in other_lr.stderr
    after = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
    assert after == before


def test_more_steps_on_resume_is_allowed_and_recorded(uninterrupted, fashion_mnist_dir, tmp_path):
    import shutil

    workdir = tmp_path / "extended"
    shutil.copytree(uninterrupted, workdir)
    result = run(train_cmd(workdir, fashion_mnist_dir, steps=70))
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (workdir / "resume_log.jsonl").read_text().splitlines()]
    assert log[-1]["changes"]["total_steps"] == {"old": 60, "new": 70}
    assert json.loads((workdir / "results.json").read_text())["steps"] == 70


def test_unwritable_workdir_fails_before_training(fashion_mnist_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run(train_cmd(blocker / "run", fashion_mnist_dir))
    assert result.returncode == 1
    assert "is not writable" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_export_round_trips_to_the_same_logits(uninterrupted, tmp_path):
    out = tmp_path / "r8.msgpack"
    result = run(
        [sys.executable, "-m", "resjax.export", f"--workdir={uninterrupted}", f"--out={out}"]
    )
    assert result.returncode == 0, result.stderr
    portable = load_params(out)
    config, variables = checkpoint.load_variables(uninterrupted)
    assert portable.model_name == "resnet8" and portable.config["model"]["name"] == "resnet8"
    x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
    model = portable.model()
    np.testing.assert_array_equal(
        model.apply(portable.variables, x, train=False), model.apply(variables, x, train=False)
    )
    best = export.export(uninterrupted, tmp_path / "best.npz", which="best")
    assert load_params(best).variables["params"].keys() == variables["params"].keys()
    assert run(
        [sys.executable, "-m", "resjax.export", f"--workdir={tmp_path}", f"--out={out}"]
    ).stderr.startswith("error: no checkpoints in")
