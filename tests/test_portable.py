"""resjax.models.portable: save/load round trip, metadata, corrupt files, atomic writes."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resjax.models import get_model, init_shapes, load_params, portable, save_params

OVERRIDES = {"num_classes": 7, "lesion": ("stage2_block1",), "dtype": "float32"}


@pytest.fixture(scope="module")
def cifar_net():
    """resnet8, random values in every variable (running statistics included), an input batch."""
    model = get_model("resnet8", **OVERRIDES)
    rng = np.random.default_rng(0)
    # Filled from the shapes, not model.init: no compile, and no variable left at its init value.
    shapes = init_shapes(model)
    variables = jax.tree_util.tree_map(
        lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), dict(shapes)
    )
    return model, variables, rng.normal(size=(2, 32, 32, 3)).astype(np.float32)


class _ConfigDictLike:
    """Stands in for ml_collections.ConfigDict, which resjax.models must not import."""

    def to_dict(self):
        return {"lr": 0.1, "stages": (1, 1, 1), "schedule": np.cos}


@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
def test_round_trip_rebuilds_the_same_network(cifar_net, tmp_path, suffix):
    model, variables, x = cifar_net
    path = save_params(
        tmp_path / f"net{suffix}",
        variables,
        model_name="resnet8",
        model_overrides=OVERRIDES,
        config=_ConfigDictLike(),
    )
    loaded = load_params(path)
    assert loaded.model_name == "resnet8"
    assert loaded.overrides == OVERRIDES  # tuples come back as tuples
    assert loaded.model() == model
    assert loaded.config == {"lr": 0.1, "stages": [1, 1, 1], "schedule": repr(np.cos)}
    assert loaded.resjax_version == portable.__version__
    assert set(loaded.variables) == {"params", "batch_stats"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.variables, dict(variables))
    np.testing.assert_array_equal(
        loaded.model().apply(loaded.variables, x, train=False),
        model.apply(variables, x, train=False),
    )


def test_dtype_overrides_are_stored_by_name(cifar_net, tmp_path):
    _, variables, _ = cifar_net
    path = save_params(
        tmp_path / "w.msgpack",
        variables,
        model_name="resnet8",
        model_overrides={"dtype": jnp.bfloat16},
    )
    assert load_params(path).overrides == {"dtype": "bfloat16"}


def test_only_params_and_batch_stats_are_kept(cifar_net, tmp_path):
    _, variables, _ = cifar_net
    extra = {**variables, "diagnostics": {"x": np.zeros(3)}}
    path = save_params(
        tmp_path / "w.msgpack", extra, model_name="resnet8", model_overrides=OVERRIDES
    )
    assert set(load_params(path).variables) == {"params", "batch_stats"}


@pytest.mark.parametrize("suffix", [".msgpack", ".npz"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_gives_a_one_line_error_naming_it(cifar_net, tmp_path, suffix, damage):
    _, variables, _ = cifar_net
    path = save_params(tmp_path / f"w{suffix}", variables, model_name="resnet8")
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": b"\x93not a file" * 50, "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(ValueError, match="not a readable resjax weights file") as info:
        load_params(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_foreign_msgpack_file_is_refused(tmp_path):
    from flax import serialization

    path = tmp_path / "other.msgpack"
    path.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(2)}}))
    with pytest.raises(ValueError, match="other.msgpack is not a readable resjax weights file"):
        load_params(path)


def test_newer_format_versions_are_refused(cifar_net, tmp_path, monkeypatch):
    _, variables, _ = cifar_net
    monkeypatch.setattr(portable, "FORMAT_VERSION", portable.FORMAT_VERSION + 1)
    path = save_params(tmp_path / "w.msgpack", variables, model_name="resnet8")
    monkeypatch.undo()
    with pytest.raises(ValueError, match="format version 2; .* reads up to 1: upgrade resjax"):
        load_params(path)


def test_writes_are_atomic_and_leave_no_temporary_files(cifar_net, tmp_path, monkeypatch):
    _, variables, _ = cifar_net
    path = save_params(tmp_path / "w.msgpack", variables, model_name="resnet8")
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_params(
            path, variables, model_name="resnet8", model_overrides=OVERRIDES, overwrite=True
        )
    assert path.read_bytes() == before  # the old file survives a failed write
    assert os.listdir(tmp_path) == ["w.msgpack"]  # and no temporary file is left behind


def test_a_different_file_is_replaced_only_when_asked(cifar_net, tmp_path):
    _, variables, _ = cifar_net
    path = save_params(tmp_path / "w.msgpack", variables, model_name="resnet8")
    save_params(path, variables, model_name="resnet8")  # same contents: allowed
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_params(path, variables, model_name="resnet8", model_overrides=OVERRIDES)
    save_params(path, variables, model_name="resnet8", model_overrides=OVERRIDES, overwrite=True)
    assert load_params(path).overrides == OVERRIDES
    assert os.listdir(tmp_path) == ["w.msgpack"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"model_name": "resnet9"}, ValueError, "CIFAR ResNet depth must be 6n\\+2"),
        ({"model_name": "resnet8", "model_overrides": {"widht": 2}}, ValueError, "unknown model"),
        (
            {"model_name": "resnet8", "model_overrides": {"num_classes": object()}},
            TypeError,
            "allowed: numbers, strings",
        ),
    ],
)
def test_bad_descriptions_are_refused_at_save_time(cifar_net, tmp_path, kwargs, error, message):
    _, variables, _ = cifar_net
    with pytest.raises(error, match=message):
        save_params(tmp_path / "w.msgpack", variables, **kwargs)
    assert not os.listdir(tmp_path)


def test_variables_without_params_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must hold a 'params' collection"):
        save_params(tmp_path / "w.msgpack", {"batch_stats": {}}, model_name="resnet8")
