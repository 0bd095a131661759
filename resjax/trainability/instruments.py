"""The three instruments as whole jobs: read runs (or build nets at initialisation), measure,
and write JSON + CSV + PNG into an output folder. `python -m resjax.trainability` is these
functions behind flags; everything they need is an argument.

Each output says what it used: which examples (dataset, split, indices), how many Lanczos steps,
probe vectors and grid points, the direction seed, the weights' SHA-256 and the wall time.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resjax import data
from resjax.config import model_overrides
from resjax.models import get_model
from resjax.sweeps.points import load_config, split_config_spec
from resjax.trainability import curvature as curv
from resjax.trainability import directions, plots
from resjax.trainability import gradient_correlation as gc
from resjax.trainability import landscape as ls
from resjax.trainability.runs import Run, initial_variables, kept_steps, load_run, training_examples
from resjax.training.step import create_train_state

Progress = Callable[[str], None]
KINDS = ("plane", "line", "interpolation")
DEFAULT_RANGE = {"plane": (-1.0, 1.0), "line": (-1.0, 1.0), "interpolation": (-0.5, 1.5)}
DIMENSIONS = {"plane": 2, "line": 1, "interpolation": 1}


def slug(label: str) -> str:
    """'ResNet-56' -> 'resnet56': a file-name part."""
    return re.sub(r"[^a-z0-9]+", "", label.lower())


def _unique_slugs(runs: Sequence[Run]) -> list[str]:
    names = [slug(r.label) for r in runs]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)


# --- loss landscape ---


def landscape(
    sources: Sequence[str],
    out: Path,
    *,
    kind: str = "plane",
    examples: int = 1000,
    batch_size: int = 1000,
    resolution: int = 21,
    span: tuple[float, float] | None = None,
    seed: int = 0,
    include_1d: bool = False,
    data_dir: str | None = None,
    save_every_s: float = 30.0,
    mesh: jax.sharding.Mesh | None = None,
    progress: Progress = lambda line: None,
) -> dict[str, Any]:
    """The `kind` landscape ('plane': two random filter-normalised directions around the final
    weights; 'line': one; 'interpolation': the straight line from the run's step-0 weights to
    its final ones) of each of `sources` (weights files or workdirs), `resolution` points per
    axis over `span`, on the first `examples` training examples. Writes per run
    `<net>_<kind>.npz` (resumable), then `<kind>.json`, `<kind>.csv` and the figures
    (`<kind>.png`; for a plane also `<kind>_3d.png`), all runs on the same axes and levels."""
    if kind not in KINDS:
        raise ValueError(f"landscape kind {kind!r}; choose one of {', '.join(KINDS)}")
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2 points per axis; got {resolution}")
    low, high = span or DEFAULT_RANGE[kind]
    if not low < high:
        raise ValueError(f"range must go from low to high; got {low},{high}")
    mesh = mesh or ls.points_mesh()
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(s) for s in sources]
    names = _unique_slugs(runs)
    axis = np.linspace(low, high, resolution, dtype=np.float32)
    axes = [axis] * DIMENSIONS[kind]
    results, grids = [], []
    for run, name in zip(runs, names, strict=False):
        ex = training_examples(run, examples, batch_size, data_dir)
        variables = jax.tree.map(jnp.asarray, run.weights.variables)
        if kind == "interpolation":
            start = initial_variables(run, ex.splits.image_shape)
            # At step 0 the running statistics are still their initial (0, 1): evaluation-mode
            # BN would then not normalise at all, and a deep residual stream's sum would blow
            # the loss up. Use the statistics training-mode BN would use on these examples.
            images = np.concatenate(
                [ex.splits.normalize_images(b["image"][b["mask"] > 0]) for b in ex.batches]
            )
            start["batch_stats"] = gc.calibrated_batch_stats(
                run.weights.model(), start, jnp.asarray(images)
            )
            operands = {"start": start, "end": variables}
            variables_at, how = (
                ls.interpolation,
                {
                    "start": "step 0 (the run's seed), BatchNorm statistics of those weights "
                    "on the examples",
                    "bn_statistics": "means linear, variances geometric between step 0 and the end",
                },
            )
        else:
            dirs = directions.random_directions(
                jax.random.key(seed), variables["params"], DIMENSIONS[kind], include_1d=include_1d
            )
            operands = {**variables, "directions": dirs}
            variables_at, how = (
                ls.plane,
                {
                    "directions": "Gaussian, filter-normalised (Li et al. 2018)",
                    "direction_seed": seed,
                    "biases_and_bn": "the weights themselves" if include_1d else "zero direction",
                    "bn_statistics": "the run's running statistics, unchanged",
                },
            )
        meta = {
            "kind": kind,
            "model": run.weights.model_name,
            "weights_sha256": ls.weights_digest(run.weights.variables),
            "examples": ex.description,
            "axes": [[float(low), float(high), resolution]] * len(axes),
            **how,
        }
        evaluate = ls.point_evaluator(
            run.weights.model().apply, variables_at, mesh, ex.splits.normalize_images
        )
        path = out / f"{name}_{kind}.npz"
        progress(
            f"{run.label}: {kind} {'x'.join(str(len(a)) for a in axes)} on {ex.count:,} "
            f"examples, {mesh.size} point(s) at a time -> {path}"
        )
        last = [time.perf_counter()]

        def report(done, total, label=run.label, last=last):
            if time.perf_counter() - last[0] > 30 or done == total:
                progress(f"{label}: {done}/{total} points")
                last[0] = time.perf_counter()

        grid = ls.evaluate_grid(
            evaluate,
            ls.replicate(operands, mesh),
            [ls.replicate(b, mesh) for b in ex.batches],
            axes,
            meta,
            devices=mesh.size,
            path=path,
            save_every_s=save_every_s,
            on_progress=report,
        )
        grids.append({"label": run.label, **grid})
        results.append(_landscape_summary(run, name, grid, path))
    summary = {"kind": kind, "runs": results}
    if jax.process_index() == 0:  # every process holds the same grids; one writes them
        _write_json(out / f"{kind}.json", summary)
        _write_csv(out / f"{kind}.csv", [row for g in grids for row in _grid_rows(g)])
        _draw_landscape(kind, grids, out)
    return summary


def _landscape_summary(run: Run, name: str, grid: dict[str, Any], path: Path) -> dict[str, Any]:
    loss, error, axes = grid["loss"], grid["error"], grid["axes"]
    finite = np.isfinite(loss)
    summary = {
        "label": run.label,
        "source": run.source,
        "step": run.step,
        "file": path.name,
        "points": int(loss.size),
        "points_done": int(np.sum(finite)),
        "wall_s": round(grid["wall_s"], 1),
        "loss_min": float(np.nanmin(loss)) if finite.any() else None,
        "loss_max": float(np.nanmax(loss)) if finite.any() else None,
        **{k: grid["meta"][k] for k in ("examples", "weights_sha256")},
    }
    origin = tuple(int(np.argmin(np.abs(a))) for a in axes)
    summary["loss_at_origin"], summary["error_at_origin"] = (
        float(loss[origin]),
        float(error[origin]),
    )
    if grid["meta"]["kind"] == "interpolation":
        end = int(np.argmin(np.abs(axes[0] - 1.0)))
        summary["loss_at_end"], summary["error_at_end"] = float(loss[end]), float(error[end])
        inside = (axes[0] >= 0) & (axes[0] <= 1)
        line = loss[inside]
        # How far the loss rises above the straight chord between its two ends (0 for a convex
        # curve), and whether it falls all the way (Goodfellow et al. 2015 found that it did,
        # without bumps, on the init -> final line of every net they studied).
        chord = np.linspace(line[0], line[-1], len(line))
        summary["max_above_chord"] = float(np.max(line - chord))
        summary["monotone_decreasing"] = bool(np.all(np.diff(line) <= 0))
    else:
        radius = np.sqrt(sum(g**2 for g in np.meshgrid(*axes, indexing="ij")))
        for r in (0.25, 0.5, 1.0):
            ring = np.abs(radius - r) <= (axes[0][1] - axes[0][0]) / 2 + 1e-6
            if ring.any():
                summary[f"loss_at_radius_{r}"] = float(np.nanmean(loss[ring]))
        if len(axes) == 2:
            summary["nonconvex_fraction"] = _nonconvex_fraction(loss)
    return summary


def _nonconvex_fraction(z: np.ndarray) -> float | None:
    """Share of interior grid points where the surface's finite-difference 2x2 Hessian has a
    negative eigenvalue (Li et al.'s |λmin/λmax| maps, as one number). Of the loss itself:
    the logarithm of a convex bowl is not convex."""
    if min(z.shape) < 3 or not np.all(np.isfinite(z)):
        return None
    zxx = z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]
    zyy = z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]
    zxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / 4
    lam_min = (zxx + zyy) / 2 - np.sqrt(((zxx - zyy) / 2) ** 2 + zxy**2)
    return float(np.mean(lam_min < 0))


def _grid_rows(grid: dict[str, Any]) -> list[dict[str, Any]]:
    coords = ls.grid_coords(grid["axes"])
    names = ("x", "y")[: coords.shape[1]]
    return [
        {
            "net": grid["label"],
            **{n: round(float(c), 6) for n, c in zip(names, row, strict=False)},
            "loss": float(loss),
            "error": float(e),
        }
        for row, loss, e in zip(coords, grid["loss"].ravel(), grid["error"].ravel(), strict=False)
    ]


def _draw_landscape(kind: str, grids: Sequence[dict[str, Any]], out: Path) -> None:
    if kind == "plane":
        plots.plot_contours(grids, out / "plane.png")
        plots.plot_surfaces(grids, out / "plane_3d.png")
    else:
        xlabel = (
            "α: (1-α)·step 0 + α·final weights"
            if kind == "interpolation"
            else "distance along a random direction (filter norms)"
        )
        curves = [
            {"label": g["label"], "x": g["axes"][0], "loss": g["loss"], "error": g["error"]}
            for g in grids
        ]
        plots.plot_lines(curves, out / f"{kind}.png", xlabel)


def redraw_landscape(out: Path, kind: str, labels: dict[str, str] | None = None) -> None:
    """Draws `<kind>.png` again from the grid files in `out` (nothing is evaluated)."""
    grids = []
    for path in sorted(out.glob(f"*_{kind}.npz")):
        grid = ls.read_grid(path)
        grids.append({"label": (labels or {}).get(path.stem, path.stem), **grid})
    _draw_landscape(kind, grids, out)


# --- curvature ---


def curvature(
    sources: Sequence[str],
    out: Path,
    *,
    examples: int = 1000,
    batch_size: int = 500,
    top_k: int = 5,
    lanczos_steps: int = 30,
    trace_probes: int = 30,
    slq_probes: int = 2,
    slq_steps: int = 30,
    seed: int = 0,
    every_step: bool = False,
    steps: Sequence[int] | None = None,
    data_dir: str | None = None,
    progress: Progress = lambda line: None,
) -> dict[str, Any]:
    """Top-k Hessian eigenvalues (Lanczos), trace (Hutchinson) and spectral density (SLQ) of
    the mean training loss on the first `examples` training examples, BatchNorm in evaluation
    mode, for each of `sources` (its final weights; with `every_step` every kept checkpoint of
    a workdir, with `steps` those of its kept checkpoints). Writes `curvature.json` after every estimate (a rerun skips the estimates
    already there, made with the same settings), then `curvature.csv` and the figures."""
    for name, value in (
        ("examples", examples),
        ("top-k", top_k),
        ("lanczos steps", lanczos_steps),
        ("trace probes", trace_probes),
        ("slq probes", slq_probes),
        ("slq steps", slq_steps),
    ):
        if value < (0 if name in ("examples", "slq probes") else 1):
            raise ValueError(f"{name} must be positive; got {value}")
    if top_k > lanczos_steps:
        raise ValueError(f"top-k ({top_k}) cannot exceed the Lanczos steps ({lanczos_steps})")
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "examples": examples,
        "top_k": top_k,
        "lanczos_steps": lanczos_steps,
        "trace_probes": trace_probes,
        "slq_probes": slq_probes,
        "slq_steps": slq_steps,
        "seed": seed,
    }
    json_path = out / "curvature.json"
    done = _read_estimates(json_path)
    # Estimates made with other settings stay in the file, but are neither reused nor drawn.
    others = [e for e in done if e["settings"] != settings]
    estimates = [e for e in done if e["settings"] == settings]
    models: dict[str, Any] = {}
    for source in sources:
        chosen: list[int | None] = [None]
        if every_step or steps:
            if not Path(source).is_dir():
                raise ValueError(f"choosing steps needs a run's workdir; {source} is a file")
            kept = kept_steps(source)
            chosen = kept if every_step else [s for s in steps if s in kept]
        for step in chosen:
            if any(
                e["source"] == source and e["step"] == step for e in estimates if step is not None
            ):
                continue
            run = load_run(source, step=step)
            if any(
                e["source"] == source
                and e["step"] == run.step
                and e["weights_sha256"] == ls.weights_digest(run.weights.variables)
                for e in estimates
            ):
                continue
            progress(f"{run.label} step {run.step}: curvature on {examples or 'all'} examples")
            # One model object per run: its `apply` keys the compiled Hessian-vector product.
            model = models.setdefault(source, run.weights.model())
            estimate = curvature_of(run, settings, batch_size, data_dir, model)
            estimates.append(estimate)
            progress(
                f"{run.label} step {run.step}: top eigenvalue "
                f"{estimate['lanczos']['eigenvalues'][0]:.4g}, trace "
                f"{estimate['hutchinson']['trace']:.4g} ({estimate['wall_s']:.0f} s)"
            )
            _write_estimates(json_path, others + estimates)
    _write_estimates(json_path, others + estimates)
    rows = curvature_rows(estimates)
    _write_csv(out / "curvature.csv", rows)
    draw_curvature(estimates, out)
    return {"estimates": estimates}


def _read_estimates(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["estimates"] if path.exists() else []


def _estimate_key(e: dict[str, Any]) -> str:
    return json.dumps([e["source"], e["step"], e["weights_sha256"], e["settings"]], sort_keys=True)


def _write_estimates(path: Path, estimates: list[dict[str, Any]]) -> None:
    """Writes `estimates` and keeps those another process wrote into the same file meanwhile
    (two commands filling one folder, e.g. steps of one run and final weights of others)."""
    mine = {_estimate_key(e) for e in estimates}
    theirs = [e for e in _read_estimates(path) if _estimate_key(e) not in mine]
    _write_json(path, {"estimates": estimates + theirs})


def curvature_of(
    run: Run,
    settings: dict[str, Any],
    batch_size: int,
    data_dir: str | None,
    model: Any = None,
) -> dict[str, Any]:
    """One run's curvature estimate, as `curvature` records it (`model`: the run's network,
    passed in to reuse its compiled products across checkpoints)."""
    started = time.perf_counter()
    ex = training_examples(run, settings["examples"], batch_size, data_dir)
    variables = run.weights.variables
    model = model or run.weights.model()
    matvec, n = curv.network_hvp(
        model.apply,
        jax.tree.map(jnp.asarray, variables["params"]),
        jax.tree.map(jnp.asarray, variables["batch_stats"]),
        [jax.tree.map(jnp.asarray, b) for b in ex.batches],
        ex.splits.normalize_images,
    )
    k1, k2, k3 = jax.random.split(jax.random.key(settings["seed"]), 3)
    top = curv.top_eigenvalues(matvec, n, settings["top_k"], settings["lanczos_steps"], k1)
    trace = curv.hutchinson_trace(matvec, n, settings["trace_probes"], k2)
    slq = (
        curv.spectral_density(matvec, n, settings["slq_steps"], settings["slq_probes"], k3)
        if settings["slq_probes"]
        else None
    )
    return {
        "label": run.label,
        "depth": model.depth,
        "residual": bool(model.residual),
        "source": run.source,
        "step": run.step,
        "parameters": n,
        "weights_sha256": ls.weights_digest(variables),
        "examples": ex.description,
        "settings": settings,
        "loss": "mean cross-entropy, BatchNorm in evaluation mode (running statistics)",
        "lanczos": top,
        "hutchinson": trace,
        "slq": slq,
        "hvps": top["hvps"] + trace["hvps"] + (slq["hvps"] if slq else 0),
        "wall_s": round(time.perf_counter() - started, 1),
    }


def curvature_rows(estimates: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row per estimate: the numbers, and what they used."""
    return [
        {
            "net": e["label"],
            "depth": e["depth"],
            "residual": e["residual"],
            "step": e["step"],
            "top_eigenvalue": e["lanczos"]["eigenvalues"][0],
            "top_residual": e["lanczos"]["residuals"][0],
            "eigenvalues": " ".join(f"{v:.6g}" for v in e["lanczos"]["eigenvalues"]),
            "trace": e["hutchinson"]["trace"],
            "trace_stderr": e["hutchinson"]["stderr"],
            "slq_trace": e["slq"]["trace"] if e["slq"] else None,
            "examples": e["examples"]["count"],
            "lanczos_steps": e["lanczos"]["lanczos_steps"],
            "trace_probes": e["hutchinson"]["probes"],
            "slq_probes": e["slq"]["probes"] if e["slq"] else 0,
            "hvps": e["hvps"],
            "wall_s": e["wall_s"],
            "source": e["source"],
        }
        for e in estimates
    ]


