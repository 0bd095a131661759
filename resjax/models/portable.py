"""The portable weights file: a network's variables plus what it takes to rebuild the network.

    save_params("resnet50.msgpack", variables, model_name="resnet50")
    p = load_params("resnet50.msgpack")          # a Portable
    logits = p.model().apply(p.variables, x, train=False)

One file, no Orbax and no TensorFlow: ``params`` and ``batch_stats`` plus metadata — the
registered model name, the ``get_model`` overrides, the resolved training config (a JSON
string, for the record), the resjax version and the file format version. The file is
flax.serialization msgpack, or ``.npz`` when the path ends so (readable by anything that
reads numpy; leaves are stored as ``params/stage1_block1/conv1/kernel`` and the metadata as the
JSON string ``__resjax__``).

Writes are atomic (a temporary file beside the target, then ``os.replace``), so a reader never
sees half a file, and an existing file with different contents is replaced only when asked.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization, traverse_util

from resjax import __version__
from resjax.models.registry import get_model
from resjax.models.resnet import ResNet

FORMAT = "resjax.portable"
FORMAT_VERSION = 1  # bump when the layout changes; readers refuse newer files
COLLECTIONS = ("params", "batch_stats")  # what inference needs; diagnostics etc. are not kept
_META_KEY = "__resjax__"  # the .npz entry holding the metadata


@dataclasses.dataclass(frozen=True)
class Portable:
    """A loaded weights file.

    Attributes:
      model_name: registered name, e.g. 'resnet50' (see resjax.models.list_models()).
      overrides: ResNet fields passed to get_model (e.g. {'num_classes': 100}).
      config: the resolved training config as a dict, or None (a record; nothing reads it).
      variables: {'params': ..., 'batch_stats': ...} of numpy arrays, ready for model.apply.
      resjax_version: the version of resjax that wrote the file.
    """

    model_name: str
    overrides: dict[str, Any]
    config: dict[str, Any] | None
    variables: dict[str, Any]
    resjax_version: str = __version__

    def model(self) -> ResNet:
        """The network the variables belong to: get_model(model_name, **overrides)."""
        return get_model(self.model_name, **self.overrides)


def save_params(
    path: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    model_name: str,
    model_overrides: Mapping[str, Any] | None = None,
    config: Any = None,
    overwrite: bool = False,
) -> Path:
    """Writes `variables` (params and batch_stats) and the model's description to `path`.

    `path` ending in '.npz' writes numpy's format, anything else msgpack. `config` is a dict
    or anything with .to_dict() (a ConfigDict); values JSON cannot hold are stored as strings.
    `model_overrides` must be JSON-representable (numbers, strings, bools, None, lists,
    tuples, dtypes) so that load_params rebuilds exactly the same network. Rewriting a file
    with the same contents is allowed; a file with different contents is replaced only with
    `overwrite=True`. Returns the path written.
    """
    path = Path(path)
    if "params" not in variables:
        raise ValueError(
            f"variables must hold a 'params' collection (and usually 'batch_stats'); got "
            f"collections {sorted(variables)}"
        )
    get_model(model_name, **dict(model_overrides or {}))  # fail now, not when someone loads it
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "resjax_version": __version__,
        "model_name": model_name,
        "overrides": _overrides_json(model_overrides or {}),
        "config": _config_json(config),
    }
    state = {c: _to_numpy(variables[c]) for c in COLLECTIONS if c in variables}
    data = _encode_npz(meta, state) if path.suffix == ".npz" else _encode_msgpack(meta, state)
    if path.exists() and not overwrite and path.read_bytes() != data:
        raise FileExistsError(
            f"{path} exists with different contents; pass overwrite=True (--overwrite) to "
            "replace it, or choose another path"
        )
    _write_atomically(path, data)
    return path


def load_params(path: str | os.PathLike) -> Portable:
    """Reads a file written by save_params. Corrupt or foreign files raise a one-line ValueError."""
    path = Path(path)
    data = path.read_bytes()  # a missing file raises FileNotFoundError, which says so already
    try:
        if path.suffix == ".npz":
            meta, state = _decode_npz(data)
        else:
            meta, state = _decode_msgpack(data)
        if meta.get("format") != FORMAT:
            raise ValueError(f"no {FORMAT!r} marker")
        overrides = json.loads(meta["overrides"])
        config = json.loads(meta["config"]) if meta["config"] is not None else None
        model_name = str(meta["model_name"])
        version = int(meta["format_version"])
    except Exception as e:  # msgpack, zipfile and json each raise their own kinds
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise ValueError(
            f"{path} is not a readable resjax weights file (corrupt or truncated?): {reason}"
        ) from None
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}; this resjax ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade resjax"
        )
    return Portable(
        model_name=model_name,
        overrides={k: _from_json(v) for k, v in overrides.items()},
        config=config,
        variables=state,
        resjax_version=str(meta["resjax_version"]),
    )


def _to_numpy(tree: Any) -> dict[str, Any]:
    """A plain nested dict of numpy arrays (FrozenDicts and device arrays accepted)."""
    return jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(jax.device_get(tree)))


def _overrides_json(overrides: Mapping[str, Any]) -> str:
    def default(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.dtype) or (isinstance(value, type) and hasattr(value, "dtype")):
            return np.dtype(value).name  # np.float32, jnp.float32, jnp.bfloat16 alike
        raise TypeError(
            f"model override {value!r} ({type(value).__name__}) cannot be stored; allowed: "
            "numbers, strings, bools, None, lists/tuples of these, dtypes"
        )

    return json.dumps(dict(overrides), sort_keys=True, default=default)


def _config_json(config: Any) -> str | None:
    if config is None:
        return None
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict, without importing it here
        config = config.to_dict()
    # The config is a record for people; a value JSON cannot hold (a function, a dtype) is
    # kept as its repr rather than refusing to save the weights.
    return json.dumps(config, sort_keys=True, default=repr)


def _from_json(value: Any) -> Any:
    # JSON has no tuples; ResNet fields such as stage_sizes and lesion are tuples, and
    # flax modules must stay hashable.
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def _encode_msgpack(meta: dict[str, Any], state: dict[str, Any]) -> bytes:
    return serialization.msgpack_serialize({"meta": meta, "variables": state})


def _decode_msgpack(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    tree = serialization.msgpack_restore(data)
    return tree["meta"], tree["variables"]


def _encode_npz(meta: dict[str, Any], state: dict[str, Any]) -> bytes:
    flat = traverse_util.flatten_dict(state, sep="/")
    if _META_KEY in flat:
        raise ValueError(f"a variable may not be named {_META_KEY!r}")
    buffer = io.BytesIO()
    np.savez(buffer, **{_META_KEY: np.array(json.dumps(meta))}, **flat)
    return buffer.getvalue()


def _decode_npz(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays.pop(_META_KEY)))
    return meta, traverse_util.unflatten_dict(arrays, sep="/")


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes beside the target and renames, so readers see the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
