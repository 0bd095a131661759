"""Plain vs residual networks across depth: He et al. 2015's degradation problem, as one command.

    python -m resjax.train --config=configs/depth_sweep.py --workdir=runs/depth_sweep
    python -m resjax.report runs/depth_sweep          # the table and plots again, on demand

runs the default sweep: plain and residual CIFAR-style nets of depth 20, 38 and 56 on
Fashion-MNIST, one seed, each point in `runs/depth_sweep/<point>/` (e.g. `plain_d56_s0`), then
writes `report.md`, `report.csv` and the plots there; `./launch.sh configs/depth_sweep.py
--parallel 2` runs two points at a time. Record: experiments/2026-12-02_depth_sweep/ (the
recipe search, seed 0 of this recipe; its three-seed run and the wall time on a quiet machine
are still to be measured there).

One point is one string, which reproduces that point of the sweep exactly:

    python -m resjax.train --config=configs/depth_sweep.py:depth=56,plain=1 --workdir=runs/p56

Point keys: depth (6n+2), plain (0|1), seed, recipe ('fmnist'|'fmnist_long'|'cifar10'), ordering
('post'|'pre'), shortcut ('A'|'B'|'C'|'conv'). A bare word names a sweep instead:
`:fmnist_3seeds` (the default with seeds 0-2, mean ± std), `:converged` (the default's nets
on the full 55k split for 10 epochs, seeds 0-1: hours on a CPU), `:cifar10` (He et al.'s CIFAR-10
sweep, 20/32/44/56/110, for GPUs), `:preact` (post- vs pre-activation), `:shortcut` (shortcut
kinds A/B/C), `:cifar10_preact`, `:cifar10_shortcut`;
`python -m resjax.sweep list configs/depth_sweep.py:cifar10` prints its points.

Why the default recipe looks the way it does. He et al.'s Fig. 6 shows both halves at once:
deeper plain nets end with higher training error (20 < 32 < 44 < 56), deeper residual nets with
lower. On two CPU cores in ~15 minutes:
- Depths 20/38/56 (n = 3, 6, 9 blocks per stage), widths 8/16/32 (He et al.'s halved). A
  shallowest depth of 8 was tried: plain-8 is so small (19k parameters) that plain-20 beats it
  by capacity alone, which hides the plain half.
- A 10k-example training subset (the last 2k of the first 12k are the validation split), no
  augmentation, ~9 passes: on the full 55k split, 1,800 steps of 64 (2 passes) left
  ResNet-20 and ResNet-56 within 0.5 points of each other (both still far from fitting the
  data); with several passes over a fixed set, the capacity that depth adds to a residual
  net shows in its training error from depth 20 to 38 (not yet, within noise, from 38 to 56:
  see the record), while the deep plain nets stay hard to optimise.
- Batch 64, lr 0.05, ÷10 at 50% and 75% of 1,400 steps, He et al.'s momentum and weight decay.
"Final training error" is the mean error of the training batches in the last 140 steps (about
one pass over the subset), as He et al. plot training error; the report says so too.
"""

from __future__ import annotations

from resjax.config import base_config, lock, parse_point, point_name_of, sweep_points

# --- The default sweep's recipe: the numbers the docstring reports ---

_DEPTH = dict(depths=(20, 38, 56), plain=(1, 0), seeds=(0,))  # n = 3, 6, 9 blocks per stage


