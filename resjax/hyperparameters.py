"""Hyperparameters that cannot train, refused before anything runs: `check(config)`.

A negative learning rate trains to a test loss in the hundreds and exits 0; a warm-up longer than
the run never reaches the learning rate it was asked for. `check` raises one ValueError line that
names the key, the value and what is allowed. Commands call it on the config they built (train,
sweep points, launch.sh's points through them) and training calls it again with the data's steps
per epoch. Imports nothing but the standard library: no JAX.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Keys of the schedule that a shortened run (`--config.total_steps` alone) keeps as they were.
SCHEDULE_KEYS = ("optim.warmup_steps", "optim.decay_steps", "optim.decay_epochs")


def check(config: Any, steps_per_epoch: int | None = None, *, truncated: bool = False) -> None:
    """Raises ValueError, in one line saying what is allowed, for hyperparameters that cannot
    train: a learning rate <= 0, a negative weight decay, warm-up lr or warm-up length, a
    momentum outside [0, 1), a decay factor <= 0, a run of no steps (total_steps 0 is refused:
    nothing would train), and a warm-up or a decay boundary at or past the end of the run.

    Args:
      config: a resjax config (resjax.config.base_config's keys).
      steps_per_epoch: the data's steps per epoch, when known; None before the data is read (a
        sweep's points are checked up front): lengths in epochs are then compared with epochs.
      truncated: the run is the first `total_steps` steps of its config's longer schedule
        (`--config.total_steps=N` given alone, to shorten a run): its warm-up and decay
        boundaries may lie past the end.
    """
    optim = config.optim
    _at_least("optim.lr", optim.lr, 0, strict=True)
    _at_least("optim.weight_decay", optim.weight_decay, 0)
    if not 0 <= optim.momentum < 1:
        raise ValueError(
            f"config.optim.momentum must be in [0, 1) (0: plain SGD; He et al.: 0.9); "
            f"got {optim.momentum}"
        )
    _at_least("optim.decay_factor", optim.decay_factor, 0, strict=True)
    _at_least("optim.warmup_lr", optim.warmup_lr, 0, note="0: a linear ramp from 0 to lr")
    _at_least("optim.warmup_steps", optim.warmup_steps, 0)
    if config.total_steps is not None:
        _at_least("total_steps", config.total_steps, 1, note="0 steps would train nothing")
    elif config.total_epochs is not None:
        _at_least("total_epochs", config.total_epochs, 0, strict=True)
    for key in ("decay_steps", "decay_epochs"):
        boundaries = optim.get(key)
        if boundaries and any(b <= 0 for b in boundaries):
            raise ValueError(f"config.optim.{key} must be positive; got {tuple(boundaries)}")
    if truncated:
        return
    steps = _run_length(config, steps_per_epoch)  # None: in epochs, the data not read yet
    if steps is not None:
        epochs = steps / steps_per_epoch if steps_per_epoch else None
    else:
        epochs = config.total_epochs
    if steps is not None and optim.warmup_steps and optim.warmup_steps >= steps:
        raise ValueError(
            f"config.optim.warmup_steps {optim.warmup_steps} is as long as the run or longer "
            f"({_length(config, steps)}): the lr would never reach config.optim.lr {optim.lr}; "
            f"allowed: 0 <= warmup_steps < {steps}"
        )
    if optim.decay_steps is not None:
        _past_the_end("decay_steps", optim.decay_steps, steps, _length(config, steps))
    elif optim.decay_epochs and epochs is not None:
        _past_the_end("decay_epochs", optim.decay_epochs, epochs, f"{epochs:g} epochs")


def truncated_by(overrides: Iterable[str]) -> bool:
    """Whether command-line overrides (dotted keys) shorten a run and keep its schedule: they
    set total_steps and none of SCHEDULE_KEYS."""
    keys = set(overrides)
    return "total_steps" in keys and not keys & set(SCHEDULE_KEYS)


def _at_least(key: str, value: Any, low: float, *, strict: bool = False, note: str = "") -> None:
    if value < low or (strict and value == low):
        allowed = f"{'>' if strict else '>='} {low}" + (f" ({note})" if note else "")
        raise ValueError(f"config.{key} must be {allowed}; got {value}")


def _run_length(config: Any, steps_per_epoch: int | None) -> int | None:
    """The run's steps, as resjax.optim.steps_from counts them; None when not known yet."""
    if config.total_steps is not None:
        return int(config.total_steps)
    if config.total_epochs is not None and steps_per_epoch:
        return max(1, round(config.total_epochs * steps_per_epoch))
    return None


def _length(config: Any, steps: int | None) -> str:
    if config.total_steps is not None:
        return f"total_steps {steps}"
    return f"total_epochs {config.total_epochs:g}, {steps} steps"


def _past_the_end(key: str, boundaries: Any, end: float | None, length: str) -> None:
    if end is None:
        return
    late = [b for b in boundaries if b >= end]
    if late:
        raise ValueError(
            f"config.optim.{key} {tuple(boundaries)}: {late[0]} is at or past the end of the run "
            f"({length}), so its decay never happens; allowed: boundaries below {end:g}"
        )