def draw_curvature(estimates: Sequence[dict[str, Any]], out: Path) -> None:
    """curvature_vs_depth.png (each run's last step), sharpness_vs_step.png (runs with several
    steps) and spectral_density.png (each run's last step)."""
    if not estimates:
        return
    last: dict[str, dict[str, Any]] = {}
    for e in estimates:
        if e["source"] not in last or (e["step"] or 0) >= (last[e["source"]]["step"] or 0):
            last[e["source"]] = e
    rows = [r for r in curvature_rows(last.values())]
    for r in rows:
        r["residual"] = r["residual"] in (True, "True")
    plots.plot_curvature_vs_depth(rows, out / "curvature_vs_depth.png")
    series = []
    for source in dict.fromkeys(e["source"] for e in estimates):
        mine = sorted((e for e in estimates if e["source"] == source), key=lambda e: e["step"] or 0)
        if len(mine) > 1:
            series.append(
                {
                    "label": mine[0]["label"],
                    "steps": [e["step"] for e in mine],
                    "top_eigenvalue": [e["lanczos"]["eigenvalues"][0] for e in mine],
                }
            )
    if series:
        plots.plot_sharpness_vs_step(series, out / "sharpness_vs_step.png")
    with_slq = [e for e in last.values() if e["slq"]]
    if with_slq:
        nodes = np.concatenate([np.ravel(x) for e in with_slq for x in e["slq"]["nodes"]])
        pad = 0.05 * (nodes.max() - nodes.min())
        grid = np.linspace(nodes.min() - pad, nodes.max() + pad, 2000)
        densities = [
            {
                "label": e["label"],
                "grid": grid,
                "density": curv.smooth_density(e["slq"]["nodes"], e["slq"]["weights"], grid)[0],
            }
            for e in with_slq
        ]
        plots.plot_densities(densities, out / "spectral_density.png")


