"""Checkpoints with real subprocesses and signals: resume is exact, preemption saves, a kill
mid-save loses nothing, a mismatched workdir is refused, and export round-trips. Then real
faults: damaged files in the newest step (it is moved aside and the step before resumes,
bitwise), a full and a read-only filesystem (a tmpfs the test mounts; the suite runs as root),
and a SIGTERM/SIGINT at each named moment of a run (the run signals itself there: tests/faults.py
wraps the functions the loop calls at that moment; resjax knows nothing of it)."""

import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import types
from pathlib import Path

import faults
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import FMNIST_RECIPE, tiny_run, trained_variables
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from processes import reached_before_exit, read_until, run, start
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from resjax import checkpoint, evaluate, export
from resjax.models import load_params
from resjax.training import Preempted, train_and_evaluate
from resjax.training.metric_writer import MetricWriteError, MetricWriter


def tiny(data_dir, steps=60, every=10, **changes):
    """The tiny run (conftest.py) on the shipped Fashion-MNIST recipe, `steps` long,
    checkpointed every `every` steps (the latest three kept), logged every 10, evaluated every
    20."""
    cadence = dict(log_every_steps=10, eval_every_steps=20, keep_checkpoints=3)
    return tiny_run(
        data_dir,
        base=FMNIST_RECIPE,
        **{**cadence, "total_steps": steps, "checkpoint_every_steps": every, **changes},
    )


def train_cmd(workdir, data_dir, *extra, steps=60, every=10):
    """`python -m resjax.train` of `tiny(...)` in `workdir`, then `extra` flags."""
    return tiny(data_dir, steps, every).command(workdir, *extra)


def steps_on_disk(workdir):
    folder = Path(workdir) / "checkpoints"
    return (
        sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    )


params_of = trained_variables


@pytest.fixture(scope="module")
def uninterrupted(fashion_mnist_dir, tmp_path_factory):
    """A 60-step run that nothing interrupts: the reference for exactness."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(train_cmd(workdir, fashion_mnist_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_killed_and_resumed_run_is_bitwise_identical(uninterrupted, fashion_mnist_dir, tmp_path):
    proc = start(train_cmd(tmp_path, fashion_mnist_dir))
    reached = reached_before_exit(proc, lambda: any(0 < s < 60 for s in steps_on_disk(tmp_path)))
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
    read_until(proc, "step 10/")
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

    reached_before_exit(proc, saving_after_a_complete_one)
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
    deeper_net = tiny(fashion_mnist_dir, **{"model.name": "resnet14"})
    result = run(deeper_net.command(uninterrupted))
    assert result.returncode == 1
    assert "holds a checkpoint of resnet8" in result.stderr and "asks for resnet14" in result.stderr
    other_lr = run(train_cmd(uninterrupted, fashion_mnist_dir, "--config.optim.lr=0.5"))
    assert other_lr.returncode == 1 and "optim.lr: 0.1 -> 0.5" in other_lr.stderr
    after = {p: p.stat().st_mtime_ns for p in uninterrupted.rglob("*") if p.is_file()}
    assert after == before


def test_more_steps_on_resume_is_allowed_and_recorded(uninterrupted, fashion_mnist_dir, tmp_path):
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
    variables = trained_variables(uninterrupted)
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


# --- a damaged checkpoint: the newest step that restores is used, a damaged one moved aside ---


def console(stderr):
    """stderr's lines but absl's warning lines (Orbax warns when a save waited over a second,
    which a loaded machine does); never a traceback or an error log."""
    assert "Traceback" not in stderr and not re.search(r"^E\d{4} ", stderr, re.M), stderr
    return [line for line in stderr.strip().splitlines() if not re.match(r"W\d{4} ", line)]


def copy_run(source, tmp_path):
    """A copy of a finished run, without results.json: as if it had stopped at its last step."""
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    (workdir / "results.json").unlink()
    return workdir


def data_file(step_dir):
    """The OCDBT data file that holds the step's arrays."""
    return max((step_dir / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def flip_bit(path, index=None):
    """Flips the lowest bit of byte `index` (default: the middle one)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if index is None else index] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def flip_bit_keeping_json(step_dir):
    """'"batches_consumed": 60' -> '... 61': one bit, still valid JSON, so only the digest
    tells."""
    path = step_dir / "meta" / "metadata"
    field = b'"batches_consumed": 60'
    return flip_bit(path, path.read_bytes().index(field) + len(field) - 1)


def remove(path):
    path.unlink()
    return path


# Each fault: what it does to the newest step's folder (returns the file it damaged), and the
# reason the warning must give.
FAULTS = {
    "truncated array data": (lambda d: truncate(data_file(d)), r"^state/d/\w+: .*\(OUT_OF_RANGE\)"),
    "bit flip in array data": (lambda d: flip_bit(data_file(d)), r"^state/d/\w+: .*\(DATA_LOSS\)"),
    "truncated OCDBT manifest": (
        lambda d: truncate(d / "state" / "manifest.ocdbt"),
        r"^state/manifest.ocdbt: .*\(DATA_LOSS\)",
    ),
    "bit flip in the array metadata": (
        lambda d: flip_bit(d / "state" / "_METADATA"),
        r"^state: JSONDecodeError: ",
    ),
    "bit flip in the meta, still JSON": (flip_bit_keeping_json, r"^meta: .* SHA-256"),
    "truncated Orbax metrics": (
        lambda d: truncate(d / "metrics" / "metrics"),
        r"^metrics: JSONDecodeError: ",
    ),
    "missing array data": (lambda d: remove(data_file(d)), r"^state/d/\w+ \(NOT_FOUND\)$"),
    "missing meta": (lambda d: remove(d / "meta" / "metadata"), r"^meta: FileNotFoundError: "),
}


def saved_state(workdir, step):
    """The state arrays saved at `step`, read by Orbax directly (host numpy)."""
    return ocp.StandardCheckpointer().restore(Path(workdir) / "checkpoints" / str(step) / "state")


def abstract_state(workdir):
    """What Checkpointer.restore needs of a TrainState: the fields' shapes and dtypes."""
    arrays = saved_state(workdir, checkpoint.Checkpointer(workdir).latest_step())
    return types.SimpleNamespace(
        **jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), arrays)
    )


