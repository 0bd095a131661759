"""Optimiser and learning-rate schedule from a config, all durations already in steps.

He et al. 2015 (sec. 4.2, CIFAR): SGD, momentum 0.9, weight decay 1e-4 on every weight (L2, so
its gradient goes through momentum), lr 0.1 divided by 10 at 32k and 48k steps, 64k in all;
ResNet-110 warms up at lr 0.01 for ~400 steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import optax

SCHEDULES = ("step", "cosine", "constant")


def steps_from(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Total training steps: `total_steps` when set (it wins, so that `--config.total_steps=N`
    shortens any config), else `total_epochs` converted once."""
    if config.total_steps is not None:
        return int(config.total_steps)
    if config.total_epochs is None:
        raise ValueError("set config.total_steps or config.total_epochs; both are None")
    return max(1, round(config.total_epochs * steps_per_epoch))


def decay_boundaries(optim: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, ...]:
    """Step-decay boundaries in steps: `decay_steps` when set, else `decay_epochs` converted."""
    if optim.decay_steps is not None:
        return tuple(int(s) for s in optim.decay_steps)
    return tuple(round(e * steps_per_epoch) for e in (optim.decay_epochs or ()))


def learning_rate_schedule(
    optim: ml_collections.ConfigDict, total_steps: int, boundaries: Sequence[int]
) -> optax.Schedule:
    """The configured schedule, with an optional warm-up in front.

    Warm-up is either a constant `warmup_lr` (He et al.'s 0.01 for ResNet-110) or, when
    `warmup_lr` is 0, a linear ramp from 0 to `lr` (Goyal et al. 2017).
    """
    if optim.schedule not in SCHEDULES:
        raise ValueError(
            f"config.optim.schedule must be one of {SCHEDULES}; got {optim.schedule!r}"
        )
    warmup = int(optim.warmup_steps)
    if optim.schedule == "step":
        # Boundaries count from step 0 of the run (the paper's iteration numbers), so the decay
        # schedule is shifted by the warm-up inside join_schedules.
        main = optax.piecewise_constant_schedule(
            optim.lr, {max(1, b - warmup): optim.decay_factor for b in boundaries}
        )
    elif optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(optim.lr, max(1, total_steps - warmup))
    else:
        main = optax.constant_schedule(optim.lr)
    if warmup <= 0:
        return main
    if optim.warmup_lr > 0:
        ramp = optax.constant_schedule(optim.warmup_lr)
    else:
        ramp = optax.linear_schedule(0.0, optim.lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def _decay_mask(params) -> object:
    """True for weights that are decayed when BN parameters and biases are excluded."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim > 1 and "bn" not in jax.tree_util.keystr(path), params
    )


def make_optimizer(
    optim: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """SGD with momentum and weight decay, L2-style (He et al.) or decoupled (SGDW)."""
    mask = _decay_mask if optim.exclude_bn_and_bias else None
    parts = []
    if optim.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.weight_decay and not optim.decoupled_weight_decay:
        # L2: wd·w joins the gradient before momentum, exactly as a 0.5·wd·|w|² loss term.
        parts.append(optax.add_decayed_weights(optim.weight_decay, mask))
    if optim.momentum:
        parts.append(optax.trace(decay=optim.momentum, nesterov=optim.nesterov))
    if optim.weight_decay and optim.decoupled_weight_decay:
        # Decoupled (Loshchilov & Hutter): decay after momentum, still scaled by the lr.
        parts.append(optax.add_decayed_weights(optim.weight_decay, mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts)