# --- gradient correlation at initialisation ---


def gradient_correlation(
    config: str,
    out: Path,
    *,
    depths: Sequence[int] = (14, 32, 56),
    seeds: Sequence[int] = (0, 1, 2),
    lines: int = 4,
    points: int = 256,
    pairs: int = 64,
    pool: int = 1000,
    max_lag: int = 16,
    of: str = "logit",
    calibration: int = 500,
    data_dir: str | None = None,
    progress: Progress = lambda line: None,
) -> dict[str, Any]:
    """Balduzzi et al.'s shattered gradients at initialisation, plain and residual, at each of
    `depths` and `seeds`. `config` is a depth-sweep config FILE[:POINT] (e.g.
    'configs/depth_sweep.py:ordering=pre'): each net is that point with depth, plain and seed
    set. BatchNorm in evaluation mode with statistics of the first `calibration` training
    images; gradients of `of` along `lines` segments between pairs of training images
    (`points` inputs each), and between each of the first `pairs` training images and its
    nearest neighbour among the first `pool`. Writes gradient_correlation.json/.csv/.png."""
    if of not in gc.OUTPUTS:
        raise ValueError(f"--of {of!r}; choose one of {', '.join(gc.OUTPUTS)}")
    if points < 3 or lines < 1 or pairs < 1 or pool < 2 or calibration < 1:
        raise ValueError("points >= 3, lines >= 1, pairs >= 1, pool >= 2, calibration >= 1")
    if max_lag >= points:
        raise ValueError(f"max lag ({max_lag}) must be below the points on a line ({points})")
    config_file, arg = split_config_spec(config)
    # The point's own keys (e.g. ordering=pre), as strings; depth, plain and seed set per net.
    base = dict(kv.split("=", 1) for kv in arg.split(",")) if arg and "=" in arg else {}
    out.mkdir(parents=True, exist_ok=True)
    rows, splits_cache = [], {}
    for depth in depths:
        for plain in (1, 0):
            for seed in seeds:
                point = {**base, "depth": depth, "plain": plain, "seed": seed}
                spec = f"{config_file}:{','.join(f'{k}={v}' for k, v in point.items())}"
                started = time.perf_counter()
                row = _gradcorr_at_init(
                    load_config(spec),
                    spec,
                    splits_cache,
                    lines,
                    points,
                    pairs,
                    pool,
                    max_lag,
                    of,
                    calibration,
                    data_dir,
                )
                row["wall_s"] = round(time.perf_counter() - started, 1)
                rows.append(row)
                # Written after every net: a long job that stops leaves what it measured.
                _write_json(out / "gradient_correlation.json", {"config": config, "runs": rows})
                progress(
                    f"{row['net']} seed {seed}: neighbour correlation "
                    f"{row['neighbour_correlation']:.3f}, pairs {row['pair_correlation']:.3f}"
                )
    summary = _gradcorr_summary(rows)
    result = {
        "config": config,
        "of": of,
        "lines": lines,
        "points": points,
        "pairs": pairs,
        "pool": pool,
        "calibration_examples": calibration,
        "runs": rows,
        "summary": summary,
    }
    _write_json(out / "gradient_correlation.json", result)
    _write_csv(
        out / "gradient_correlation.csv",
        [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows],
    )
    plots.plot_gradient_correlation(summary, out / "gradient_correlation.png")
    return result


