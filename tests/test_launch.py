"""launch.sh: a sweep's points in parallel on this machine (CPU slots, GPU slots, a queue), a
failing point that does not stop the others, Ctrl-C and resume, its errors, and the SLURM script.

The CPU tests train real (tiny) points; the GPU-slot and SLURM dry-run tests replace `python -m
resjax.train` by a stand-in (RESJAX_PYTHON) that records what it was given. test_slurm.py
submits real tiny points to a one-node SLURM cluster on this machine.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import tiny_run
from processes import LAUNCH, command, launch, launch_env, reached_before_exit, run, start


def write_tiny_sweep(path):
    """A sweep of the tiny run (8 steps) as a config file: points a and b (seeds 0 and 1), and
    bad, which names a model that does not exist: it passes enumeration and fails when training
    starts. Sweep 'good' is a and b. Returns `path`."""
    tiny = tiny_run(total_steps=8, log_every_steps=4, eval_every_steps=0, checkpoint_every_steps=4)
    return tiny.write_config_file(
        path,
        points={"b": {"seed": 1}, "bad": {"model.name": "resnet_nonexistent"}},
        sweeps={None: ["a", "b", "bad"], "good": ["a", "b"]},
    )


@pytest.fixture()
def sweep_file(tmp_path):
    return write_tiny_sweep(tmp_path / "tiny_sweep.py")


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
    proc = start(
        ["bash", LAUNCH, *common, data, *long],
        launch_env(),
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    logs = [workdir / name / "log.txt" for name in ("a", "b")]

    def both_trained():
        return all(p.exists() and "step 8/" in p.read_text() for p in logs)

    assert reached_before_exit(proc, both_trained, timeout_s=120, poll_s=0.2), proc.communicate()
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
    listing = run(command("sweep", "list", "configs/depth_sweep.py", *overrides), check=True).stdout
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
        task = subprocess.run(
            ["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert task.returncode == 0, task.stderr
        started = record.read_text().splitlines()[-2]
        assert flags in started and f"--workdir={workdir}/{name}" in started
        assert (tmp_path / "scontrol").read_text().strip() == "requeue 1234"
        assert f"(preempted or out of time, exit {exit_status}): requeued" in log.read_text()
        (tmp_path / "scontrol").unlink()
    env["FAKE_EXIT"] = "1"
    task = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True)
    assert task.returncode == 1 and not (tmp_path / "scontrol").exists()
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
