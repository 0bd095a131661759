"""The learning curves of one run, from its metrics.jsonl: error and loss against epoch.

    python -m resjax.report RUN_DIR      # writes RUN_DIR/learning_curves.png, prints the summary

Training numbers are the running means over each logging window (augmented batches, weights
changing); validation and test numbers are full passes at each evaluation. The summary states
the last evaluation, the one a run reports, and never picks a best step from the test curve.
Reads files only (no JAX); plots use Matplotlib's Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resjax.workdir import METRICS, RESULTS, read_json, read_rows

PLOT = "learning_curves.png"
SERIES = ("train", "val", "test")
_LABEL = {"train": "training (running)", "val": "validation", "test": "test"}


def curves(rows: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{'error'|'loss': {'train'|'val'|'test': [(step, value)]}}; on a rerun the last row
    logged for a step wins (a resumed run logs the steps after its checkpoint again)."""
    out: dict[str, dict[str, dict[int, float]]] = {
        m: {s: {} for s in SERIES} for m in ("error", "loss")
    }
    for row in rows:
        if row.get("step") is None:
            continue
        for metric, series in out.items():
            for name, points in series.items():
                value = row.get(f"{name}_{metric}")
                if value is not None:
                    points[int(row["step"])] = float(value)
    return {m: {s: sorted(p.items()) for s, p in series.items()} for m, series in out.items()}


def steps_per_epoch(rows: list[dict[str, Any]]) -> float | None:
    """Steps per epoch, from the rows that log both (None when none does)."""
    for row in rows:
        if row.get("epoch") and row.get("step"):
            return row["step"] / row["epoch"]
    return None


def run_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of the run's metrics.jsonl; FileNotFoundError when it holds none."""
    rows = read_rows(run_dir / METRICS)
    if not rows:
        raise FileNotFoundError(f"{run_dir} holds no {METRICS}")
    return rows


def summary(run_dir: Path) -> str:
    """A few lines: the run, its last evaluation, and how the test error moved at the end."""
    rows = run_rows(run_dir)
    errors = curves(rows)["error"]
    results = read_json(run_dir / RESULTS) or {}
    lines = [f"# Learning curves: {run_dir.name}", ""]
    if results:
        lines.append(
            f"{results.get('model')}, {results.get('params', 0):,} parameters, "
            f"{results.get('steps')} steps ({results.get('epochs', 0):g} epochs) on "
            f"{results.get('dataset')}, finished."
        )
    else:
        lines.append("Not finished: no results.json (the curves end at the last logged step).")
    for name in SERIES:
        if errors[name]:
            step, value = errors[name][-1]
            lines.append(f"- {_LABEL[name]} error at step {step}: {100 * value:.2f}%")
    test = errors["test"]
    if len(test) >= 2:
        last = ", ".join(f"{100 * v:.2f}" for _, v in test[-6:])
        lines.append(f"- test error (%) at the last {min(6, len(test))} evaluations: {last}")
    return "\n".join(lines) + "\n"


def plot(run_dir: Path, path: Path | None = None) -> Path:
    """Writes the two-panel figure (error %, loss; against epoch, or step when no row logs
    epochs) and returns its path (default RUN_DIR/learning_curves.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run_rows(run_dir)
    per_epoch = steps_per_epoch(rows)
    scale = (lambda s: s / per_epoch) if per_epoch else (lambda s: s)
    data = curves(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4))
    for ax, (metric, series) in zip(axes, data.items(), strict=True):
        for name, points in series.items():
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            values = [100 * v for v in values] if metric == "error" else list(values)
            ax.plot([scale(s) for s in steps], values, label=_LABEL[name], lw=1.4)
        ax.set_xlabel("epoch" if per_epoch else "step")
        ax.set_ylabel("error (%)" if metric == "error" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    errors = data["error"]
    if errors["test"]:  # the number the run reports: the test error at its last evaluation
        step, value = errors["test"][-1]
        axes[0].annotate(
            f"final test {100 * value:.2f}%", (scale(step), 100 * value),
            xytext=(-90, 40), textcoords="offset points", fontsize=8,
            arrowprops={"arrowstyle": "->", "lw": 0.6},
        )  # fmt: skip
    # The first fifth of training, near chance, would squeeze the end into a sliver.
    late = [100 * v for name in SERIES for _, v in errors[name][len(errors[name]) // 5 :]]
    if late:
        axes[0].set_ylim(0, 1.6 * max(late))
    fig.suptitle(f"{run_dir.name}: learning curves", fontsize=10)
    fig.tight_layout()
    path = path or run_dir / PLOT
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
