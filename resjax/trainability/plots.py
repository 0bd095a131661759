"""Figures of the trainability instruments (Matplotlib, Agg backend; no JAX).

Two runs drawn side by side share their axes, colour scale and contour levels, so that a
plain net and a residual net are compared by eye on the same terms (Li et al. 2018, Fig. 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_levels(
    grids: Sequence[np.ndarray], count: int = 30, ceiling: float | None = None
) -> np.ndarray:
    """`count` contour levels spaced evenly in log(loss) from the lowest loss of all `grids` to
    the highest (or `ceiling`): one set of levels for every panel."""
    values = np.concatenate([np.asarray(g, np.float64).ravel() for g in grids])
    values = values[np.isfinite(values) & (values > 0)]
    low, high = values.min(), values.max() if ceiling is None else min(values.max(), ceiling)
    if high <= low:
        high = low * 1.01
    return np.geomspace(low, high, count)


def plot_lines(curves: Sequence[dict[str, Any]], path: Path, xlabel: str) -> None:
    """Loss (log scale) and error against the line's coordinate, one curve per run.
    curves: [{'label', 'x', 'loss', 'error'}]."""
    plt = _pyplot()
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    for c in curves:
        style = "--" if c["label"].startswith("plain") else "-"
        ax_loss.plot(c["x"], c["loss"], style, label=c["label"])
        ax_err.plot(c["x"], 100 * np.asarray(c["error"]), style, label=c["label"])
    ax_loss.set_yscale("log")
    # Far outside [0, 1] a deep plain net's loss can reach 1e30 and squash the rest of the plot.
    top = max(float(np.nanmax(c["loss"])) for c in curves)
    if top > 1e3:
        ax_loss.set_ylim(None, 1e3)
    ax_loss.set_ylabel("training loss")
    ax_err.set_ylabel("training error %")
    for ax in (ax_loss, ax_err):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def decade_ticks(low: float, high: float) -> np.ndarray:
    """Powers of ten within [low, high] to label a logarithmic scale with (the two ends,
    rounded, where no power of ten falls inside)."""
    ticks = 10.0 ** np.arange(np.ceil(np.log10(low)), np.floor(np.log10(high)) + 1)
    return ticks if len(ticks) >= 2 else np.array([float(f"{low:.2g}"), float(f"{high:.2g}")])


def plot_contours(
    grids: Sequence[dict[str, Any]], path: Path, ceiling: float | None = None
) -> None:
    """2D loss contours, one panel per run, logarithmic levels shared by all panels.
    grids: [{'label', 'axes': [x, y], 'loss': [len(x), len(y)]}]."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    levels = log_levels([g["loss"] for g in grids], ceiling=ceiling)
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4.6), squeeze=False)
    for ax, g in zip(axes[0], grids, strict=False):
        x, y = g["axes"]
        z = np.clip(np.asarray(g["loss"], np.float64), levels[0], levels[-1])
        cs = ax.contour(
            x,
            y,
            z.T,
            levels=levels,
            norm=LogNorm(levels[0], levels[-1]),
            cmap="viridis",
            linewidths=0.8,
        )
        ax.plot([0], [0], "r+", markersize=10)
        ax.set_title(g["label"])
        ax.set_aspect("equal")
        ax.set_xlabel("direction 1 (filter norms)")
    axes[0][0].set_ylabel("direction 2 (filter norms)")
    bar = fig.colorbar(cs, ax=axes[0].tolist(), shrink=0.85, label="training loss (log levels)")
    bar.set_ticks(decade_ticks(levels[0], levels[-1]))
    bar.set_ticklabels([f"{t:g}" for t in decade_ticks(levels[0], levels[-1])])
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_surfaces(
    grids: Sequence[dict[str, Any]], path: Path, ceiling: float | None = None
) -> None:
    """3D surfaces of log10(loss), one panel per run, the same z range in all."""
    plt = _pyplot()
    levels = log_levels([g["loss"] for g in grids], ceiling=ceiling)
    zmin, zmax = np.log10(levels[0]), np.log10(levels[-1])
    fig = plt.figure(figsize=(5.5 * len(grids), 4.8))
    for i, g in enumerate(grids):
        ax = fig.add_subplot(1, len(grids), i + 1, projection="3d")
        x, y = np.meshgrid(*g["axes"], indexing="ij")
        z = np.log10(np.clip(np.asarray(g["loss"], np.float64), levels[0], levels[-1]))
        ax.plot_surface(
            x, y, z, cmap="viridis", vmin=zmin, vmax=zmax, linewidth=0, antialiased=True
        )
        ax.set_zlim(zmin, zmax)
        ax.set_title(g["label"])
        ax.set_zlabel("log10 training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _families(rows: Sequence[dict[str, Any]]):
    for residual, name, style in ((False, "plain", "s--"), (True, "residual", "o-")):
        yield [r for r in rows if r["residual"] == residual], name, style


def plot_curvature_vs_depth(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Top Hessian eigenvalue and trace against depth, plain and residual (log scale).
    rows: [{'depth', 'residual', 'top_eigenvalue', 'trace', 'trace_stderr'}]."""
    plt = _pyplot()
    fig, (ax_top, ax_tr) = plt.subplots(1, 2, figsize=(10, 4))
    for family, name, style in _families(rows):
        family = sorted(family, key=lambda r: r["depth"])
        if not family:
            continue
        depths = [r["depth"] for r in family]
        ax_top.plot(depths, [r["top_eigenvalue"] for r in family], style, label=name)
        ax_tr.errorbar(
            depths,
            [r["trace"] for r in family],
            yerr=[r["trace_stderr"] for r in family],
            fmt=style,
            label=name,
            capsize=3,
        )
    ax_top.set_ylabel("top Hessian eigenvalue")
    ax_tr.set_ylabel("Hessian trace (Hutchinson)")
    for ax in (ax_top, ax_tr):
        ax.set_xlabel("depth")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sharpness_vs_step(series: Sequence[dict[str, Any]], path: Path) -> None:
    """Top Hessian eigenvalue against training step, one curve per run.
    series: [{'label', 'steps', 'top_eigenvalue'}]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in series:
        style = "s--" if s["label"].startswith("plain") else "o-"
        ax.plot(s["steps"], s["top_eigenvalue"], style, label=s["label"])
    ax.set_xlabel("training step")
    ax.set_ylabel("top Hessian eigenvalue")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_densities(densities: Sequence[dict[str, Any]], path: Path) -> None:
    """Spectral densities (SLQ, log scale), one curve per run. [{'label', 'grid', 'density'}]."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for d in densities:
        ax.plot(d["grid"], np.maximum(d["density"], 1e-12), label=d["label"])
    ax.set_yscale("log")
    ax.set_ylim(1e-8, None)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (SLQ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gradient_correlation(summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Gradient correlation at initialisation against depth, mean ± std over seeds: between
    neighbouring inputs on a line, the directional derivative's lag-1 autocorrelation, and
    between nearby training images. summary: [{'depth', 'residual', '<measure>_mean',
    '<measure>_std'}]."""
    plt = _pyplot()
    measures = (
        ("neighbour_correlation", "gradient correlation, neighbours on a line"),
        ("autocorrelation_lag1", "lag-1 autocorrelation of the directional derivative"),
        ("pair_correlation", "gradient correlation, nearest training images"),
    )
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 4))
    for ax, (key, title) in zip(axes, measures, strict=False):
        for family, name, style in _families(summary):
            family = sorted(family, key=lambda r: r["depth"])
            if family:
                ax.errorbar(
                    [r["depth"] for r in family],
                    [r[f"{key}_mean"] for r in family],
                    yerr=[r[f"{key}_std"] for r in family],
                    fmt=style,
                    label=name,
                    capsize=3,
                )
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("depth")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
