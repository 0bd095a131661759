"""launch.sh --slurm against a real SLURM: tests/local_slurm.sh starts a one-node cluster
(Debian's slurm-wlm) on this machine, and launch.sh submits tiny points to it for real: the job
array, preemption by signal and by requeue, a failing point, and one point as two processes
under srun. CI installs the packages; on a machine that cannot run a cluster (not root, no
apt-get) these tests are skipped.
"""

import json
import re
import time
import types

import jax
import numpy as np
import pytest
from conftest import trained_variables
from processes import ROOT, command, free_ports, launch, launch_env, run, wait_until
from test_launch import write_tiny_sweep
from test_multiprocess import assert_same_training

LOCAL_SLURM = ROOT / "tests" / "local_slurm.sh"
SLURM_TIMEOUT_S = 300
# Long enough that a task frozen once it has logged step 4 is stopped well before its end
# (~2 s at the 45 steps/s these tiny points make on 2 cores).
SLURM_STEPS = 96


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment for launch.sh and SLURM's commands (SLURM_CONF) on a one-node cluster
    started for this module and stopped after it."""
    directory = tmp_path_factory.mktemp("slurm")
    start = run(["bash", LOCAL_SLURM, "start", directory, *free_ports(2)], timeout_s=600)
    if start.returncode == 77:  # not root, or no packages and no apt-get
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield launch_env(SLURM_CONF=str(directory / "slurm.conf"))
    finally:
        run(["bash", LOCAL_SLURM, "stop", directory], timeout_s=180)


def slurm_command(env, *args):
    return run(args, env=env, check=True).stdout


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
    wait_until(
        lambda: not slurm_command(env, "squeue", "-h", "-j", job).strip(),
        f"job {job}",
        timeout_s=SLURM_TIMEOUT_S,
    )


def job_tasks(env, job):
    """{array task id: scontrol's fields} of a job (SLURM keeps ended jobs for MinJobAge)."""
    tasks = {}
    for line in slurm_command(env, "scontrol", "-o", "show", "job", job).splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        tasks[int(fields.get("ArrayTaskId", 0))] = fields
    return tasks


@pytest.fixture(scope="module")
def slurm_sweep(slurm, fashion_mnist_dir, tmp_path_factory):
    """tiny_sweep.py (a, b and the failing bad) of SLURM_STEPS steps, submitted to SLURM and
    run on this machine alike. Under SLURM, once a and b train, task a gets SIGTERM by
    `scancel --signal=TERM` and task b is requeued by `scontrol requeue`; both are frozen
    (SIGSTOP) first, so that the stop lands mid-run however fast this machine trains. Then
    launch.sh is run again with the finished half of the sweep."""
    root = tmp_path_factory.mktemp("slurm_sweep")
    sweep = write_tiny_sweep(root / "tiny_sweep.py")
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
    local = launch(sweep, "--parallel", 2, "--workdir", local_dir, *args, timeout_s=SLURM_TIMEOUT_S)
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
            trained_variables(slurm_dir / name),
            trained_variables(local_dir / name),
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
    sweep = write_tiny_sweep(tmp_path / "tiny_sweep.py")
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
    train = command("train", f"--config={sweep}:a", f"--workdir={reference}", *overrides)
    run(train, env=launch_env(), check=True, timeout_s=SLURM_TIMEOUT_S)
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
