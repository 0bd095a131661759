"""The report of a sweep: a Markdown + CSV table and PNG plots, from the files in its workdir.

    python -m resjax.report runs/depth_sweep

Reads `WORKDIR/sweep_status.json` (the points the sweep expects, resjax.sweeps.status) and,
for each point directory, `results.json`, `config.json` and `metrics.jsonl`; writes

    report.md                   per-point table, mean ± std over seeds, the depth comparison
    report.csv                  one row per point
    report_summary.csv          one row per (family, depth): mean and std over seeds
    train_error_vs_step.png     training error vs step, one panel per family (He et al. Fig. 6)
    error_vs_depth.png          final training and test error vs depth, every family
    diagnostics_vs_depth.png    per-block gradient norm and ‖F(x)‖/‖x‖, when training logged them

Works on partial sweeps (missing, failed or unfinished points are listed as such). A point's
depth is the one its results record (or its status entry, for a point not finished). Reads files
only: importing it does not import JAX; plots use Matplotlib's Agg backend.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import statistics
from pathlib import Path
from typing import Any

from resjax.duration import hms
from resjax.sweeps.curvature_table import curvature_section
from resjax.workdir import (
    CONFIG,
    METRICS,
    RESULTS,
    STATUS,
    logged_diagnostics,
    read_json,
    read_rows,
)

PLOTS = ("train_error_vs_step.png", "error_vs_depth.png")
_PER_POINT = (
    "point", "status", "family", "depth", "seed", "params", "train_loss", "train_error",
    "train_eval_error", "val_error", "test_error", "steps", "wall_time_s",
)  # fmt: skip
_METRICS = (
    "train_loss", "train_error", "train_eval_error", "val_error", "test_error", "wall_time_s",
)  # fmt: skip


@dataclasses.dataclass
class PointResult:
    """What the report knows of one point; numbers are None where the point has none (yet)."""

    point: str
    status: str  # finished | failed | interrupted | running | pending | incomplete | missing
    family: str | None = None  # 'plain', 'residual' or, see label_families, 'residual (pre)'
    depth: int | None = None
    seed: int | None = None
    params: int | None = None
    train_loss: float | None = None
    train_error: float | None = None  # mean over the last logging window, while training
    train_eval_error: float | None = None  # the final weights on the training examples
    val_error: float | None = None
    test_error: float | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    error: str | None = None
    window_steps: int | None = None  # training steps the final training error averages over
    batch_size: int | None = None
    augment: str | None = None
    variant: dict[str, str] = dataclasses.field(default_factory=dict)  # _VARIANT_KEYS it sets
    curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, train err)
    test_curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    @property
    def group(self) -> str:
        """The point's name without its seed: seeds of one setting share it."""
        return re.sub(r"_s\d+$", "", self.point)


# Points with the per-block diagnostics each logged last (resjax.workdir.logged_diagnostics).
Diagnosed = list[tuple[PointResult, dict[str, Any]]]


def _family(config: dict | None, residual: bool | None) -> str | None:
    """'plain' or 'residual', from results.json's flag, else the config's override or name."""
    overrides = ((config or {}).get("model") or {}).get("overrides") or {}
    if residual is None:
        name = ((config or {}).get("model") or {}).get("name", "")
        if overrides.get("residual") is not None:
            residual = bool(overrides["residual"])
        elif name:
            residual = not name.startswith("plain")
        else:
            return None
    return "residual" if residual else "plain"


# Block fields that tell families of one sweep apart, with how a label says them; a plain net
# has no shortcut to tell.
_VARIANT_KEYS = {"ordering": "{}", "shortcut": "shortcut {}"}


def _variant(config: dict | None, family: str | None) -> dict[str, str]:
    overrides = ((config or {}).get("model") or {}).get("overrides") or {}
    return {
        k: str(overrides[k])
        for k in _VARIANT_KEYS
        if overrides.get(k) is not None and not (k == "shortcut" and family == "plain")
    }


def shared_variant(points: list[PointResult]) -> dict[str, str]:
    """The block fields (ordering, shortcut) that every point setting them sets alike."""
    values: dict[str, set[str]] = {}
    for p in points:
        for k, v in p.variant.items():
            values.setdefault(k, set()).add(v)
    return {k: next(iter(v)) for k, v in values.items() if len(v) == 1}


