"""Research diagnostics from the command line: signal at initialisation, lesion studies.

At initialisation (no training), plain vs residual at several depths, on one real batch::

    python -m resjax.diagnose --config=configs/fashion_mnist_resnet.py --depths=8,20,56,110 --out=DIR

writes DIR/init_signal.png, .json and .csv: per block, the std of its output, the per-example
gradient norm at its input, its parameters' gradient norm and ‖F(x)‖/‖x‖ (depths 8,20,56,110:
~90 s on the shared 2-core CPU, mostly compilation). Lesion study (Veit et al. 2016) of trained runs::

    python -m resjax.diagnose --lesion --workdir=runs/r56,runs/p56 --out=DIR

removes each block in turn at test time (residual: output = shortcut; plain: the block is
skipped), then k random blocks, and writes DIR/lesion.png, lesion.json and a table per run.

`run_block_diagnostics(workdir)` gives the per-block numbers of one run at the end of training,
from its logged diagnostics or its checkpoint (the sweep report reads the logged ones itself,
resjax.sweeps.report). Bad input is answered with one `error:` line (resjax.cli).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from resjax import checkpoint, cli, data, diagnostics, models, weights
from resjax.config import model_overrides
from resjax.workdir import BLOCK_METRICS, CONFIG, logged_diagnostics, unflatten_diagnostics

DEFAULT_DEPTHS = (20, 56, 110)  # He et al. 2015's CIFAR plain/residual comparison (Fig. 6)
DEFAULT_KS = (1, 2, 4, 8, 12, 16, 20)  # blocks removed at random (Veit et al. 2016, Fig. 5)


# --- shared pieces ---


def _base_model(config: ml_collections.ConfigDict, num_classes: int) -> models.ResNet:
    """The configured network, as on one device (no BatchNorm axis name)."""
    return models.get_model(config.model.name, **model_overrides(config, num_classes))


def _first_batch(splits: data.Splits, batch_size: int) -> dict[str, jax.Array]:
    """The first `batch_size` training images, normalised, not augmented."""
    batch = next(iter(data.eval_batches(splits.train, splits, batch_size, prefetch_batches=0)))
    return {"image": jnp.asarray(batch["image"]), "label": jnp.asarray(batch["label"])}


def _label(model: models.ResNet) -> str:
    return f"{'ResNet' if model.residual else 'plain'}-{model.depth}"


# --- at initialisation ---


def init_diagnostics(
    config: ml_collections.ConfigDict,
    depths: Sequence[int],
    *,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """`signal_profile` of the configured network at each depth, plain and residual, at init.

    One real training batch (`batch_size`, default `config.batch_size`); parameters from
    `config.seed`, the same for the plain and the residual net of a depth (their layers are
    the same). Parameters are initialised scanned (compile time flat in depth) and profiled
    unrolled (XLA:CPU runs a scanned stage ~20x slower here).
    Returns {'dataset', 'batch_size', 'runs': [{'label', 'depth', 'residual', 'blocks', and
    the profile's columns as lists}]}.
    """
    splits = data.load_splits(config.data)
    batch = _first_batch(splits, batch_size or config.batch_size)
    base = _base_model(config, splits.num_classes).clone(scan=False, remat=False)
    key = jax.random.PRNGKey(config.seed)
    runs = []
    for depth in depths:
        scanned = diagnostics.at_depth(base.clone(scan=True), depth, residual=True)
        init = jax.jit(lambda x, m=scanned: m.init(key, x, train=False))
        variables = diagnostics.unscan_variables(scanned, init(batch["image"][:1]))
        for residual in (False, True):
            model = diagnostics.at_depth(base, depth, residual)
            profile = jax.jit(lambda v, b, m=model: diagnostics.signal_profile(m, v, b))(
                variables, batch
            )
            profile = jax.device_get(profile)
            runs.append(
                {
                    "label": _label(model),
                    "depth": model.depth,
                    "residual": residual,
                    "blocks": model.block_names(),
                    **{k: np.asarray(v).tolist() for k, v in profile.items()},
                }
            )
    return {"dataset": splits.name, "batch_size": int(batch["label"].shape[0]), "runs": runs}


def write_init(results: dict[str, Any], out: Path) -> None:
    """init_signal.json (everything), init_signal.csv (one row per block) and init_signal.png."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "init_signal.json").write_text(json.dumps(results, indent=1))
    columns = ("output_std", "input_grad_norm", "grad_norm", "branch_ratio")
    with (out / "init_signal.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("net", "depth", "residual", "block_index", "block", *columns))
        for r in results["runs"]:
            for k, name in enumerate(r["blocks"]):
                w.writerow(
                    (r["label"], r["depth"], int(r["residual"]), k, name)
                    + tuple(f"{r[c][k]:.6g}" for c in columns)
                )
    plot_init(results, out / "init_signal.png")


def _depth_colors(depths: Sequence[int]) -> dict[int, Any]:
    import matplotlib.pyplot as plt

    ordered = sorted(set(depths))
    cmap = plt.get_cmap("viridis")
    return {d: cmap(i / max(1, len(ordered) - 1) * 0.85) for i, d in enumerate(ordered)}


def plot_init(results: dict[str, Any], path: Path) -> None:
    """Three panels against relative depth (block k of n at (k+0.5)/n): block-output std,
    input-gradient norm (log), ‖F(x)‖/‖x‖; plain dashed, residual solid, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _depth_colors([r["depth"] for r in results["runs"]])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("output_std", "std of block output", False),
        ("input_grad_norm", "‖∂ℓ/∂x‖ at block input (per example)", True),
        ("branch_ratio", "‖F(x)‖ / ‖x‖", False),
    )
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for r in results["runs"]:
            y = np.asarray(r[key])
            x = (np.arange(len(y)) + 0.5) / len(y)
            ax.plot(
                x, y, ls="-" if r["residual"] else "--", color=colors[r["depth"]], label=r["label"]
            )
        ax.set_title(title)
        ax.set_xlabel("relative depth of block (input → output)")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle(
        f"At initialisation, one {results['dataset']} batch of {results['batch_size']} "
        "(BN on batch statistics): plain dashed, residual solid"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- lesion study ---


def load_run(workdir: str | Path, which: str = "latest"):
    """(config, splits, model, variables) of a trained run, from its checkpoint."""
    config, variables = weights.load_variables(workdir, which=which)
    splits = data.load_splits(config.data)
    return config, splits, _base_model(config, splits.num_classes), variables


def lesion_run(
    workdir: str | Path,
    *,
    which: str = "latest",
    ks: Sequence[int] = DEFAULT_KS,
    trials: int = 5,
    examples: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """`diagnostics.lesion_study` of a run's checkpoint on its test split (`examples` > 0: the
    first that many test examples). Adds 'label', 'workdir', 'examples' to the result."""
    log = log or (lambda line: None)
    config, splits, model, variables = load_run(workdir, which)
    test = splits.test if not examples else splits.test.slice(0, min(examples, len(splits.test)))
    ks = [k for k in ks if k <= sum(model.stage_sizes)]

    def batches():
        return data.eval_batches(test, splits, config.eval_batch_size, prefetch_batches=1)

    log(f"{workdir}: {_label(model)}, {len(test)} test examples")
    result = diagnostics.lesion_study(
        model, variables, batches, ks=ks, trials=trials, seed=config.seed, log=log
    )
    return {
        "label": _label(model),
        "residual": bool(model.residual),
        "depth": model.depth,
        "workdir": str(workdir),
        "examples": len(test),
        **result,
    }


def lesion_table(result: dict[str, Any]) -> str:
    """A markdown table: test error with each block removed, then with k random blocks removed."""
    lines = [
        f"### {result['label']} ({result['workdir']}): baseline test error "
        f"{result['baseline_error']:.4f} on {result['examples']} examples",
        "",
        "| removed block | test error | change |",
        "| --- | --- | --- |",
    ]
    base = result["baseline_error"]
    for row in result["single"]:
        lines.append(f"| {row['block']} | {row['error']:.4f} | {row['error'] - base:+.4f} |")
    if result["random"]:
        lines += [
            "",
            "| k random blocks removed | mean error | std | min | max |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in result["random"]:
            e = row["errors"]
            lines.append(
                f"| {row['k']} | {row['mean']:.4f} | {row['std']:.4f} | {min(e):.4f} | {max(e):.4f} |"
            )
    return "\n".join(lines) + "\n"


def plot_lesion(results: Sequence[dict[str, Any]], path: Path) -> None:
    """Left: test error with each single block removed; right: error vs k random blocks removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in results:
        style = dict(ls="-" if r["residual"] else "--", marker="o", ms=3)
        errors = [row["error"] for row in r["single"]]
        (line,) = axes[0].plot(range(1, len(errors) + 1), errors, label=r["label"], **style)
        axes[0].axhline(r["baseline_error"], color=line.get_color(), lw=0.8, ls=":")
        if r["random"]:
            ks = [row["k"] for row in r["random"]]
            axes[1].errorbar(
                ks,
                [row["mean"] for row in r["random"]],
                yerr=[row["std"] for row in r["random"]],
                label=r["label"],
                capsize=3,
                color=line.get_color(),
                **style,
            )
    axes[0].set(
        xlabel="removed block (input → output)",
        ylabel="test error",
        title="one block removed (dotted: nothing removed)",
    )
    axes[1].set(
        xlabel="blocks removed at random",
        ylabel="test error",
        title="k random blocks removed (mean ± std)",
    )
    for ax in axes:
        ax.axhline(0.9, color="gray", lw=0.8, ls="-.")  # chance for 10 classes
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- one run at the end of training ---


def run_block_diagnostics(workdir: str | Path, *, compute: bool = True) -> dict[str, Any]:
    """Per-block diagnostics of one run at the end of training.

    From the last `diag/...` row of its metrics.jsonl when training logged them; otherwise
    (when `compute`) computed from its latest checkpoint on the first training batch.

    Returns {'label', 'depth', 'residual', 'step', 'source' ('logged' | 'checkpoint'),
    'blocks': [{'block', 'index', 'relative_depth', **BLOCK_METRICS}]}; None-free.
    """
    workdir = Path(workdir)
    logged = logged_diagnostics(workdir)
    if logged is not None:
        config = ml_collections.ConfigDict(json.loads((workdir / CONFIG).read_text()))
        model = _base_model(config, 10)  # for its depth and kind only
        step, blocks, source = logged["step"], logged["blocks"], "logged"
    elif compute:
        config, splits, model, variables = load_run(workdir)
        batch = _first_batch(splits, config.batch_size)
        fn = jax.jit(diagnostics.make_block_diagnostics(model))
        values = jax.device_get(fn(variables["params"], variables["batch_stats"], batch))
        per_block = unflatten_diagnostics({k: float(v) for k, v in values.items()})
        names = model.block_names()
        blocks = [
            {
                "block": name,
                "index": k,
                "relative_depth": (k + 0.5) / len(names),
                **{m: per_block[name][m] for m in BLOCK_METRICS},
            }
            for k, name in enumerate(names)
        ]
        step, source = _checkpoint_step(workdir), "checkpoint"
    else:
        raise FileNotFoundError(f"{workdir}/metrics.jsonl holds no diagnostics (diag/...) rows")
    return {
        "label": _label(model),
        "depth": model.depth,
        "residual": bool(model.residual),
        "step": step,
        "source": source,
        "blocks": blocks,
    }


def _checkpoint_step(workdir: Path) -> int | None:
    try:
        return checkpoint.Checkpointer(workdir).latest_step()
    except Exception:  # the step only labels the result: not worth failing for
        return None


# --- CLI ---


def _ints(text: str | None) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()] if text else []


FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """The command, its flags parsed (`python -m resjax.diagnose --help` lists them)."""
    return cli.run(lambda: _diagnose(argv))


def _diagnose(argv: list[str]) -> int:
    if len(argv) > 1:
        raise cli.CommandError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.lesion:
        _lesion_command(Path(FLAGS.out) if FLAGS.out else None)
    elif FLAGS.config is None:
        raise cli.CommandError(
            "give --config=FILE[:ARG] (init diagnostics) or --lesion --workdir=RUN"
        )
    else:
        _init_command(Path(FLAGS.out or "diagnostics_init"))
    return 0


def _lesion_command(out: Path | None) -> None:
    if not FLAGS.workdir:
        raise cli.CommandError("--lesion needs --workdir=RUN[,RUN...] (trained runs)")
    workdirs = [w for w in FLAGS.workdir.split(",") if w]
    out = out or Path(workdirs[0]) / "lesion"
    out.mkdir(parents=True, exist_ok=True)
    ks = _ints(FLAGS.lesion_ks) if FLAGS.lesion_ks is not None else list(DEFAULT_KS)
    results = [
        lesion_run(
            w, which=FLAGS.which, ks=ks, trials=FLAGS.lesion_trials, examples=FLAGS.lesion_examples
        )
        for w in workdirs
    ]
    (out / "lesion.json").write_text(json.dumps(results, indent=1))
    tables = "\n".join(lesion_table(r) for r in results)
    (out / "lesion.md").write_text(tables)
    plot_lesion(results, out / "lesion.png")
    print(tables)
    print(f"wrote {out}/lesion.png, lesion.json, lesion.md")


def _init_command(out: Path) -> None:
    depths = _ints(FLAGS.depths)
    if not depths:
        depths = sorted({_base_model(FLAGS.config, 10).depth, *DEFAULT_DEPTHS})
    results = init_diagnostics(FLAGS.config, depths, batch_size=FLAGS.batch_size or None)
    write_init(results, out)
    for r in results["runs"]:
        g = r["input_grad_norm"]
        print(
            f"{r['label']:>11}: ‖∂ℓ/∂x‖ first/last block {g[0]:.3g}/{g[-1]:.3g} "
            f"(×{g[0] / g[-1]:.3g}), output std first/last {r['output_std'][0]:.3g}/"
            f"{r['output_std'][-1]:.3g}, mean ‖F(x)‖/‖x‖ {np.mean(r['branch_ratio']):.3g}"
        )
    print(f"wrote {out}/init_signal.png, init_signal.json, init_signal.csv")


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file[:ARG] (init diagnostics).")
    flags.DEFINE_string(
        "depths", None, "Comma-separated depths; default: the config's + 20,56,110."
    )
    flags.DEFINE_integer("batch_size", 0, "Init diagnostics batch; 0 = config.batch_size.")
    flags.DEFINE_string("out", None, "Output folder (default: ./diagnostics_init, RUN/lesion).")
    flags.DEFINE_bool("lesion", False, "Lesion study of trained runs (--workdir).")
    flags.DEFINE_string("workdir", None, "Trained run(s), comma-separated (--lesion).")
    flags.DEFINE_string("which", "latest", "Checkpoint: 'latest' or 'best'.")
    flags.DEFINE_string("lesion_ks", None, "Blocks removed at random, e.g. 1,2,4,8; '' = none.")
    flags.DEFINE_integer("lesion_trials", 5, "Random draws per k.")
    flags.DEFINE_integer("lesion_examples", 0, "Test examples used; 0 = the whole test split.")


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser)
