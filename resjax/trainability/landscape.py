"""Loss landscapes: a network's loss and error at points of a line or a plane in weight space
(Goodfellow et al. 2015; Li et al. 2018).

A landscape is a function `variables_at(operands, coords)` -> the network's variables at one
point (`plane` around trained weights, `interpolation` between two sets of weights), and an
evaluation of those variables on fixed examples with the run's own evaluation step
(`resjax.training.step.eval_sums`, BatchNorm in evaluation mode): at the origin the landscape
*is* the run's evaluation, bit for bit.

Points are spread over the devices of a mesh, one point per device per call (each device
evaluates its point on the whole batch; a batch of images is replicated, weights are never
vmapped: on XLA:CPU that becomes grouped convolutions and runs at half speed). The grid is kept
in a `.npz` that is rewritten as it fills, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resjax.training.step import Normalize, eval_sums

Tree = Any
VariablesAt = Callable[[Tree, jax.Array], Tree]  # (operands, coords [K]) -> variables
POINTS = "points"  # the mesh axis grid points are spread over


# --- where a point is ---


def plane(operands: Tree, coords: jax.Array) -> Tree:
    """Variables at w + Σ_k coords[k] · d_k; BatchNorm running statistics stay the run's own.

    operands: {'params': w, 'batch_stats': ..., 'directions': [d_1, ..., d_K]} (K = 1: a line
    through w; K = 2: Li et al.'s plane).
    """
    params = operands["params"]
    for k, d in enumerate(operands["directions"]):
        params = jax.tree.map(lambda w, dk, c=coords[k]: w + c * dk, params, d)
    return {"params": params, "batch_stats": operands["batch_stats"]}


def interpolation(operands: Tree, coords: jax.Array) -> Tree:
    """Variables at (1 - α) · start + α · end, α = coords[0] (Goodfellow et al. 2015).

    operands: {'start': variables, 'end': variables}. Parameters and BatchNorm running means
    move on the straight line; running variances move geometrically (log-linearly), which
    equals the line at both ends and stays positive beyond them (α < 0 or > 1), where a
    linearly extrapolated variance can cross zero and the network's output is then undefined.
    """
    alpha = coords[0]
    start, end = operands["start"], operands["end"]
    params = jax.tree.map(lambda a, b: a + alpha * (b - a), start["params"], end["params"])

    def stat(path, a, b):
        if path[-1].key == "var":
            return jnp.exp(jnp.log(a) + alpha * (jnp.log(b) - jnp.log(a)))
        return a + alpha * (b - a)

    stats = jax.tree_util.tree_map_with_path(stat, start["batch_stats"], end["batch_stats"])
    return {"params": params, "batch_stats": stats}


# --- evaluating points ---


def points_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over `devices` (default: every device of every process)."""
    return Mesh(np.array(devices if devices is not None else jax.devices()), (POINTS,))


def point_evaluator(
    apply_fn: Callable,
    variables_at: VariablesAt,
    mesh: Mesh,
    normalize_images: Normalize | None = None,
) -> Callable[[jax.Array, Tree, dict[str, jax.Array]], dict[str, jax.Array]]:
    """f(coords [D, K], operands, batch) -> eval_sums of point i on device i, each [D], where D
    is the mesh's size. Everything goes in replicated (so that every process can pass its own
    copy) and each device picks its row of `coords` by its index on the mesh; the sums come
    back replicated, readable on every process."""

    def one_device(coords, operands, batch):
        c = coords[jax.lax.axis_index(POINTS)]
        sums = eval_sums(apply_fn, variables_at(operands, c), batch, normalize_images)
        return jax.tree.map(lambda x: jax.lax.all_gather(x, POINTS), sums)

    # check_vma=False: the all_gather makes the sums the same on every device, which the
    # replication check cannot infer from axis_index-dependent inputs. No gradient is taken
    # inside, where turning the check off would matter (FIELD_NOTES, shard_map and pmean).
    mapped = jax.shard_map(
        one_device, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P(), check_vma=False
    )
    return jax.jit(mapped)


def replicate(tree: Tree, mesh: Mesh) -> Tree:
    """`tree` on every device of `mesh` (host arrays in; each process passes the same values)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


# --- the grid and its file ---


class GridMismatchError(ValueError):
    """A grid file exists for other weights, directions, examples or coordinates."""


def grid_coords(axes: Sequence[np.ndarray]) -> np.ndarray:
    """[M, K] coordinates of the grid spanned by `axes` (K of them), row-major: the point
    (axes[0][i], axes[1][j]) is row i * len(axes[1]) + j."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1).astype(np.float32)


def weights_digest(tree: Tree) -> str:
    """SHA-256 of every leaf's bytes, in tree order: names the weights a grid was drawn for."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def read_grid(path: str | Path) -> dict[str, Any]:
    """{'meta': dict, 'axes': [arrays], 'loss': [...], 'error': [...], 'wall_s': float} of a grid
    file; points not yet evaluated are NaN."""
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        axes = [f[f"axis{k}"] for k in range(len(f.files)) if f"axis{k}" in f.files]
        return {
            "meta": meta,
            "axes": axes,
            "loss": f["loss"],
            "error": f["error"],
            "wall_s": float(f["wall_s"]),
        }


def write_grid(path: str | Path, grid: dict[str, Any]) -> None:
    """Writes a grid atomically (a temporary file beside it, then a rename): an interrupted
    write leaves the previous version, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    axes = {f"axis{k}": a for k, a in enumerate(grid["axes"])}
    np.savez(
        buffer,
        meta=np.array(json.dumps(grid["meta"], sort_keys=True)),
        loss=grid["loss"],
        error=grid["error"],
        wall_s=np.array(grid["wall_s"]),
        **axes,
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _start_or_resume(path: Path | None, meta: dict[str, Any], axes: Sequence[np.ndarray]) -> dict:
    shape = tuple(len(a) for a in axes)
    if path is not None and path.exists():
        grid = read_grid(path)
        if grid["meta"] != json.loads(json.dumps(meta, sort_keys=True)):
            changed = sorted(
                k for k in set(meta) | set(grid["meta"]) if meta.get(k) != grid["meta"].get(k)
            )
            raise GridMismatchError(
                f"{path} holds a grid of other {', '.join(changed)}; resuming would mix two "
                "landscapes. Give another output folder, or delete the file to start over"
            )
        return grid
    return {
        "meta": meta,
        "axes": [np.asarray(a, np.float32) for a in axes],
        "loss": np.full(shape, np.nan, np.float32),
        "error": np.full(shape, np.nan, np.float32),
        "wall_s": 0.0,
    }


def evaluate_grid(
    evaluate_points: Callable,
    operands: Tree,
    batches: Sequence[dict[str, jax.Array]],
    axes: Sequence[np.ndarray],
    meta: dict[str, Any],
    *,
    devices: int,
    path: str | Path | None = None,
    save_every_s: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Loss and error at every point of the grid `axes`, `devices` points at a time.

    `evaluate_points` and `operands` come from `point_evaluator` and `replicate`; `batches`
    (already on the devices) are summed per point: loss is the mean cross-entropy, error the
    top-1 error, over every unmasked example. With `path`, a grid already there (same `meta`)
    is resumed, and the grid is rewritten at most every `save_every_s` seconds and at the end
    (by process 0 only). `on_progress(done, total)` is called after each group of points.
    Returns the grid as `read_grid` does.
    """
    path = Path(path) if path is not None else None
    grid = _start_or_resume(path, meta, axes)
    coords = grid_coords(grid["axes"])
    loss, error = grid["loss"].reshape(-1), grid["error"].reshape(-1)
    todo = np.flatnonzero(np.isnan(loss))
    if len(todo) == 0:  # finished earlier: nothing to evaluate, nothing to rewrite
        return grid
    started, last_save = time.perf_counter(), time.perf_counter()
    wall_before = grid["wall_s"]

    def save() -> None:
        grid["loss"], grid["error"] = (
            loss.reshape(grid["loss"].shape),
            error.reshape(grid["error"].shape),
        )
        grid["wall_s"] = wall_before + time.perf_counter() - started
        if path is not None and jax.process_index() == 0:
            write_grid(path, grid)

    for first in range(0, len(todo), devices):
        rows = todo[first : first + devices]
        # The last group may be short: pad with its first point and drop the copies.
        padded = np.concatenate([rows, np.full(devices - len(rows), rows[0])])
        chunk = jnp.asarray(coords[padded])
        totals = None
        for batch in batches:
            sums = evaluate_points(chunk, operands, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        totals = jax.tree.map(np.asarray, totals)
        n = len(rows)
        loss[rows] = totals["loss"][:n] / totals["count"][:n]
        error[rows] = 1.0 - totals["correct"][:n] / totals["count"][:n]
        if path is not None and time.perf_counter() - last_save >= save_every_s:
            save()
            last_save = time.perf_counter()
        if on_progress is not None:
            on_progress(int(np.sum(~np.isnan(loss))), loss.size)
    save()
    return grid