def label_families(points: list[PointResult]) -> None:
    """Adds to each point's family the block fields in which the sweep's points differ, e.g.
    'residual (pre)' beside 'residual (post)', 'residual (shortcut B)': what a sweep varies is
    what tells its families apart. Fields every point shares are said once (`shared_variant`)."""
    shared = shared_variant(points)
    for p in points:
        extras = [_VARIANT_KEYS[k].format(v) for k, v in p.variant.items() if k not in shared]
        if p.family is not None and extras:
            p.family += f" ({', '.join(extras)})"


def _curves(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]], dict]:
    """Training-error and test-error curves; on a rerun the last row for a step wins."""
    train, test, last = {}, {}, {}
    for row in read_rows(path):
        step = row.get("step")
        if step is None:
            continue
        if row.get("train_error") is not None:
            train[int(step)] = float(row["train_error"])
            last.update(
                {k: row[k] for k in ("train_loss", "train_error") if row.get(k) is not None}
            )
            last["steps"] = int(step)
        if row.get("test_error") is not None:
            test[int(step)] = float(row["test_error"])
    return sorted(train.items()), sorted(test.items()), last


def load_point(point_dir: Path, status: dict | None = None) -> PointResult:
    """One point's results from its directory (and its entry in sweep_status.json, if any)."""
    status = status or {}
    results = read_json(point_dir / RESULTS)
    config = read_json(point_dir / CONFIG)
    curve, test_curve, last = _curves(point_dir / METRICS)
    if results is not None:
        state = "finished"
    elif status.get("status") not in (None, "finished"):
        state = status["status"]
    else:
        state = "incomplete" if config is not None else "missing"
    r = PointResult(point=point_dir.name, status=state, error=status.get("error"))
    r.curve, r.test_curve = curve, test_curve
    r.family = _family(config, results.get("residual") if results else None)
    r.variant = _variant(config, r.family)
    r.depth = (results or {}).get("depth") or status.get("depth")
    r.seed = (results or {}).get("seed", (config or {}).get("seed"))
    source = results if results is not None else last  # an unfinished point: its last log
    for key in ("params", "train_loss", "train_error", "train_eval_error", "val_error",
                "test_error", "steps", "wall_time_s"):  # fmt: skip
        value = source.get(key)
        if value is not None:
            setattr(r, key, value)
    if status.get("wall_time_s") is not None:  # the whole point: data, compile, train, eval
        r.wall_time_s = status["wall_time_s"]
    if config is not None:
        r.window_steps = config.get("log_every_steps")
        r.batch_size = config.get("batch_size")
        r.augment = (config.get("data") or {}).get("augment")
    return r


def load_points(workdir: str | Path) -> list[PointResult]:
    """Every point of the sweep in `workdir`: those sweep_status.json lists, in its order, then
    any other subdirectory holding a config.json or results.json."""
    workdir = Path(workdir)
    status = (read_json(workdir / STATUS) or {}).get("points", {})
    names = list(status)
    for d in sorted(p for p in workdir.iterdir() if p.is_dir()) if workdir.is_dir() else []:
        if d.name not in status and ((d / RESULTS).exists() or (d / CONFIG).exists()):
            names.append(d.name)
    points = [load_point(workdir / name, status.get(name)) for name in names]
    label_families(points)
    return points


