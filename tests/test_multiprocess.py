"""Multi-process data-parallel training for real: two processes on localhost (jax.distributed,
gloo CPU collectives, 2 fake devices each) train as one process on 4 devices does.

Each process reads its own half of every global batch (TrainIterator slices by process index);
the final parameters can only equal the single-process run's if the two halves form the same
global batch. The learning rate is 0.01: this width-4 ResNet-8's stem-conv gradient is a large
cancellation (BatchNorm follows the conv on near-constant Fashion-MNIST patches), so at lr 0.1 a
1-ulp difference in the all-reduce order grows to 1e-3 within three steps, in any two device
layouts (4 devices vs 1 too). At 0.01 four steps agree to ~2e-7.
"""

import json
import shutil
import signal

import jax
import numpy as np
import pytest
from conftest import FMNIST_RECIPE, tiny_run, trained_variables
from processes import environ, finish, free_ports, read_until, start

from resjax import checkpoint

TIMEOUT_S = 180


def train_args(workdir, data_dir, steps, *extra):
    """The tiny run on the Fashion-MNIST recipe, global batch 32, logged every step."""
    run = tiny_run(
        data_dir,
        base=FMNIST_RECIPE,
        total_steps=steps,
        log_every_steps=1,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        **{"optim.lr": 0.01},  # see the module docstring
    )
    return run.command(workdir, *extra)


def start_on(cmd, devices):
    """`cmd` started on `devices` fake CPU devices."""
    return start(cmd, environ(JAX_NUM_CPU_DEVICES=str(devices)))


def start_processes(cmd, n=2, devices=2):
    """`cmd` as processes 0..n-1 of one jax.distributed run with a local coordinator."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    return [
        start_on(
            [*cmd, f"--coordinator_address={address}", f"--num_processes={n}", f"--process_id={i}"],
            devices,
        )
        for i in range(n)
    ]


def run_processes(cmd, n=2, devices=2):
    results = finish(start_processes(cmd, n, devices), TIMEOUT_S)
    for i, (code, _, stderr) in enumerate(results):
        assert code == 0, f"process {i} exited {code}:\n{stderr[-3000:]}"
    return results


def assert_same_training(a, b):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
        trained_variables(a),
        trained_variables(b),
    )
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (a, b))
    for key in ("train_loss", "val_loss", "test_loss"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-5), key


@pytest.fixture(scope="module")
def single_process(fashion_mnist_dir, tmp_path_factory):
    """The reference: one process on 4 devices, 4 steps of global batch 32."""
    workdir = tmp_path_factory.mktemp("single")
    cmd = train_args(workdir, fashion_mnist_dir, 4)
    code, _, stderr = finish([start_on(cmd, devices=4)], TIMEOUT_S)[0]
    assert code == 0, stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def two_processes(fashion_mnist_dir, tmp_path_factory):
    """The same 4 steps as 2 processes of 2 devices: (workdir, stdout of each process)."""
    workdir = tmp_path_factory.mktemp("two_processes")
    results = run_processes(train_args(workdir, fashion_mnist_dir, 4))
    return workdir, [out for _, out, _ in results]


def test_two_processes_train_as_one_process_on_four_devices(single_process, two_processes):
    tmp_path, (out0, out1) = two_processes
    assert_same_training(tmp_path, single_process)
    assert "on 4 cpu device(s), 2 process(es)" in out0
    # Only process 0 writes metrics, config, results and the console report.
    # Gloo's own connection messages may interleave mid-line; anything else is ours.
    ours = [line for line in out1.splitlines() if line and "peer ranks" not in line]
    assert ours == [], out1[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "test_error" in r] == [2, 4]
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "resnet8"


def test_two_process_checkpoint_resumes_exactly(
    single_process, two_processes, fashion_mnist_dir, tmp_path
):
    # The 2-process run as if killed right after its step-2 checkpoint: rerunning restores
    # that checkpoint (saved by 2 processes) and ends where the uninterrupted runs did.
    shutil.copytree(two_processes[0], tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    (tmp_path / "results.json").unlink()
    (_, out0, _), _ = run_processes(train_args(tmp_path, fashion_mnist_dir, 4))
    assert "resumed at step 2" in out0
    assert_same_training(tmp_path, single_process)


def test_a_signal_to_one_process_stops_both_at_the_same_step(fashion_mnist_dir, tmp_path):
    # A scheduler's SIGTERM reaches the processes at different moments (here: only one).
    # JAX's preemption sync picks one step for all; each process saves its part and exits 0.
    procs = start_processes(
        train_args(tmp_path, fashion_mnist_dir, 100_000, "--config.checkpoint_every_steps=0")
    )
    try:
        read_until(procs[0], "step 3/", TIMEOUT_S)
        procs[1].send_signal(signal.SIGTERM)
        results = finish(procs, TIMEOUT_S)
    finally:
        for p in procs:
            p.kill()
    steps = []
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
        line = next(x for x in stderr.splitlines() if "saved a checkpoint at step" in x)
        steps.append(int(line.split("at step ")[1].split()[0]))
    assert steps[0] == steps[1] >= 3
    assert checkpoint.Checkpointer(tmp_path).latest_step() == steps[0]
