"""Every test runs on 4 fake CPU devices, set before JAX initialises: multi-device code paths
(sharding, pmap, cross-device BatchNorm) are tested on any machine."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "4"

import pytest  # noqa: E402  (after the environment is set)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
    """A TFDS data dir holding the real Fashion-MNIST, prepared once per session (~5 s) from
    Debian's `dataset-fashion-mnist` package (.ci/run installs it)."""
    from resjax import data
    from resjax.config import base_config

    data_dir = tmp_path_factory.mktemp("tfds")
    config = base_config().data
    config.dir = str(data_dir)
    data.load_splits(config)
    return data_dir