def _gradcorr_at_init(
    config, spec, splits_cache, lines, points, pairs, pool, max_lag, of, calibration, data_dir
) -> dict[str, Any]:
    if data_dir is not None:
        config.data.dir = data_dir
    key = json.dumps(config.data.to_dict(), sort_keys=True, default=str)
    if key not in splits_cache:
        splits_cache[key] = data.load_splits(config.data)
    splits = splits_cache[key]
    need = max(2 * lines, pool, calibration)
    if need > len(splits.train):
        raise ValueError(
            f"need {need} training examples; the training part has {len(splits.train)}"
        )
    images = jnp.asarray(splits.normalize_images(splits.train.images[:need]))
    labels = jnp.asarray(splits.train.labels[:need], jnp.int32)
    model = get_model(config.model.name, **model_overrides(config, splits.num_classes))
    state = create_train_state(config, model, optax.identity(), splits.image_shape)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables["batch_stats"] = gc.calibrated_batch_stats(model, variables, images[:calibration])
    f = gc.scalar_fn(model.apply, variables, of)
    segments = [
        gc.along_line(f, images[2 * i], images[2 * i + 1], int(labels[2 * i]), points, max_lag)
        for i in range(lines)
    ]
    partners = gc.nearest_pairs(np.asarray(images[:pool]))[:pairs]
    pair = gc.pair_correlation(f, images[:pairs], labels[:pairs], partners)
    auto = np.nanmean([s["autocorrelation"] for s in segments], axis=0)
    return {
        "net": f"{'ResNet' if model.residual else 'plain'}-{model.depth}",
        "depth": model.depth,
        "residual": bool(model.residual),
        "seed": int(config.seed),
        "config": spec,
        "neighbour_correlation": float(np.nanmean([s["neighbour_correlation"] for s in segments])),
        "neighbour_cosine": float(np.nanmean([s["neighbour_cosine"] for s in segments])),
        "autocorrelation_lag1": float(auto[1]),
        "pair_correlation": float(np.nanmean(pair)),
        "autocorrelation": auto.tolist(),
        "examples": f"training part of {config.data.name} {config.data.train_split}: lines "
        f"between examples (0,1), (2,3), ... ({lines} lines); pairs: examples [0, {pairs}) "
        f"with their nearest of [0, {pool}); BN statistics of [0, {calibration})",
    }


def _gradcorr_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    measures = (
        "neighbour_correlation",
        "neighbour_cosine",
        "autocorrelation_lag1",
        "pair_correlation",
    )
    out = []
    for key in dict.fromkeys((r["depth"], r["residual"]) for r in rows):
        mine = [r for r in rows if (r["depth"], r["residual"]) == key]
        entry = {"net": mine[0]["net"], "depth": key[0], "residual": key[1], "seeds": len(mine)}
        for m in measures:
            values = np.array([r[m] for r in mine], np.float64)
            entry[f"{m}_mean"] = float(np.mean(values))
            entry[f"{m}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out.append(entry)
    return out