def _fast_fmnist(c) -> None:
    """Sized for the whole default sweep to run in under 15 minutes on 2 CPU cores."""
    c.data.name = "fashion_mnist"
    c.data.train_split = "train[:12000]"  # 10k to train on, the last 2k for validation:
    c.data.val_examples = 2000  # nine passes over it fit the budget (see the docstring)
    c.data.augment = "none"  # a fixed training set: training error is what the optimiser fits
    c.model.overrides.widths = (8, 16, 32)  # He et al.'s 16/32/64 halved (4x fewer FLOPs)
    c.model.overrides.stem_width = 8
    c.batch_size = 64
    c.total_steps = 1400  # 89,600 images: ~9 epochs of the 10k
    c.optim.lr = 0.05  # from the first recipe search: plain-56 trains at all at this rate
    c.optim.decay_steps = (700, 1050)  # ÷10 at 50% and 75%, as He et al.'s 32k/48k of 64k
    c.log_every_steps = 140  # final training error: the last 140 steps, ~one pass (8,960 images)
    c.diagnostics_every_steps = 1400  # per-block gradient flow at the end, for the report
    c.eval_every_steps = 0  # evaluate once, at the end
    c.eval_train_at_end = True  # final training error: the final weights on all 10k examples
    c.checkpoint_every_steps = 700
    c.eval_batch_size = 500


# --- Named sweeps: depths, families (plain flags), seeds, and the ablated field's values ---

_PREACT = dict(_DEPTH, plain=(0,), ordering=("post", "pre"))  # He et al. 2016's ordering
_SHORTCUT = dict(_DEPTH, plain=(0,), shortcut=("A", "B", "C"))  # He et al. 2015, Table 3
_CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # He et al. 2015, Fig. 6 and Table 6
SWEEPS = {
    "fmnist": dict(_DEPTH, recipe="fmnist"),  # the default: ~15 min on 2 CPU cores
    "fmnist_3seeds": dict(_DEPTH, seeds=(0, 1, 2), recipe="fmnist"),  # mean ± std; ~45 min
    "converged": dict(_DEPTH, seeds=(0, 1), recipe="fmnist_long"),  # hours on 2 CPU cores
    "preact": dict(_PREACT, recipe="fmnist"),
    "shortcut": dict(_SHORTCUT, recipe="fmnist"),
    "cifar10": dict(_DEPTH, depths=_CIFAR_DEPTHS, recipe="cifar10"),
    "cifar10_preact": dict(_PREACT, depths=_CIFAR_DEPTHS, recipe="cifar10"),
    "cifar10_shortcut": dict(_SHORTCUT, depths=_CIFAR_DEPTHS, recipe="cifar10"),
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
        _he_cifar10(c, p["depth"])
    elif p["recipe"] == "fmnist_long":
        _converged_fmnist(c)
    else:
        _fast_fmnist(c)
    return lock(c)


def _converged_fmnist(c) -> None:
    """The default's networks and optimiser on the whole 55k training split, with the step
    schedule run to its end over 10 epochs: does the degradation outlast convergence?"""
    _fast_fmnist(c)
    c.data.train_split = "train"
    c.data.val_examples = 5000  # 55k/5k
    c.total_steps = None
    c.total_epochs = 10.0  # 8,590 steps of 64
    c.optim.decay_steps = None
    c.optim.decay_epochs = (5.0, 7.5)  # ÷10 at 50% and 75%, as the default
    c.log_every_steps = 430  # final training error: the last 430 steps, 27,520 images
    c.diagnostics_every_steps = 0
    c.eval_every_steps = 859  # every epoch
    c.checkpoint_every_steps = 859


def _he_cifar10(c, depth: int) -> None:
    """He et al. 2015, sec. 4.2: 64k steps of batch 128 on 45k/5k CIFAR-10 (a GPU job)."""
    c.data.name = "cifar10"
    c.data.val_examples = 5000  # 45k/5k train/val split
    c.data.augment = "pad_crop_flip"  # 4-px pad, 32x32 crop, horizontal flip
    c.batch_size = 128
    c.total_steps = 64_000
    c.optim.lr = 0.1
    c.optim.decay_steps = (32_000, 48_000)  # ÷10 at 32k and 48k
    if depth >= 110:
        # "0.1 is slightly too large to start converging": 0.01 until training error < 80%,
        # about 400 iterations, then 0.1 (He et al. 2015, sec. 4.2).
        c.optim.warmup_steps = 400
        c.optim.warmup_lr = 0.01
    c.log_every_steps = 200
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000


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
