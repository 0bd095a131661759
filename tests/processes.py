"""Starting resjax's commands (and launch.sh) from tests as processes, and watching them.

Every process runs in the repository root with its output captured as text. Three ways to wait,
one per meaning: `wait_until` (a condition outside any one process, e.g. a SLURM job's state;
the test fails at the timeout), `reached_before_exit` (a condition on what a running process
does, e.g. a checkpoint on disk; False if the process exits first) and `read_until` (a line
that a running process prints).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.sh"


def command(module: str, *args) -> list[str]:
    """`python -m resjax.<module> ARGS` with this interpreter."""
    return [sys.executable, "-m", f"resjax.{module}", *map(str, args)]


def environ(**changes: str | None) -> dict[str, str]:
    """This process's environment with `changes`; a None value removes the variable."""
    env = {**os.environ, **changes}
    return {k: v for k, v in env.items() if v is not None}


def run(cmd: list, env: dict | None = None, timeout_s: float | None = None, **kw):
    """Runs `cmd` to its end (CompletedProcess, text output). `env`: the whole environment
    (None: this process's)."""
    return subprocess.run(
        list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout_s,
        **kw,
    )  # fmt: skip


def start(cmd: list, env: dict | None = None, **popen_kw) -> subprocess.Popen:
    """Starts `cmd` with stdout and stderr piped (text). `env`: the whole environment (None:
    this process's), in which Python's output is made unbuffered: a test reads each line as it
    is printed."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        list(map(str, cmd)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, **popen_kw,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen], timeout_s: float) -> list[tuple[int, str, str]]:
    """[(returncode, stdout, stderr)] once every process has exited, within `timeout_s` in all;
    kills them all if not."""
    deadline = time.monotonic() + timeout_s
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append((p.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise
    return out


def wait_until(condition, what: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Polls `condition()` until it holds; fails the test after `timeout_s`, naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)


def reached_before_exit(
    proc: subprocess.Popen, condition, timeout_s: float = 120.0, poll_s: float = 0.01
) -> bool:
    """Polls `condition()` while `proc` runs: True once it holds, False if `proc` exits first.
    After `timeout_s`, kills `proc` and raises TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll_s)
    proc.kill()
    raise TimeoutError(f"condition not reached within {timeout_s} s")


def read_until(proc: subprocess.Popen, text: str, timeout_s: float = 120.0) -> list[str]:
    """Reads `proc`'s stdout line by line until a line holds `text`; returns the lines read.
    Fails the test, with `proc`'s stderr, if `proc` ends first; kills it after `timeout_s`."""
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return lines
    finally:
        timer.cancel()
    _, stderr = proc.communicate(timeout=60)
    raise AssertionError(f"{text!r} never printed (exit {proc.returncode}):\n{stderr[-3000:]}")


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that were free on localhost a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_env(**changes: str | None) -> dict[str, str]:
    """The environment for launch.sh: this interpreter, a 0.1 s poll, no GPUs named, then
    `changes` (None removes a variable)."""
    defaults = {"RESJAX_PYTHON": sys.executable, "RESJAX_LAUNCH_POLL_S": "0.1"}
    return environ(**{**defaults, "CUDA_VISIBLE_DEVICES": None, **changes})


def launch(*args, env: dict | None = None, timeout_s: float = 240):
    """Runs `./launch.sh ARGS` to its end (env: `launch_env()` unless given)."""
    return run(["bash", LAUNCH, *args], env=env or launch_env(), timeout_s=timeout_s)
