"""launch.sh: a sweep's points in parallel on this machine (CPU slots, GPU slots, a queue), a
failing point that does not stop the others, Ctrl-C and resume, its errors, and the SLURM script.

The CPU tests train real (tiny) points; the GPU-slot and SLURM dry-run tests replace `python -m
resjax.train` by a stand-in (RESJAX_PYTHON) that records what it was given. The tests marked
`slurm` submit real tiny points to a one-node SLURM cluster on this machine (tests/local_slurm.sh).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest
from test_multiprocess import assert_same_training

from resjax import checkpoint

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.sh"

# A sweep of tiny runs: ResNet-8 of width 4 on 512 Fashion-MNIST images. Point 'bad' names a
# model that does not exist: it passes enumeration and fails when training starts.
SWEEP_CONFIG = '''
"""A tiny sweep for tests/test_launch.py.

    ./launch.sh tiny_sweep.py --parallel 2 --config.data.dir=DIR
"""
from resjax.config import base_config, lock

def get_config(arg=None):
    c = base_config()
    c.model.name = "resnet_nonexistent" if arg == "bad" else "resnet8"
    c.seed = {"a": 0, "b": 1}.get(arg, 0)
    c.model.overrides.widths = (4, 4, 8)
    c.model.overrides.stem_width = 4
    c.data.train_split = "train[:512]"
    c.data.test_split = "test[:64]"
    c.data.val_examples = 64
    c.batch_size = 32
    c.eval_batch_size = 32
    c.total_steps = 8
    c.log_every_steps = 4
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 4
    return lock(c)

def sweep(arg=None):
    return {None: ["a", "b", "bad"], "good": ["a", "b"]}.get(arg or None)
'''


@pytest.fixture()
def sweep_file(tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_CONFIG)
    return path


def launch_env(**changes):
    env = {**os.environ, "RESJAX_PYTHON": sys.executable, "RESJAX_LAUNCH_POLL_S": "0.1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def launch(*args, env=None, timeout=240):
    return subprocess.run(
        ["bash", str(LAUNCH), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or launch_env(),
        timeout=timeout,
    )


def test_help_and_clear_errors(sweep_file):
    result = launch("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: ./launch.sh")
    assert "--per-point" in result.stdout and "--slurm" in result.stdout
    assert "set -euo pipefail" in LAUNCH.read_text()

    def error(*args, env=None):
        """launch.sh's answer to bad input: one line on stderr, `error: ...`, status 1 or 2."""
        result = launch(*args, env=env)
        assert result.returncode in (1, 2) and result.stdout == "", result.stdout
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        return result.stderr.strip()

    assert (
        error() == "error: no CONFIG given (usage: ./launch.sh [options] CONFIG[:ARG]; see --help)"
    )
    assert error("configs/nope.py") == "error: config file configs/nope.py does not exist"
    assert "unknown option '--bogus'" in error("--bogus", sweep_file)
    assert "--parallel needs a positive integer; got '0'" in error("--parallel", "0", sweep_file)
    no_gpu = launch_env(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS=None)
    message = error("--per-point", "1", sweep_file, env=no_gpu)
    assert (
        "asks for accelerators, but this machine has none" in message and "--parallel N" in message
    )
    assert "asks for accelerators" in error("--per-point", "2", sweep_file)  # JAX_PLATFORMS=cpu
    many = launch_env(CUDA_VISIBLE_DEVICES="0,1", JAX_PLATFORMS=None)
    assert "more accelerators than this machine has (2 GPUs" in error(
        "--per-point", "3", sweep_file, env=many
    )
    # Python's answers, passed on as they are: a point get_config rejects, a mistyped key, a
    # value of the wrong type.
    assert "unknown key 'dpeth'; allowed keys: depth" in error("configs/depth_sweep.py:dpeth=56")
    assert 'Did you mean "lr"' in error(sweep_file, "--config.optim.lrr=1")
    assert "invalid literal for int()" in error(sweep_file, "--config.batch_size=abc")


