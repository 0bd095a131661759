"""Plain vs residual networks across depth: He et al. 2015's degradation problem, as one command.

    python -m resjax.train --config=configs/depth_sweep.py --workdir=runs/depth_sweep
    python -m resjax.report runs/depth_sweep          # the table and plots again, on demand

runs the default sweep: plain and residual pre-activation nets of depth 14, 32 and 56 on
Fashion-MNIST, one seed, each point in `runs/depth_sweep/<point>/` (e.g. `plain_pre_d56_s0`),
then writes `report.md`, `report.csv` and the plots there; `./launch.sh configs/depth_sweep.py
--parallel 2` runs two points at a time. Record: experiments/2026-12-02_depth_sweep/ (the recipe
search, the three-seed run, the wall time).

One point is one string, which reproduces that point of the sweep exactly:

    python -m resjax.train --config=configs/depth_sweep.py:depth=56,plain=1,ordering=pre \
        --workdir=runs/p56

Point keys: depth (6n+2), plain (0|1), seed, recipe ('fmnist'|'fmnist_long'|'cifar10'), ordering
('post'|'pre'), shortcut ('A'|'B'|'C'|'conv'). A bare word names a sweep instead:
`:fmnist_3seeds` (the default with seeds 0-2, mean ± std), `:converged` (the default's nets
and data for 40 passes instead of 12.8, seeds 0-1: 1 h 04 min on 2 CPU cores), `:cifar10` (He et al.'s CIFAR-10
sweep, 20/32/44/56/110, post-activation as in their Fig. 6, for GPUs), `:preact` (post- vs
pre-activation), `:shortcut` (shortcut kinds A/B/C), `:cifar10_preact`, `:cifar10_shortcut`;
`python -m resjax.sweep list configs/depth_sweep.py:cifar10` prints its points.

Why the default recipe looks the way it does. He et al.'s Fig. 6 shows both halves at once:
deeper plain nets end with higher training error, deeper residual nets with lower. The default
has to show both within ~15 minutes of two CPU cores: `./launch.sh configs/depth_sweep.py
--parallel 2` took 11 min 49 s from a fresh clone, data preparation and report included (the
record has every probe, and the three-seed run):
- Depths 14/32/56 (n = 2, 5, 9 blocks per stage), widths 8/16/32 (He et al.'s halved, 4x fewer
  FLOPs). Widely spaced: at 20/38/56 the residual nets' gain per step of depth (~0.3 points)
  was within the seed spread (0.3-0.7), and a cheaper shallow end pays for the deep end. Depth
  8 was tried: plain-8 (19k parameters) is beaten by plain-20 on capacity alone, which hides the
  plain half; plain-14 is not (8.0% against plain-20's 10.1%, three seeds).
- Pre-activation blocks (He et al. 2016: BN-ReLU-conv, nothing after the addition). A plain
  net is the same network in either ordering (conv-BN-ReLU repeated, the same parameters and
  initial values: plain-56 ends at 21.34% either way), so the plain half is exactly He et al.
  2015's plain nets; only the residual nets' identity path changes. With post-activation
  residual blocks at this width and budget, training error bottomed out at depth 38 and
  ResNet-56 ended above it (5.7 / 3.9 / 4.7 / ~5% at depths 20/38/44/56): their deep nets fit
  more slowly in 1,000 steps. With the identity path kept clean, the deeper residual net fits
  better at every step of depth.
- A 5k-example training subset (the first 7k of the train split, its last 2k the validation
  split), no augmentation, 1,000 steps of 64 (12.8 passes): several passes over a fixed set let
  depth's capacity show in a residual net's training error; on the full split in this budget
  ResNet-20 and ResNet-56 ended within 0.5 points.
- lr 0.05 for batch 64 (He et al.'s 0.1 per 128), reached by a linear warm-up over the first 100
  steps (the deep nets' first steps at full rate cost them for the rest of the run, as He et
  al. found for ResNet-110), ÷10 at 50% and 75% of the steps, momentum 0.9, weight decay 1e-4.
"Final training error" is the error of the final weights on the 5k training examples
(BatchNorm in evaluation mode, one pass, no augmentation): the running error of the last window
of training batches is also reported, but it moves by about a point between windows of one run.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from resjax.config import base_config, he2015_cifar10, lock

# --- A point: one string per run, its grammar and its name ---

# The keys a point string ('depth=56,plain=1,seed=0') may set, with their defaults; each value
# is parsed with its default's type. Point strings and names leave out the last three at default.
POINT_DEFAULTS = {
    "depth": 20,
    "plain": 0,
    "seed": 0,
    "recipe": "fmnist",
    "ordering": "post",
    "shortcut": "A",
}
RECIPES = ("fmnist", "fmnist_long", "cifar10")


def parse_point(arg: str) -> dict[str, Any]:
    """`'depth=56,plain=1'` -> {'depth': 56, 'plain': 1, 'seed': 0, ...} (defaults filled in)."""
    values = dict(POINT_DEFAULTS)
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in POINT_DEFAULTS:
            raise ValueError(
                f"depth_sweep point {arg!r}: unknown key {key!r}; allowed keys: "
                f"{', '.join(POINT_DEFAULTS)} (e.g. 'depth=56,plain=1,seed=0')"
            )
        values[key] = type(POINT_DEFAULTS[key])(value.strip())
    if values["recipe"] not in RECIPES:
        raise ValueError(f"depth_sweep recipe must be one of {RECIPES}; got {values['recipe']!r}")
    if values["plain"] not in (0, 1):
        raise ValueError(f"depth_sweep plain must be 0 or 1; got {values['plain']}")
    depth = values["depth"]
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"depth_sweep depth must be 6n+2 (8, 20, 32, 44, 56, 110, ...); got {depth}"
        )
    return values


def _not_default(values: dict[str, Any]) -> list[str]:
    return [k for k in ("recipe", "ordering", "shortcut") if values[k] != POINT_DEFAULTS[k]]


def sweep_points(
    *,
    depths: tuple[int, ...],
    plain: tuple[int, ...],
    seeds: tuple[int, ...],
    recipe: str = POINT_DEFAULTS["recipe"],
    ordering: tuple[str, ...] = (POINT_DEFAULTS["ordering"],),
    shortcut: tuple[str, ...] = (POINT_DEFAULTS["shortcut"],),
) -> list[str]:
    """Every combination as a point string, families outermost and seeds innermost."""
    points = []
    for p, o, s, d, seed in itertools.product(plain, ordering, shortcut, depths, seeds):
        values = dict(depth=d, plain=p, seed=seed, recipe=recipe, ordering=o, shortcut=s)
        points.append(
            ",".join(f"{k}={values[k]}" for k in ("depth", "plain", "seed", *_not_default(values)))
        )
    return points


def point_name_of(values: dict[str, Any]) -> str:
    """{'depth': 56, 'plain': 1, 'seed': 0, ...} -> 'plain_d56_s0'; 'cifar10_' in front for
    another recipe, '_pre' or '_B' after the family for another ordering or shortcut."""
    name = "plain" if values["plain"] else "resnet"
    if values["recipe"] != POINT_DEFAULTS["recipe"]:
        name = f"{values['recipe']}_{name}"
    for key in ("ordering", "shortcut"):
        if values[key] != POINT_DEFAULTS[key]:
            name += f"_{values[key]}"
    return f"{name}_d{values['depth']}_s{values['seed']}"


# --- The default sweep's recipe: the numbers the docstring reports ---

# n = 2, 5, 9 pre-activation blocks per stage; families outermost, plain first
_DEPTH = dict(depths=(14, 32, 56), plain=(1, 0), seeds=(0,), ordering=("pre",))


def _fast_fmnist(c) -> None:
    """Sized for the whole default sweep to run in under 15 minutes on 2 CPU cores."""
    c.data.name = "fashion_mnist"
    c.data.train_split = "train[:7000]"  # 5k to train on, the last 2k for validation:
    c.data.val_examples = 2000  # 12.8 passes over it fit the budget (see the docstring)
    c.data.augment = "none"  # a fixed training set: training error is what the optimiser fits
    c.model.overrides.widths = (8, 16, 32)  # He et al.'s 16/32/64 halved (4x fewer FLOPs)
    c.model.overrides.stem_width = 8
    c.batch_size = 64
    c.total_steps = 1000  # 64,000 images: 12.8 epochs of the 5k
    c.optim.lr = 0.05  # He et al.'s 0.1 per 128 examples
    c.optim.warmup_steps = 100  # linear ramp from 0: the deep nets' first steps stay stable
    c.optim.decay_steps = (500, 750)  # ÷10 at 50% and 75%, as He et al.'s 32k/48k of 64k
    c.log_every_steps = 100  # the running training error: 6,400 images, ~1.3 passes
    c.eval_train_at_end = True  # final training error: the final weights on all 5k examples
    c.diagnostics_every_steps = 1000  # per-block gradient flow at the end, for the report
    c.eval_every_steps = 0  # evaluate once, at the end
    c.checkpoint_every_steps = 500
    c.eval_batch_size = 500


# The committed three-seed run of the default's points (fmnist_3seeds): each sweep's report
# shows where its settings of the same name sit against it (mean ± std per setting).
REFERENCE = (
    Path(__file__).resolve().parents[1] / "experiments/2026-12-02_depth_sweep/report_summary.csv"
)

# --- Named sweeps: depths, families (plain flags), seeds, and the ablated field's values ---

_PREACT = dict(_DEPTH, plain=(0,), ordering=("post", "pre"))  # He et al. 2016's ordering
_SHORTCUT = dict(_DEPTH, plain=(0,), shortcut=("A", "B", "C"))  # kinds of He et al. 2015, Tab. 3
_CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # He et al. 2015, Fig. 6 and Table 6
SWEEPS = {
    "fmnist": dict(_DEPTH, recipe="fmnist"),  # the default: 12 min on 2 CPU cores
    "fmnist_3seeds": dict(_DEPTH, seeds=(0, 1, 2), recipe="fmnist"),  # mean ± std; ~35 min
    "converged": dict(_DEPTH, seeds=(0, 1), recipe="fmnist_long"),  # 1 h 04 min on 2 CPU cores
    "preact": dict(_PREACT, recipe="fmnist"),
    "shortcut": dict(_SHORTCUT, recipe="fmnist"),
    # He et al. 2015's CIFAR-10 runs, post-activation as in their Fig. 6 and Table 6.
    "cifar10": dict(_DEPTH, depths=_CIFAR_DEPTHS, ordering=("post",), recipe="cifar10"),
    "cifar10_preact": dict(_PREACT, depths=_CIFAR_DEPTHS, recipe="cifar10"),
    "cifar10_shortcut": dict(_SHORTCUT, depths=_CIFAR_DEPTHS, ordering=("post",), recipe="cifar10"),
}


def get_config(arg: str | None = None):
    """The config of one point, `arg` = 'key=value,...' (see the module docstring); a sweep's
    name (or nothing) gives that sweep's first point."""
    p = parse_point(arg if arg and "=" in arg else _points(arg or "fmnist")[0])
    c = base_config()
    c.seed = p["seed"]
    c.model.name = f"{'plain' if p['plain'] else 'resnet'}{p['depth']}"
    c.model.overrides.ordering = p["ordering"]
    c.model.overrides.shortcut = p["shortcut"]
    if p["recipe"] == "cifar10":
        he2015_cifar10(c, p["depth"])
    elif p["recipe"] == "fmnist_long":
        _converged_fmnist(c)
    else:
        _fast_fmnist(c)
    return lock(c)