def replicated():
    return NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())


def snapshot(folder):
    """{relative path: sha256} of every file: what 'nothing changed' compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_newest_step_is_moved_aside_and_the_one_before_restores(
    uninterrupted, tmp_path, fault
):
    damage, reason = FAULTS[fault]
    workdir = copy_run(uninterrupted, tmp_path)
    folder = workdir / "checkpoints"
    damaged = damage(folder / "60").relative_to(folder / "60")
    with checkpoint.Checkpointer(workdir, keep=3) as ckpt:
        restored = ckpt.restore(abstract_state(uninterrupted), replicated())

    assert restored.step == 50
    [skipped] = restored.skipped
    assert skipped.step == 60 and re.search(reason, skipped.reason), skipped.reason
    assert skipped.moved_to == folder / "60.unrestorable"  # renamed, never deleted
    moved = snapshot(skipped.moved_to)
    assert (str(damaged) in moved) != fault.startswith("missing")
    assert steps_on_disk(workdir) == [40, 50]
    line = skipped.describe(restored.step)  # the run's warning line
    assert "\n" not in line and line.startswith("the checkpoint at step 60 cannot be restored (")
    assert line.endswith(f"moved it aside to {folder}/60.unrestorable and resuming from step 50")
    # Bitwise the state saved at step 50: resuming from it is resuming from step 50.
    host = jax.tree.map(np.asarray, restored.state)
    jax.tree.map(np.testing.assert_array_equal, host, saved_state(uninterrupted, 50))
    assert restored.meta["data"] == {"batches_consumed": 50}


def test_when_no_step_restores_nothing_changes(uninterrupted, tmp_path, capsys):
    workdir = copy_run(uninterrupted, tmp_path)
    folder = workdir / "checkpoints"
    truncate(data_file(folder / "60"))
    remove(folder / "50" / "meta" / "metadata")
    flip_bit(folder / "40" / "state" / "manifest.ocdbt")
    before = snapshot(workdir)
    with pytest.raises(checkpoint.CheckpointUnreadableError) as error:
        checkpoint.Checkpointer(workdir).restore(abstract_state(uninterrupted), replicated())
    message = str(error.value)
    assert message.startswith(f"no checkpoint in {folder} can be restored (step 60: state/d/")
    assert "; step 50: meta: FileNotFoundError" in message and "; step 40: state/" in message
    assert "nothing was changed" in message and "\n" not in message
    assert snapshot(workdir) == before

    # Export and evaluation: one error line, saying why each step could not be read.
    status = export.main([f"--workdir={workdir}", f"--out={tmp_path / 'w.npz'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("error: no checkpoint in ")
    assert "can be read (step 60: state/d/" in err[0] and not (tmp_path / "w.npz").exists()
    assert snapshot(workdir) == before


def test_export_and_evaluation_say_which_step_they_read(uninterrupted, tmp_path, capsys):
    workdir = copy_run(uninterrupted, tmp_path)
    truncate(data_file(workdir / "checkpoints" / "60"))
    before = snapshot(workdir)
    out = tmp_path / "w.msgpack"
    # A process of its own: a failed read leaves TensorStore callbacks on a closed event loop,
    # whose tracebacks would come at any time up to the exit (now dropped).
    printed = run([sys.executable, "-m", "resjax.export", f"--workdir={workdir}", f"--out={out}"])
    assert printed.returncode == 0, printed.stderr[-3000:]
    warning = "warning: the checkpoint at step 60 cannot be read (state/d/"
    [line] = console(printed.stderr)
    assert line.startswith(warning) and line.endswith("(OUT_OF_RANGE)); using step 50")
    assert printed.stdout.strip() == f"wrote {out} (step 50 of {workdir}, the latest readable)"
    saved = saved_state(uninterrupted, 50)["params"]
    jax.tree.map(np.testing.assert_array_equal, load_params(out).variables["params"], saved)

    data_dir = json.loads((workdir / "config.json").read_text())["data"]["dir"]
    status = evaluate.main([str(workdir), "--split=test[:64]", f"--data-dir={data_dir}"])
    printed = capsys.readouterr()
    assert status == 0 and printed.err.strip().startswith(warning)
    assert printed.out.startswith(f"resnet8 (step 50 of {workdir}) (1,638 params) on fashion_mnist")
    assert snapshot(workdir) == before  # readers move nothing aside


# --- a full or read-only disk: one error line, the last good checkpoint kept, an exact rerun ---


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MB tmpfs mounted at tmp_path/mnt for the test: a real filesystem that fills up or
    turns read-only. Needs root (CI runs the suite as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def fill(folder, leave=0):
    """Writes zeros into folder/filler until the filesystem has `leave` bytes free (ENOSPC at
    0)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while (free := shutil.disk_usage(folder).free - leave) > 0:
            os.write(fd, bytes(min(free, 1 << 16)))
        if not leave:
            os.write(fd, bytes(1 << 16))
    except OSError as e:
        assert e.errno == 28 and not leave, e
    finally:
        os.close(fd)