def test_cpu_sweep_a_failing_point_does_not_stop_the_others(
    sweep_file, fashion_mnist_dir, tmp_path
):
    workdir = tmp_path / "runs"
    args = (
        sweep_file,
        "--parallel",
        2,
        "--workdir",
        workdir,
        f"--config.data.dir={fashion_mnist_dir}",
    )
    result = launch(*args)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    for name in ("a", "b"):
        assert re.search(rf"finished {name} ", out), out
        assert json.loads((workdir / name / "results.json").read_text())["steps"] == 8
    bad_log = workdir / "bad" / "log.txt"
    assert re.search(rf"FAILED   bad  \(exit 1\) .* log: {re.escape(str(bad_log))}", out), out
    assert "done in" in out and "2 of 3 finished, 1 failed" in out
    summary = out[out.index("done in") :]
    assert f"FAILED      bad  (exit 1)  log: {bad_log}" in summary and " a " not in summary
    assert "resnet_nonexistent" in bad_log.read_text()  # the point's own error, in its own log
    # Two slots: the third point starts only after one of the first two ended.
    events = re.findall(r"(start|finished|FAILED) +(\w+)", out)
    third = events.index(("start", "bad"))
    assert [e for e, _ in events[:third]].count("start") == 2 and third >= 3, events
    status = json.loads((workdir / "sweep_status.json").read_text())["points"]
    assert {k: v["status"] for k, v in status.items()} == {
        "a": "finished",
        "b": "finished",
        "bad": "failed",
    }
    assert "resnet_nonexistent" in status["bad"]["error"]
    assert (workdir / "report.md").exists()

    # A rerun skips what finished (without training) and retries the failure.
    again = launch(*args)
    assert again.returncode == 1
    assert "skipped  a  (finished earlier)" in again.stdout and "skipped  b" in again.stdout
    assert "FAILED   bad" in again.stdout