# --- tables ---


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(points: list[PointResult]) -> list[dict[str, Any]]:
    """One row per setting (points equal but for the seed): mean and std over finished seeds."""
    groups: dict[str, list[PointResult]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    rows = []
    for name, members in groups.items():
        done = [p for p in members if p.status == "finished"]
        row = {
            "setting": name,
            "family": members[0].family,
            "depth": members[0].depth,
            "params": members[0].params,
            "seeds": len(done),
            "of": len(members),
            "steps": done[0].steps if done else None,
        }
        for key in _METRICS:
            row[key], row[f"{key}_std"] = _mean_std([getattr(p, key) for p in done])
        rows.append(row)
    return rows


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _dur(seconds: float | None) -> str:
    return "–" if seconds is None else hms(seconds)


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "–" if value is None else fmt.format(value)


def final_train_key(rows: list[dict[str, Any]]) -> str:
    """The final training error the comparison uses: of the final weights on the training
    examples where every row has it (`eval_train_at_end`), else the last window's mean."""
    done = [r for r in rows if r.get("train_error") is not None]
    if done and all(r.get("train_eval_error") is not None for r in done):
        return "train_eval_error"
    return "train_error"


def depth_comparison(summary: list[dict[str, Any]]) -> list[str]:
    """Per family: final training error at each depth (mean ± std over seeds), whether it rises
    or falls at every step of depth, and the shallowest-to-deepest change (the headline)."""
    lines = []
    families = {}
    key = final_train_key(summary)
    for row in summary:
        if row[key] is not None and row["depth"] is not None:
            families.setdefault(row["family"], []).append(row)
    for family, rows in families.items():
        if len({r["depth"] for r in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda r: r["depth"])
        errors = [r[key] for r in rows]
        steps = [b - a for a, b in zip(errors, errors[1:], strict=False)]
        if all(d > 0 for d in steps):
            order = "rises with depth at every step"
        elif all(d < 0 for d in steps):
            order = "falls with depth at every step"
        else:
            order = "not monotone in depth"
        chain = " → ".join(f"{_pct(r[key], r[f'{key}_std'])}% (d{r['depth']})" for r in rows)
        delta = 100 * (errors[-1] - errors[0])
        stds = [r[f"{key}_std"] for r in (rows[0], rows[-1]) if r[f"{key}_std"]]
        noise = ""
        if stds:
            noise = f", {abs(delta) / (100 * max(stds)):.1f}× the larger seed std"
        lines.append(
            f"- **{family}**: {chain}; {order}; deepest − shallowest {delta:+.2f} points{noise}"
        )
    return lines


def read_reference(path: str | Path) -> dict[str, dict[str, Any]]:
    """{setting: row} of a report_summary.csv (`write_report`'s), numbers as floats, empty
    cells as None; {} when it cannot be read."""
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    out = {}
    for row in rows:
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            try:
                parsed[key] = None if value in ("", None) else float(value)
            except ValueError:
                parsed[key] = value
        out[row["setting"]] = parsed
    return out


def reference_comparison(
    summary: list[dict[str, Any]], reference: dict[str, dict[str, Any]], source: str
) -> list[str]:
    """Markdown lines: per setting also in `reference` (a committed run of the same points,
    other seeds), this run's final training and test error beside the reference's mean ± std,
    and how many reference stds apart they are. [] when no setting matches."""
    key = final_train_key(summary)
    rows = [
        (r, reference[r["setting"]])
        for r in summary
        if r["setting"] in reference
        and r[key] is not None
        and reference[r["setting"]].get(key) is not None
        and reference[r["setting"]].get("steps") == r["steps"]
    ]
    if not rows:
        return []

    def beside(value, ref, name):
        mean, std = ref.get(name), ref.get(f"{name}_std")
        if value is None or mean is None:
            return "– | – | –"
        apart = f"{(value - mean) / std:+.1f}" if std else "–"
        return f"{_pct(value)} | {_pct(mean, std)} | {apart}"

    seeds = sorted({int(ref["seeds"]) for _, ref in rows if ref.get("seeds")})
    lines = [
        "## Against the reference",
        "",
        f"This run beside the committed run of the same points, {'/'.join(map(str, seeds))} "
        f"seeds, mean ± std ({source}). CPU runs repeat bitwise on one machine and software "
        "stack only: on another CPU or jax, expect the numbers within about the seed spread "
        "(a few reference stds at most), not to the digit.",
        "",
        "| setting | seeds | final train error % | reference | apart (ref. stds) | "
        "test error % | reference | apart (ref. stds) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, ref in rows:
        lines.append(
            f"| {r['setting']} | {r['seeds']} | {beside(r[key], ref, key)} | "
            f"{beside(r['test_error'], ref, 'test_error')} |"
        )
    return [*lines, ""]


def training_error_note(points: list[PointResult]) -> str:
    """What "final training error" means in this sweep, from the points' configs."""
    done = [p for p in points if p.window_steps and p.batch_size]
    if not done:
        return "Final training error: the mean over the last logging window of training."
    steps = sorted({p.window_steps for p in done})
    examples = sorted({p.window_steps * p.batch_size for p in done})
    augment = sorted({p.augment or "?" for p in done})
    described = (
        "without augmentation" if augment == ["none"] else f"augmentation {'/'.join(augment)}"
    )
    note = (
        "Train loss and train error: the mean over the training batches of the last logging "
        f"window ({'/'.join(map(str, steps))} steps, {'/'.join(f'{n:,}' for n in examples)} "
        f"examples), as the network saw them while training ({described}, BatchNorm in training "
        "mode) — He et al.'s training error."
    )
    if any(p.train_eval_error is not None for p in done):
        note += (
            " Final-weights train error: the final weights on every training example (BatchNorm "
            "in evaluation mode, no augmentation), free of the window's noise; where every "
            "point has it, it is the final training error compared across depths above."
        )
    return note + " Val and test errors are of the final weights."


def markdown(
    points: list[PointResult],
    title: str = "Sweep",
    reference: tuple[dict[str, dict[str, Any]], str] | None = None,
) -> str:
    """The report as Markdown: comparison, per-setting summary, per-point table, plots;
    `reference` ({setting: row}, where it is from) adds where this run sits against it."""
    summary = summarize(points)
    done = sum(p.status == "finished" for p in points)
    out = [f"# {title}", "", f"{done} of {len(points)} points finished.", ""]
    shared = shared_variant(points)
    if shared:
        out += [f"Every network: {', '.join(f'{k} {v}' for k, v in shared.items())}.", ""]
    comparison = depth_comparison(summary)
    if comparison:
        out += ["## Training error vs depth", "", *comparison, ""]
    if reference is not None:
        out += reference_comparison(summary, *reference)
    if any(r["of"] > 1 for r in summary):
        out += [
            "## Mean ± std over seeds",
            "",
            "| setting | family | depth | params | seeds | train loss | train error % | "
            "final-weights train error % | val error % | test error % | wall time |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in summary:
            loss = "–" if r["train_loss"] is None else f"{r['train_loss']:.4f}"
            out.append(
                f"| {r['setting']} | {r['family'] or '–'} | {_num(r['depth'], '{}')} | "
                f"{_num(r['params'])} | {r['seeds']}/{r['of']} | {loss} | "
                f"{_pct(r['train_error'], r['train_error_std'])} | "
                f"{_pct(r['train_eval_error'], r['train_eval_error_std'])} | "
                f"{_pct(r['val_error'], r['val_error_std'])} | "
                f"{_pct(r['test_error'], r['test_error_std'])} | {_dur(r['wall_time_s'])} |"
            )
        out.append("")
    out += [
        "## Points",
        "",
        "| point | status | family | depth | params | train loss | train error % | "
        "final-weights train error % | val error % | test error % | steps | wall time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        status = p.status if not p.error else f"{p.status}: {p.error}"
        loss = "–" if p.train_loss is None else f"{p.train_loss:.4f}"
        out.append(
            f"| {p.point} | {status.replace('|', '/')} | {p.family or '–'} | "
            f"{_num(p.depth, '{}')} | {_num(p.params)} | {loss} | {_pct(p.train_error)} | "
            f"{_pct(p.train_eval_error)} | {_pct(p.val_error)} | {_pct(p.test_error)} | {_num(p.steps)} | "
            f"{_dur(p.wall_time_s)} |"
        )
    out += [
        "",
        training_error_note(points) + " Wall time is the whole point as the sweep timed it "
        "(data, compilation, training, evaluation).",
        "",
        "![training error vs step](train_error_vs_step.png)",
        "",
        "![error vs depth](error_vs_depth.png)",
        "",
    ]
    return "\n".join(out)


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})


# --- plots ---


def _family_order(families) -> list[str]:
    return sorted({f for f in families if f}, key=lambda f: (not f.startswith("plain"), f))


def _focus_top(points: list[PointResult]) -> float:
    """The y-axis top (%) that shows every curve after its first fifth of training: the early
    steps, where every net is near chance, would otherwise squeeze the separation into a sliver."""
    late = [100 * e for p in points if p.curve for s, e in p.curve if s >= 0.2 * p.curve[-1][0]]
    return min(100.0, 1.1 * max(late)) if late else 100.0


def plot_train_error_vs_step(points: list[PointResult], path: Path) -> None:
    """One panel per family; a line per depth (seed mean; thin lines per seed); final test
    error as a dot at the last step (He et al. 2015, Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = _family_order(p.family for p in points if p.curve)
    depths = sorted({p.depth for p in points if p.curve and p.depth is not None})
    cmap = plt.get_cmap("viridis")
    color = {d: cmap(i / max(1, len(depths) - 1) * 0.85) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(
        1, max(1, len(families)), figsize=(5.2 * max(1, len(families)), 4), sharey=True,
        squeeze=False,
    )  # fmt: skip
    for ax, family in zip(axes[0], families, strict=False):
        for depth in depths:
            members = [p for p in points if p.family == family and p.depth == depth and p.curve]
            if not members:
                continue
            for p in members if len(members) > 1 else []:
                steps, errs = zip(*p.curve, strict=True)
                ax.plot(steps, [100 * e for e in errs], color=color[depth], lw=0.6, alpha=0.35)
            common = sorted(set.intersection(*(set(dict(p.curve)) for p in members)))
            mean = [100 * statistics.fmean(dict(p.curve)[s] for p in members) for s in common]
            net = "plain" if family.startswith("plain") else "ResNet"
            label = f"{net}-{depth}" + (f" ({len(members)} seeds)" if len(members) > 1 else "")
            ax.plot(common, mean, color=color[depth], lw=1.8, label=label)
            tests = [p.test_curve[-1] for p in members if p.test_curve]
            if tests:
                ax.plot(
                    [statistics.fmean(s for s, _ in tests)],
                    [100 * statistics.fmean(e for _, e in tests)],
                    "o", color=color[depth], ms=6, mec="black", mew=0.6,
                )  # fmt: skip
        ax.set_title(family)
        ax.set_xlabel("step")
        ax.set_ylim(0, _focus_top(points))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training error (%)")
    fig.suptitle("Training error vs step (lines); final test error (dots)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_error_vs_depth(summary: list[dict[str, Any]], path: Path) -> None:
    """Final training (solid) and test (dashed) error vs depth per family, ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    families = _family_order(r["family"] for r in summary)
    colors = plt.get_cmap("tab10")
    depths = set()
    train_key = final_train_key(summary)
    for i, family in enumerate(families):
        rows = sorted(
            (r for r in summary if r["family"] == family and r["depth"] is not None),
            key=lambda r: r["depth"],
        )
        for key, style, marker in ((train_key, "-", "o"), ("test_error", "--", "s")):
            rows_k = [r for r in rows if r[key] is not None]
            if not rows_k:
                continue
            depths.update(r["depth"] for r in rows_k)
            ax.errorbar(
                [r["depth"] for r in rows_k],
                [100 * r[key] for r in rows_k],
                yerr=[100 * (r[f"{key}_std"] or 0.0) for r in rows_k],
                color=colors(i), ls=style, marker=marker, capsize=3,
                label=f"{family}, {key.split('_')[0]}",
            )  # fmt: skip
    ax.set_xticks(sorted(depths))
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("final error (%)")
    ax.set_title("Final error vs depth (train: solid, test: dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    if families:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def sweep_title(workdir: Path) -> str:
    """The report's title: the sweep as sweep_status.json names it (its config file and arg, as
    given: 'Sweep configs/depth_sweep.py:fmnist_3seeds') and the workdir's name."""
    sweep = (read_json(workdir / STATUS) or {}).get("sweep")
    return f"Sweep {sweep} ({workdir.name})" if sweep else f"Sweep: {workdir.name}"


def _shown(path: str) -> str:
    """`path` relative to the working directory where it lies below it (as the README links)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def write_report(workdir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Writes report.md, report.csv, report_summary.csv and the plots into `workdir`; `title`
    defaults to `sweep_title`.

    Returns their paths ({'markdown', 'csv', 'summary_csv', 'train_error_vs_step',
    'error_vs_depth'}). Raises FileNotFoundError when `workdir` holds no point at all.
    """
    workdir = Path(workdir)
    points = load_points(workdir)
    if not points:
        raise FileNotFoundError(f"{workdir} holds no sweep points ({STATUS} or run dirs)")
    summary = summarize(points)
    paths = {
        "markdown": workdir / "report.md",
        "csv": workdir / "report.csv",
        "summary_csv": workdir / "report_summary.csv",
        "train_error_vs_step": workdir / PLOTS[0],
        "error_vs_depth": workdir / PLOTS[1],
    }
    reference = (read_json(workdir / STATUS) or {}).get("reference")
    against = (read_reference(reference), _shown(reference)) if reference else None
    paths["markdown"].write_text(markdown(points, title or sweep_title(workdir), against))
    _write_csv(paths["csv"], [dataclasses.asdict(p) for p in points], [*_PER_POINT, "error"])
    _write_csv(
        paths["summary_csv"],
        summary,
        ["setting", "family", "depth", "params", "seeds", "of", "steps"]
        + [k for m in _METRICS for k in (m, f"{m}_std")],
    )
    plot_train_error_vs_step(points, paths["train_error_vs_step"])
    plot_error_vs_depth(summary, paths["error_vs_depth"])
    diagnosed = [(p, d) for p in points if (d := logged_diagnostics(workdir / p.point))]
    if diagnosed:
        paths["diagnostics"] = workdir / "diagnostics_vs_depth.png"
        with paths["markdown"].open("a") as f:
            f.write(diagnostics_section(diagnosed, paths["diagnostics"]))
    # Optional: the points' curvature, where `python -m resjax.trainability curvature` left it.
    with paths["markdown"].open("a") as f:
        f.write(curvature_section(workdir, [p.point for p in points]))
    return paths


def _residual(p: PointResult) -> bool:
    return p.family is not None and not p.family.startswith("plain")


def _net(p: PointResult) -> str:
    return f"{'ResNet' if _residual(p) else 'plain'}-{p.depth}"


def diagnostics_rows(diagnosed: Diagnosed) -> list[dict[str, Any]]:
    """One row per point for the report's table, from the per-block diagnostics it logged last
    (resjax.workdir.logged_diagnostics): gradient norm of the first/middle/last block and
    first/last, mean and max of ‖F(x)‖/‖x‖ over the blocks."""
    rows = []
    for p, d in diagnosed:
        grad = [b["grad_norm"] for b in d["blocks"]]
        ratio = [b["branch_ratio"] for b in d["blocks"]]
        rows.append(
            {
                "point": p.point,
                "net": _net(p),
                "depth": p.depth,
                "residual": _residual(p),
                "step": d["step"],
                "grad_norm_first": grad[0],
                "grad_norm_middle": grad[len(grad) // 2],
                "grad_norm_last": grad[-1],
                "grad_norm_first_over_last": grad[0] / grad[-1] if grad[-1] else float("inf"),
                "branch_ratio_mean": statistics.fmean(ratio),
                "branch_ratio_max": max(ratio),
            }
        )
    return rows


def diagnostics_section(diagnosed: Diagnosed, plot_path: Path) -> str:
    """Markdown: per-block gradient norm and ‖F(x)‖/‖x‖ at the end of training, plain vs
    residual, from the points' logged diagnostics; draws `plot_path`."""
    rows = sorted(diagnostics_rows(diagnosed), key=lambda r: (r["residual"], r["depth"] or 0))
    plot_depth_diagnostics(diagnosed, plot_path)
    lines = [
        "",
        "## Gradient flow at the end of training",
        "",
        "| net | step | ‖∂L/∂θ‖ first block | middle | last | first/last | mean ‖F(x)‖/‖x‖ | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['step']} | {r['grad_norm_first']:.3g} | {r['grad_norm_middle']:.3g}"
            f" | {r['grad_norm_last']:.3g} | {r['grad_norm_first_over_last']:.2f}"
            f" | {r['branch_ratio_mean']:.2f} | {r['branch_ratio_max']:.2f} |"
        )
    lines += ["", f"![per-block diagnostics]({plot_path.name})", ""]
    return "\n".join(lines)


def plot_depth_diagnostics(diagnosed: Diagnosed, path: Path) -> None:
    """Per-block gradient norm (log) and ‖F(x)‖/‖x‖ against relative depth, one line per point:
    plain dashed, residual solid, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({p.depth for p, _ in diagnosed if p.depth is not None})
    cmap = plt.get_cmap("viridis")
    color = {d: cmap(i / max(1, len(depths) - 1) * 0.85) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for p, d in diagnosed:
        x = [b["relative_depth"] for b in d["blocks"]]
        style = dict(ls="-" if _residual(p) else "--", color=color.get(p.depth), label=_net(p))
        axes[0].plot(x, [b["grad_norm"] for b in d["blocks"]], **style)
        axes[1].plot(x, [b["branch_ratio"] for b in d["blocks"]], **style)
    axes[0].set(yscale="log", title="‖∂L/∂θ‖ per block, end of training")
    axes[1].set(title="‖F(x)‖ / ‖x‖ per block, end of training")
    for ax in axes:
        ax.set_xlabel("relative depth of block (input → output)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