def remount(mnt, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mnt)], check=True)


def run_paused(run_, workdir, marker, at, fault):
    """Runs `run_` in `workdir` in a process of its own until it pauses at `at` (tests/faults.py),
    applies `fault`, lets it go on; returns (exit status, stderr, snapshot of the checkpoints
    taken at the pause)."""
    proc = start(faults.command(f"{at}:pause={marker}", run_.command(workdir)[3:]))
    assert reached_before_exit(proc, marker.exists, timeout_s=600), proc.communicate()[1][-3000:]
    folder = workdir / "checkpoints"
    before = snapshot(folder)
    fault()
    marker.unlink()
    try:  # seconds of work are left; a run whose save threads wait on Orbax's 300 s timeout
        _, stderr = proc.communicate(timeout=150)  # would be stuck here
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the run did not exit within 150 s of the fault: {proc.communicate()[1]}")
    return proc.returncode, stderr, before


def test_a_full_disk_stops_the_run_in_one_line_and_the_rerun_is_exact(
    uninterrupted, fashion_mnist_dir, tmpfs, tmp_path
):
    workdir = tmpfs / "run"
    # No metrics between the saves, so the save at step 30 is the first write to fail.
    run_ = tiny(fashion_mnist_dir, log_every_steps=60, eval_every_steps=0)
    # Room for small files, not for a checkpoint: the save starts, and its writes fail in
    # Orbax's background threads.
    status, stderr, before = run_paused(
        run_, workdir, tmp_path / "paused", "after_save@20", lambda: fill(tmpfs, leave=64 << 10)
    )
    folder = workdir / "checkpoints"
    assert status == 1
    assert console(stderr) == [
        f"error: checkpoint save at step 30 in {folder} failed ([Errno 28] No space left on "
        "device); the last good checkpoint (step 20) is kept"
    ]  # and nothing else: no traceback from Orbax's threads
    assert not [p for p in folder.iterdir() if "tmp" in p.name]  # the partial step removed
    assert snapshot(folder) == before and steps_on_disk(workdir) == [10, 20]

    (tmpfs / "filler").unlink()
    train_and_evaluate(run_.config(), workdir)  # the same command, rerun
    assert json.loads((workdir / "resume_log.jsonl").read_text())["resumed_at_step"] == 20
    jax.tree.map(np.testing.assert_array_equal, params_of(workdir), params_of(uninterrupted))


