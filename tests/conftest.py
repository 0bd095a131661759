"""Every test runs on 4 fake CPU devices, set before JAX initialises: multi-device code paths
(sharding, pmap, cross-device BatchNorm) are tested on any machine.

The whole session shares one persistent XLA cache, in this process and in every process it
starts (the environment variables): the tests compile the same few tiny networks' steps again
and again, and a cached executable is the one XLA would build, so results are bit for bit the
same. RESJAX_TEST_XLA_CACHE=0 turns it off.

The README's command runs the tests in two worker processes (pytest-xdist, one module per
worker at a time, so a module's fixtures are made once). The workers share the XLA cache and the
prepared Fashion-MNIST: JAX falls back to compiling when it reads an entry another process is
still writing, and resjax prepares a data dir under a lock that other processes wait for.

Every end-to-end test trains one tiny run (`tiny_run`, below), changing only what it tests:
steps, cadence, model, a base config. Starting and watching processes: tests/processes.py."""

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "4"

# As the commands do (importing resjax sets nothing): the tests' own JAX and the processes they
# start compute with resjax's XLA:CPU defaults, so in-process and command runs agree bitwise.
from resjax import xla_flags  # noqa: E402

xla_flags.apply_defaults()

import jax  # noqa: E402  (after the environment is set)
import ml_collections  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402
from processes import ROOT  # noqa: E402

XLA_CACHE_VARIABLES = {  # read by JAX in the processes that tests start
    "JAX_COMPILATION_CACHE_DIR": None,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
}


@pytest.fixture(scope="session", autouse=True)
def xla_cache(tmp_path_factory):
    """Sets the session's XLA cache folder; yields it (None when turned off)."""
    if os.environ.get("RESJAX_TEST_XLA_CACHE", "1") == "0":
        yield None
        return
    folder = str(shared_folder(tmp_path_factory, "xla_cache"))
    saved = {k: os.environ.get(k) for k in XLA_CACHE_VARIABLES}
    min_compile_secs = jax.config.jax_persistent_cache_min_compile_time_secs
    os.environ.update({k: v or folder for k, v in XLA_CACHE_VARIABLES.items()})
    use_xla_cache(folder)
    yield folder
    use_xla_cache(None, min_compile_secs)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def shared_folder(tmp_path_factory, name):
    """A folder every worker of this session shares (this session's own without workers)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return tmp_path_factory.mktemp(name)
    folder = tmp_path_factory.getbasetemp().parent / name  # the workers' common base
    folder.mkdir(exist_ok=True)
    return folder


def use_xla_cache(folder, min_compile_secs=0.0):
    """Points this process's JAX at `folder` (None: no cache), caching every compilation that
    takes at least `min_compile_secs`."""
    compilation_cache.reset_cache()  # JAX keeps the folder it opened until told to forget it
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A TFDS data dir holding the real Fashion-MNIST, prepared once per session (~5 s) from
    Debian's `dataset-fashion-mnist` package (.ci/run installs it)."""
    from resjax import data
    from resjax.config import base_config

    data_dir = shared_folder(tmp_path_factory, "tfds")
    config = base_config().data
    config.dir = str(data_dir)
    data.load_splits(config)
    return data_dir


# --- the tiny run: what every end-to-end test trains ---

TINY_RUN = {  # a ResNet-8 of width 4 on 512 Fashion-MNIST images: seconds on 4 fake devices
    "model.name": "resnet8",
    "model.overrides.widths": (4, 4, 8),
    "model.overrides.stem_width": 4,
    "data.train_split": "train[:512]",  # its last data.val_examples are the validation split
    "data.test_split": "test[:64]",
    "data.val_examples": 64,
    "batch_size": 32,
    "eval_batch_size": 32,
    "total_steps": 4,
    "log_every_steps": 2,
    "eval_every_steps": 2,
}
# The shipped Fashion-MNIST recipe (cosine schedule, random erasing, weight decay 5e-4) as a
# tiny run's base, where a test means the command a user types.
FMNIST_RECIPE = "configs/fashion_mnist_resnet.py:resnet8"


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A tiny run: the config `base` names (FILE[:ARG] relative to the repository, as
    --config takes it; None: resjax.config.base_config()) with `changes` (dotted config key ->
    value) set on it. One run, as a ConfigDict, as `python -m resjax.train` flags, or as a
    config file of its own."""

    changes: dict[str, Any]
    base: str | None = None

    def config(self) -> ml_collections.ConfigDict:
        """The run's config, locked (as a config file returns it)."""
        if self.base is None:
            from resjax.config import base_config, lock

            config = lock(base_config())
        else:
            path, _, arg = self.base.partition(":")
            spec = importlib.util.spec_from_file_location("_tiny_run_base", ROOT / path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            config = module.get_config(arg) if arg else module.get_config()
        for key, value in self.changes.items():
            *parents, leaf = key.split(".")
            node = config
            for part in parents:
                node = node[part]
            node[leaf] = value
        return config

    def flags(self) -> list[str]:
        """`--config=BASE` (when the base is a file), then `--config.KEY=VALUE` per change."""
        base = [f"--config={self.base}"] if self.base else []
        return base + [f"--config.{key}={value}" for key, value in self.changes.items()]

    def command(self, workdir, *extra: str) -> list[str]:
        """`python -m resjax.train` training this run in `workdir` (a file base only), then
        `extra` flags."""
        if self.base is None:
            raise ValueError("base_config() has no config file: write_config_file() first")
        base, *changes = self.flags()
        train = [sys.executable, "-m", "resjax.train"]
        return [*train, base, f"--workdir={workdir}", *changes, *extra]

    def write_config_file(self, path, points=None, sweeps=None) -> Path:
        """Writes this run (base_config() bases only) as a config file: `get_config(ARG)` is the
        run with `points[ARG]`'s changes on top (none for another ARG), `sweep(ARG)` is
        `sweeps.get(ARG)` (a list of point ARGs, or None: one run). Returns `path`."""
        if self.base is not None:
            raise ValueError(f"only a base_config() run is written as a file; base: {self.base}")
        path = Path(path)
        path.write_text(
            CONFIG_FILE.format(
                name=path.name, run=self.changes, points=points or {}, sweeps=sweeps or {}
            )
        )
        return path


CONFIG_FILE = '''\
"""Tiny runs for resjax's tests (tests/conftest.py's TinyRun.write_config_file).

    python -m resjax.train --config={name}[:POINT] --workdir=DIR
"""
from resjax.config import base_config, lock

RUN = {run!r}
POINTS = {points!r}
SWEEPS = {sweeps!r}


def get_config(arg=None):
    c = base_config()
    for key, value in {{**RUN, **POINTS.get(arg, {{}})}}.items():
        *parents, leaf = key.split(".")
        node = c
        for part in parents:
            node = node[part]
        node[leaf] = value
    return lock(c)


def sweep(arg=None):
    return SWEEPS.get(arg or None)
'''


def tiny_run(data_dir=None, *, base: str | None = None, **changes: Any) -> TinyRun:
    """The tiny run (TINY_RUN on `base`, see TinyRun) reading Fashion-MNIST from `data_dir`
    (None: the config's own), with `changes`: what a test varies, by config key
    (`total_steps=60, checkpoint_every_steps=10`; dotted keys by `**{"optim.lr": 0.01}`)."""
    where = {} if data_dir is None else {"data.dir": str(data_dir)}
    return TinyRun({**TINY_RUN, **where, **changes}, base)


def trained_variables(workdir) -> dict:
    """The variables (params, batch_stats) of a run's latest checkpoint, on the host."""
    from resjax import weights

    return weights.load_variables(workdir)[1]
