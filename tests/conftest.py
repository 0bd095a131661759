"""Every test runs on 4 fake CPU devices, set before JAX initialises: multi-device code paths
(sharding, pmap, cross-device BatchNorm) are tested on any machine.

The whole session shares one persistent XLA cache, in this process and in every process it
starts (the environment variables): the tests compile the same few tiny networks' steps again
and again, and a cached executable is the one XLA would build, so results are bit for bit the
same. RESJAX_TEST_XLA_CACHE=0 turns it off.

The README's command runs the tests in two worker processes (pytest-xdist, one module per
worker at a time, so a module's fixtures are made once). The workers share the XLA cache and the
prepared Fashion-MNIST: JAX falls back to compiling when it reads an entry another process is
still writing, and resjax prepares a data dir under a lock that other processes wait for."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "4"

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache  # noqa: E402

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