def test_a_read_only_workdir_stops_the_run_and_a_damaged_step_is_skipped_on_rerun(
    uninterrupted, fashion_mnist_dir, tmpfs, tmp_path, capfd
):
    workdir = tmpfs / "run"
    # As above, the save at step 30 is the first write; here it fails before Orbax writes
    # anything (the metric writers' own failures: the test after this one).
    run_ = tiny(fashion_mnist_dir, log_every_steps=60, eval_every_steps=0)
    status, stderr, before = run_paused(
        run_, workdir, tmp_path / "paused", "after_save@20", lambda: remount(tmpfs, "ro")
    )
    assert status == 1
    assert console(stderr) == [
        f"error: checkpoint save at step 30 in {workdir}/checkpoints failed ([Errno 30] "
        "Read-only file system); the last good checkpoint (step 20) is kept"
    ]  # nor Python's "coroutine ... was never awaited" for what Orbax had not started
    assert snapshot(workdir / "checkpoints") == before

    # Writable again, but step 20 came back damaged (a half-copied workdir): the rerun says
    # so in one line, moves it aside and resumes from step 10, exactly.
    remount(tmpfs, "rw")
    truncate(data_file(workdir / "checkpoints" / "20"))
    capfd.readouterr()
    train_and_evaluate(run_.config(), workdir)  # the same command, rerun (in this process)
    lines = console(capfd.readouterr().err)  # what reached the file descriptor, not just Python
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: the checkpoint at step 20 cannot be restored (state/d/")
    assert lines[0].endswith(f"{workdir}/checkpoints/20.unrestorable and resuming from step 10")
    assert (workdir / "checkpoints" / "20.unrestorable" / "state").is_dir()
    assert json.loads((workdir / "resume_log.jsonl").read_text())["resumed_at_step"] == 10
    jax.tree.map(np.testing.assert_array_equal, params_of(workdir), params_of(uninterrupted))


def read_events(path):
    """(step, tag, value) of each scalar in a TensorBoard event file, every record's CRCs
    checked (TFRecord framing, as TensorBoard reads it)."""
    data, scalars = path.read_bytes(), []
    while data:
        header, data = data[:8], data[8:]
        (length,) = struct.unpack("Q", header)
        assert struct.unpack("I", data[:4])[0] == masked_crc32c(header)
        body, crc, data = data[4 : 4 + length], data[4 + length : 8 + length], data[8 + length :]
        assert struct.unpack("I", crc)[0] == masked_crc32c(body)
        event = event_pb2.Event.FromString(body)
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def test_metric_writers_fail_in_one_line_on_a_full_or_read_only_disk(tmpfs, tmp_path):
    # TensorBoard: its own filesystem turns read-only while metrics.jsonl can still be written.
    (tmp_path / "run" / "tb").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(tmpfs), str(tmp_path / "run" / "tb")], check=True)
    try:
        writer = MetricWriter(tmp_path / "run")
        writer.write(10, {"train_loss": 1.5})
        [events] = (tmp_path / "run" / "tb").glob("events.out.tfevents.*")
        assert read_events(events) == [(10, "train_loss", 1.5)]  # TensorBoard's format
        remount(tmp_path / "run" / "tb", "bind,ro")
        with pytest.raises(MetricWriteError) as error:
            writer.write(20, {"train_loss": 1.25})
    finally:
        subprocess.run(["umount", str(tmp_path / "run" / "tb")], check=True)
    assert re.fullmatch(
        rf"writing {tmp_path}/run/tb/events\.out\.tfevents\.\S+ failed \(\[Errno 30\] Read-only "
        r"file system\); the checkpoints are kept: .*",
        str(error.value),
    )
    assert [r["step"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open())] == [
        10,
        20,
    ]

    # metrics.jsonl on a full disk: the error, and no half row left for the rerun to append to.
    writer = MetricWriter(tmpfs, tensorboard=False)
    writer.write(10, {"note": "x" * 1000})
    fill(tmpfs)
    with pytest.raises(MetricWriteError, match=r"\[Errno 28\] No space left on device"):
        writer.write(20, {"note": "y" * 100_000})
    assert [json.loads(line)["step"] for line in (tmpfs / "metrics.jsonl").open()] == [10]