def test_ctrl_c_checkpoints_every_point_and_a_rerun_resumes(
    sweep_file, fashion_mnist_dir, tmp_path
):
    workdir = tmp_path / "runs"
    common = [f"{sweep_file}:good", "--parallel", "2", "--workdir", str(workdir)]
    data = f"--config.data.dir={fashion_mnist_dir}"
    long = ["--config.total_steps=100000", "--config.checkpoint_every_steps=100000"]
    # As a terminal's Ctrl-C: SIGINT to launch.sh and its children (one process group).
    # launch.sh starts with SIGINT at its default disposition even when pytest runs in the
    # background of a non-interactive shell (`nohup pytest &`), which ignores SIGINT: bash
    # cannot trap a signal that was ignored when it started.
    proc = subprocess.Popen(
        ["bash", str(LAUNCH), *common, data, *long],
        cwd=ROOT,
        env=launch_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    logs = [workdir / name / "log.txt" for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all(p.exists() and "step 8/" in p.read_text() for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "asking the running points to checkpoint" in out
    for name, log in zip(("a", "b"), logs, strict=True):
        assert re.search(rf"stopped  {name}  after .*checkpointed; rerun to resume", out), out
        assert re.search(r"SIG(INT|TERM): saved a checkpoint at step \d+", log.read_text())
        assert not (workdir / name / "results.json").exists()
        assert list((workdir / name / "checkpoints").iterdir())

    # The rerun resumes both from their checkpoints (a shorter run: total_steps may change).
    result = launch(*common, data, "--config.total_steps=16")
    assert result.returncode == 0, result.stdout + result.stderr
    for name, log in zip(("a", "b"), logs, strict=True):
        assert re.search(rf"finished {name} ", result.stdout)
        assert "resumed at step" in log.read_text()
        assert (workdir / name / "results.json").exists()


FAKE_TRAIN = """\
#!/usr/bin/env bash
# Stand-in for python: `-m resjax.train ... --workdir=DIR` records its GPUs and arguments,
# sleeps, and finishes (results.json) unless FAKE_PREEMPT is set, exiting FAKE_EXIT (default 0);
# anything else is real python.
if [[ $1 == -m && $2 == resjax.train ]]; then
  for a in "$@"; do [[ $a == --workdir=* ]] && dir=${a#--workdir=}; done
  mkdir -p "$dir"
  echo "start $(date +%s.%N) gpus=${CUDA_VISIBLE_DEVICES-unset} args=${*:3}" >>"$FAKE_RECORD"
  sleep "${FAKE_SLEEP:-0.5}"
  [[ -n ${FAKE_PREEMPT:-} ]] || echo '{"steps": 1}' >"$dir/results.json"
  echo "end $(date +%s.%N) gpus=${CUDA_VISIBLE_DEVICES-unset}" >>"$FAKE_RECORD"
  exit "${FAKE_EXIT:-0}"
fi
exec PYTHON "$@"
"""


@pytest.fixture()
def fake_python(tmp_path):
    path = tmp_path / "fake_python"
    path.write_text(FAKE_TRAIN.replace("PYTHON", sys.executable))
    path.chmod(0o755)
    return path


def test_gpu_slots_per_point_and_queue(fake_python, tmp_path):
    record = tmp_path / "record.txt"
    env = launch_env(
        RESJAX_PYTHON=str(fake_python),
        FAKE_RECORD=str(record),
        CUDA_VISIBLE_DEVICES="3,5,6,7,9",  # 5 GPUs, 2 per point: 2 slots, the 5th GPU unused
        JAX_PLATFORMS=None,
    )
    workdir = tmp_path / "runs"
    args = [
        "configs/depth_sweep.py",
        "--per-point",
        "2",
        "--workdir",
        workdir,
        "--config.total_steps=3",
    ]
    dry = launch(*args, "--dry-run", env=env)
    assert (
        dry.returncode == 0
        and "5 GPU(s) [3 5 6 7 9], 2 per point: 2 point(s) at once" in dry.stdout
    )
    assert not workdir.exists()
    result = launch(*args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    events = [line.split() for line in record.read_text().splitlines()]
    n = len(depth_sweep_points())
    starts = [e[2] for e in events if e[0] == "start"]
    assert len(starts) == n and set(starts) == {"gpus=3,5", "gpus=6,7"}
    running, peak = set(), 0  # never two points on one GPU pair at a time
    for kind, _, gpus, *_ in sorted(events, key=lambda e: float(e[1])):
        if kind == "start":
            assert gpus not in running
            running.add(gpus)
            peak = max(peak, len(running))
        else:
            running.discard(gpus)
    assert peak == 2
    assert all("--config.total_steps=3" in " ".join(e) for e in events if e[0] == "start")
    assert result.stdout.count("finished ") == n and f"{n} of {n} finished" in result.stdout


def depth_sweep_points(*overrides):
    """[(name, flags)] of configs/depth_sweep.py's default sweep (its depths are the recipe's)."""
    listing = subprocess.run(
        [sys.executable, "-m", "resjax.sweep", "list", "configs/depth_sweep.py", *overrides],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    return [tuple(line.split("\t")) for line in listing.splitlines()]


# srun for one task on this machine: its output appended to --output's file, as slurmstepd does.
SRUN_STAND_IN = """\
#!/usr/bin/env bash
out=/dev/stdout
while [[ $1 == --* ]]; do [[ $1 == --output=* ]] && out=${1#--output=}; shift; done
exec "$@" >>"${out//%%/%}" 2>&1
"""


def test_slurm_dry_run_script(fake_python, tmp_path):
    points = depth_sweep_points("--config.total_steps=100")
    workdir = tmp_path / "runs"
    result = launch(
        "--slurm", "--dry-run", "--partition=gpu", "-t", "4:00:00",
        "--nodes", "2", "--per-point", "4",
        "configs/depth_sweep.py", "--workdir", workdir, "--config.total_steps=100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not workdir.exists()  # a dry run writes nothing
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"# {workdir}/slurm/resjax-depth_sweep-")
    script = "\n".join(lines[1 : lines.index("# submit:")])
    submit = lines[lines.index("# submit:") + 1]
    assert re.fullmatch(rf"sbatch --partition=gpu -t 4:00:00 {workdir}/slurm/\S+\.sbatch ?", submit)
    for directive in (
        f"--array=0-{len(points) - 1}", "--signal=TERM@120", "--requeue", "--nodes=2",
        "--ntasks-per-node=4", "--gpus-per-node=4", f"--output={workdir}/slurm/",
    ):  # fmt: skip
        assert f"#SBATCH {directive}" in script, directive
    assert "srun --kill-on-bad-exit=1 --open-mode=append --output=" in script
    assert '"$python" -m resjax.train "${args[@]}" --workdir="$dir"' in script
    assert "scontrol requeue" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    # Run the script as SLURM would for array task 2, with srun and scontrol stand-ins: it
    # trains point 2 with its flags; a point that stopped early (preempted) requeues itself,
    # whether it checkpointed (exit 0) or SIGTERM killed it before it could (exit 143, as the
    # real scheduler showed); a point that fails (exit 1) is recorded and not requeued.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN_STAND_IN)
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "$*" >>{tmp_path}/scontrol\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    script = re.sub(r"(?m)^python=.*$", f"python={fake_python}", script)
    record = tmp_path / "record.txt"
    name, flags = points[2]
    log = workdir / name / "log.txt"
    for exit_status in (0, 143):
        env = launch_env(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            SLURM_ARRAY_TASK_ID="2",
            SLURM_JOB_ID="1234",
            FAKE_RECORD=str(record),
            FAKE_PREEMPT="1",
            FAKE_EXIT=str(exit_status),
        )
        run = subprocess.run(
            ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        started = record.read_text().splitlines()[-2]
        assert flags in started and f"--workdir={workdir}/{name}" in started
        assert (tmp_path / "scontrol").read_text().strip() == "requeue 1234"
        assert f"(preempted or out of time, exit {exit_status}): requeued" in log.read_text()
        (tmp_path / "scontrol").unlink()
    env["FAKE_EXIT"] = "1"
    run = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True)
    assert run.returncode == 1 and not (tmp_path / "scontrol").exists()
    assert f"=== {name} failed (exit 1): not requeued" in log.read_text()
    outcome = next((workdir / "slurm").glob("*.outcomes")) / name
    assert re.fullmatch(rf"{name}=failed:1:\d+\n", outcome.read_text())


def test_slurm_single_host_leaves_out_finished_points(tmp_path):
    first, *others = [name for name, _ in depth_sweep_points()]
    workdir = tmp_path / "runs"
    (workdir / first).mkdir(parents=True)
    (workdir / first / "results.json").write_text("{}")
    result = launch(
        "--slurm", "--dry-run", "--per-point", "2", "configs/depth_sweep.py", "--workdir", workdir
    )
    assert result.returncode == 0, result.stderr
    assert f"{first}: finished earlier (results.json), not submitted" in result.stdout
    assert f"#SBATCH --array=0-{len(others) - 1}" in result.stdout
    assert "#SBATCH --ntasks-per-node=1" in result.stdout  # one process, all of its GPUs
    assert "#SBATCH --gpus-per-node=2" in result.stdout
    names = textwrap.dedent(result.stdout.split("names=(\n")[1].split(")")[0]).split()
    assert names == others


# ---------------------------------------------------------------- a real SLURM
# tests/local_slurm.sh starts a one-node SLURM cluster (Debian's slurm-wlm) on this machine, and
# launch.sh --slurm submits to it for real: the job array, preemption by signal and by requeue,
# a failing point, and one point as two processes under srun. CI installs the packages; on a
# machine that cannot run a cluster (not root, no apt-get) these tests are skipped.

LOCAL_SLURM = ROOT / "tests" / "local_slurm.sh"
SLURM_TIMEOUT_S = 300
# Long enough that a task frozen once it has logged step 4 is stopped well before its end
# (~2 s at the 45 steps/s these tiny points make on 2 cores).
SLURM_STEPS = 96


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment for launch.sh and SLURM's commands (SLURM_CONF) on a one-node cluster
    started for this module and stopped after it."""
    directory = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(
        ["bash", str(LOCAL_SLURM), "start", str(directory), *map(str, free_ports(2))],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if start.returncode == 77:  # not root, or no packages and no apt-get
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield launch_env(SLURM_CONF=str(directory / "slurm.conf"))
    finally:
        subprocess.run(["bash", str(LOCAL_SLURM), "stop", str(directory)], timeout=180)


def slurm_command(env, *args):
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout


def wait_for(condition, what, timeout=SLURM_TIMEOUT_S, poll_s=0.5):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll_s)


def log_has(path, text):
    return path.exists() and text in path.read_text()


def submitted_job(result):
    """The job id sbatch printed, from launch.sh's output (one submission only)."""
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = re.findall(r"Submitted batch job (\d+)", result.stdout)
    assert len(jobs) == 1, result.stdout
    return jobs[0]


def wait_for_job(env, job):
    """Until every task of `job` has ended (requeued runs included)."""
    wait_for(lambda: not slurm_command(env, "squeue", "-h", "-j", job).strip(), f"job {job}")


def job_tasks(env, job):
    """{array task id: scontrol's fields} of a job (SLURM keeps ended jobs for MinJobAge)."""
    tasks = {}
    for line in slurm_command(env, "scontrol", "-o", "show", "job", job).splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        tasks[int(fields.get("ArrayTaskId", 0))] = fields
    return tasks


def variables(workdir):
    return checkpoint.load_variables(workdir)[1]


@pytest.fixture(scope="module")
def slurm_sweep(slurm, fashion_mnist_dir, tmp_path_factory):
    """tiny_sweep.py (a, b and the failing bad) of SLURM_STEPS steps, submitted to SLURM and
    run on this machine alike. Under SLURM, once a and b train, task a gets SIGTERM by
    `scancel --signal=TERM` and task b is requeued by `scontrol requeue`; both are frozen
    (SIGSTOP) first, so that the stop lands mid-run however fast this machine trains. Then
    launch.sh is run again with the finished half of the sweep."""
    root = tmp_path_factory.mktemp("slurm_sweep")
    sweep = root / "tiny_sweep.py"
    sweep.write_text(SWEEP_CONFIG)
    slurm_dir, local_dir = root / "slurm" / "runs", root / "local" / "runs"  # same report title
    args = [
        f"--config.data.dir={fashion_mnist_dir}",
        f"--config.total_steps={SLURM_STEPS}",
        "--config.checkpoint_every_steps=0",  # the preemption's save is the one that counts
    ]
    started = time.monotonic()
    submit = launch("--slurm", sweep, "--workdir", slurm_dir, *args, env=slurm)
    job = submitted_job(submit)
    duplicate = launch("--slurm", sweep, "--workdir", slurm_dir, *args, env=slurm)
    training = {f"{job}_{task}": slurm_dir / name / "log.txt" for task, name in enumerate("ab")}
    while training:  # freeze each as soon as it trains
        for task, log in list(training.items()):
            if log_has(log, "step 4/"):
                slurm_command(slurm, "scancel", "--signal=STOP", task)
                del training[task]
        assert time.monotonic() - started < SLURM_TIMEOUT_S, f"a and b never trained: {training}"
        time.sleep(0.05)
    slurm_command(slurm, "scancel", "--signal=TERM", f"{job}_0")
    slurm_command(slurm, "scancel", "--signal=CONT", f"{job}_0")
    slurm_command(slurm, "scontrol", "requeue", f"{job}_1")  # SLURM sends SIGCONT, SIGTERM
    # The uninterrupted runs, on this machine while SLURM requeues.
    local = launch(sweep, "--parallel", 2, "--workdir", local_dir, *args, timeout=SLURM_TIMEOUT_S)
    wait_for_job(slurm, job)
    rerun = launch("--slurm", f"{sweep}:good", "--workdir", slurm_dir, *args, env=slurm)
    return types.SimpleNamespace(
        dirs=(slurm_dir, local_dir),
        submit=submit,
        duplicate=duplicate,
        local=local,
        rerun=rerun,
        tasks=job_tasks(slurm, job),
        job=job,
    )


def without_wall_time(report):
    """report.md's lines, the points table's last column (wall time) dropped."""
    return [re.sub(r"\| [^|]* \|$", "|", line) for line in report.splitlines()]


@pytest.mark.slurm
def test_slurm_sweep_is_one_array_and_ends_as_a_local_run(slurm_sweep):
    slurm_dir, local_dir = slurm_sweep.dirs
    assert "submitting 3 point(s)" in slurm_sweep.submit.stdout
    assert sorted(slurm_sweep.tasks) == [0, 1, 2]
    assert {t["ArrayJobId"] for t in slurm_sweep.tasks.values()} == {slurm_sweep.job}
    # A second submission while the first is queued would train the same points twice.
    assert slurm_sweep.duplicate.returncode == 1
    assert "still queued or running" in slurm_sweep.duplicate.stderr
    assert slurm_sweep.local.returncode == 1  # bad fails here too

    # The last task to end wrote sweep_status.json and the report, as launch.sh does here.
    statuses = [json.loads((d / "sweep_status.json").read_text())["points"] for d in (slurm_dir, local_dir)]  # fmt: skip
    assert [{k: v["status"] for k, v in s.items()} for s in statuses] == 2 * [
        {"a": "finished", "b": "finished", "bad": "failed"}
    ]
    assert "resnet_nonexistent" in statuses[0]["bad"]["error"]  # the point's words, not srun's
    assert statuses[0]["bad"]["error"] == statuses[1]["bad"]["error"]
    reports = [without_wall_time((d / "report.md").read_text()) for d in (slurm_dir, local_dir)]
    assert reports[0] == reports[1]
    for name in ("a", "b"):
        results = [json.loads((d / name / "results.json").read_text()) for d in (slurm_dir, local_dir)]  # fmt: skip
        for r in results:
            del r["wall_time_s"], r["images_per_s"]
        assert results[0] == results[1], name

    # Logs where the README says: each point's in WORKDIR/<point>/log.txt, SLURM's own output
    # (srun's messages, the sweep's summary) in WORKDIR/slurm/<job name>-<job>_<task>.out.
    for name in ("a", "b", "bad"):
        assert "SLURM job" in (slurm_dir / name / "log.txt").read_text()
    outs = sorted((slurm_dir / "slurm").glob(f"resjax-tiny_sweep-{slurm_sweep.job}_*.out"))
    assert len(outs) == 3
    assert sum("2 of 3 finished, 1 failed" in out.read_text() for out in outs) == 1


@pytest.mark.slurm
def test_slurm_preempted_and_requeued_tasks_resume_bitwise(slurm_sweep):
    slurm_dir, local_dir = slurm_sweep.dirs
    a, b = slurm_sweep.tasks[0], slurm_sweep.tasks[1]
    assert (a["JobState"], a["Restarts"], b["JobState"], b["Restarts"]) == ("COMPLETED", "1") * 2
    log_a = (slurm_dir / "a" / "log.txt").read_text()
    log_b = (slurm_dir / "b" / "log.txt").read_text()
    assert "(preempted or out of time, exit 0): requeued" in log_a  # the script requeued it
    assert "DUE TO JOB REQUEUE" in log_b and "b stopped by SLURM" in log_b  # SLURM did
    for log in (log_a, log_b):
        step = int(re.search(r"SIGTERM: saved a checkpoint at step (\d+)", log).group(1))
        assert 4 <= step < SLURM_STEPS
        assert f"resumed at step {step}" in log and ", restart 1)" in log
    for name in ("a", "b"):
        jax.tree.map(
            np.testing.assert_array_equal,
            variables(slurm_dir / name),
            variables(local_dir / name),
        )


@pytest.mark.slurm
def test_slurm_failing_point_is_recorded_and_not_requeued(slurm_sweep):
    slurm_dir, _ = slurm_sweep.dirs
    bad = slurm_sweep.tasks[2]
    assert (bad["JobState"], bad["Restarts"], bad["ExitCode"]) == ("FAILED", "0", "1:0")
    log = (slurm_dir / "bad" / "log.txt").read_text()
    assert log.count("SLURM job") == 1 and "bad failed (exit 1): not requeued" in log


@pytest.mark.slurm
def test_slurm_rerun_after_completion_submits_nothing(slurm_sweep):
    rerun = slurm_sweep.rerun
    assert rerun.returncode == 0, rerun.stderr
    assert "a: finished earlier (results.json), not submitted" in rerun.stdout
    assert "every point of" in rerun.stdout and "nothing to submit" in rerun.stdout
    assert "Submitted" not in rerun.stdout


@pytest.mark.slurm
def test_slurm_one_point_on_two_processes_under_srun(slurm, fashion_mnist_dir, tmp_path):
    # Two tasks on the one node (--ntasks-per-node=2 overrides the script's 1) of 2 CPU
    # devices each: jax.distributed from SLURM's variables; the reference is one process on 4.
    sweep = tmp_path / "tiny_sweep.py"
    sweep.write_text(SWEEP_CONFIG)
    overrides = [
        f"--config.data.dir={fashion_mnist_dir}",
        "--config.optim.lr=0.01",  # tests/test_multiprocess.py's docstring says why
        "--config.total_steps=4",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=0",  # the final save only
    ]
    env = {**slurm, "JAX_NUM_CPU_DEVICES": "2"}
    submit = launch(
        "--slurm", "--ntasks-per-node=2", f"{sweep}:a", "--workdir", tmp_path / "slurm", *overrides, env=env
    )  # fmt: skip
    job = submitted_job(submit)
    wait_for_job(slurm, job)
    reference = tmp_path / "one_process"
    subprocess.run(
        [sys.executable, "-m", "resjax.train", f"--config={sweep}:a", f"--workdir={reference}", *overrides],
        cwd=ROOT, env=launch_env(), check=True, capture_output=True, timeout=SLURM_TIMEOUT_S,
    )  # fmt: skip
    task = job_tasks(slurm, job)[0]
    assert (task["JobState"], task["NumTasks"]) == ("COMPLETED", "2")
    workdir = tmp_path / "slurm" / "a"
    log = (workdir / "log.txt").read_text()
    assert "on 4 cpu device(s), 2 process(es)" in log
    assert_same_training(workdir, reference)
    # Only process 0 writes: one row per step, one TensorBoard file, its lines only in the log.
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]
    assert len(list((workdir / "tb").glob("events.out.tfevents.*"))) == 1
    assert log.count("step 4/4") == 1