def _converged_fmnist(c) -> None:
    """The default's networks, data and optimiser with the step schedule stretched to 40 passes
    over the 5k subset (3.1x the default's steps): does the degradation outlast convergence?"""
    _fast_fmnist(c)
    c.total_steps = 3120  # 40 epochs of the 5k subset (78 steps each)
    c.optim.decay_steps = (1560, 2340)  # ÷10 at 50% and 75%, as the default
    c.log_every_steps = 78  # the running training error: the last epoch
    c.diagnostics_every_steps = 3120
    c.eval_every_steps = 390  # val and test every 5 epochs, for the curves
    c.checkpoint_every_steps = 390


def _points(name: str) -> list[str]:
    if name not in SWEEPS:
        raise ValueError(
            f"unknown depth_sweep sweep {name!r}; named sweeps: {', '.join(SWEEPS)} "
            "(or a single point 'depth=56,plain=1,...')"
        )
    return sweep_points(**SWEEPS[name])


def sweep(arg: str | None = None) -> list[str] | None:
    """The points of the sweep `arg` names ('' = the default), or None when `arg` is one point."""
    if arg and "=" in arg:
        return None
    return _points(arg or "fmnist")


def point_name(point: str) -> str:
    """'depth=56,plain=1,seed=0' -> 'plain_d56_s0'; ablations add '_pre' or '_B' etc."""
    return point_name_of(parse_point(point))