# --- a SIGTERM or SIGINT at each moment of a run: a checkpoint, exit status 0, an exact end ---


def test_a_signal_at_any_moment_saves_or_finishes_and_the_end_is_exact(
    uninterrupted, fashion_mnist_dir, tmp_path, monkeypatch, capsys
):
    # One run, preempted at one moment after another (tests/faults.py: the run signals itself
    # there), each time rerun; it must end bitwise where the uninterrupted run ended.
    workdir = tmp_path / "run"
    config = tiny(fashion_mnist_dir).config()

    def in_this_run(spec, run_dir=workdir):
        with monkeypatch.context() as patches:
            faults.inject(spec, patches.setattr)
            return train_and_evaluate(config, run_dir)

    def preempted(spec):
        with pytest.raises(Preempted) as stop:  # the command exits 0 on it: requeue
            in_this_run(spec)
        return stop.value.message

    def saved(sig, step):
        return f"{sig}: saved a checkpoint at step {step} in {workdir}; rerun the same command to resume"

    # Inside XLA's compilation of the first step: that step completes and is saved.
    assert preempted("compile:SIGTERM") == saved("SIGTERM", 1)
    assert preempted("start:SIGINT") == (
        "SIGINT: stopped before the first step, nothing new to save (the checkpoint at step 1 "
        "is kept); rerun the same command to resume"
    )
    assert preempted("before_save@10:SIGTERM") == saved("SIGTERM", 10)
    # The periodic save of step 20 is under way: reused, not repeated ("already exists").
    assert preempted("during_save@20:SIGINT") == saved("SIGINT", 20)
    assert preempted("eval@40:SIGTERM") == saved("SIGTERM", 40)
    assert preempted("after_save@50:SIGINT") == saved("SIGINT", 50)
    assert steps_on_disk(workdir)[-2:] == [40, 50]
    shutil.copytree(workdir, tmp_path / "at50")
    # The last step: saved before the final evaluation, which the rerun runs.
    assert preempted("step@60:SIGTERM") == saved("SIGTERM", 60)
    assert not (workdir / "results.json").exists()
    capsys.readouterr()

    # While the run finishes (final evaluation, final save), a signal does not stop it.
    results = in_this_run("final_eval:SIGINT")
    finished = f"arrived while the run was finishing; it finished at step 60 (results in {workdir}"
    assert f"SIGINT {finished}" in capsys.readouterr().err
    at50 = in_this_run("during_final_save:SIGTERM", tmp_path / "at50")
    assert at50["test_error"] == results["test_error"]
    assert f"SIGTERM {finished.replace(str(workdir), str(tmp_path / 'at50'))}" in (
        capsys.readouterr().err
    )

    theirs = json.loads((uninterrupted / "results.json").read_text())
    assert results["test_error"] == theirs["test_error"]
    assert results["train_loss"] == theirs["train_loss"]  # the last window, kept in the meta
    for run_dir in (workdir, tmp_path / "at50"):
        jax.tree.map(np.testing.assert_array_equal, params_of(run_dir), params_of(uninterrupted))
