"""A trained run's weights, read from its checkpoints: for evaluation, export and diagnostics.

    loaded = load_checkpoint("runs/r20")              # the latest step that reads
    loaded = load_checkpoint("runs/r20", which="best")  # lowest validation error
    loaded = load_checkpoint("runs/r20", step=2000)     # one kept step
    loaded.variables, loaded.config, loaded.portable()  # the last is what export writes

Nothing in the workdir is changed (a training run may be using it), no model is needed to read
them, and any device count reads them.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resjax.checkpoint import Checkpointer, Skipped
from resjax.config import model_overrides
from resjax.models.portable import Portable
from resjax.workdir import CHECKPOINTS


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A run's weights as `load_checkpoint` read them.

    Attributes:
      config: the run's config, as recorded beside the weights.
      variables: {'params', 'batch_stats'} as host numpy arrays.
      step: the step they are from.
      skipped: the steps tried before it that could not be read (left in place).
    """

    config: ml_collections.ConfigDict
    variables: dict[str, Any]
    step: int
    skipped: list[Skipped]

    def portable(self) -> Portable:
        """The weights with the model they belong to, as resjax.export writes them."""
        num_classes = int(np.shape(self.variables["params"]["classifier"]["bias"])[0])
        return Portable(
            model_name=self.config.model.name,
            overrides=model_overrides(self.config, num_classes),
            config=self.config.to_dict(),
            variables=self.variables,
        )

    def warnings(self) -> list[str]:
        """One line per skipped step: which, why, and that this step is used instead."""
        return [f"warning: {s.describe(self.step)}" for s in self.skipped]


def checkpoint_steps(workdir: str | Path) -> list[int]:
    """The complete checkpoints a run's workdir holds, oldest first."""
    return sorted(Checkpointer(workdir).steps_on_disk())


def load_checkpoint(workdir: str | Path, which: str = "latest", step: int | None = None) -> Loaded:
    """The weights of a run's latest or best checkpoint that can be read, or of `step`, and
    which step that is.

    For evaluation, export and diagnostics: no optimizer state, no model needed to restore,
    nothing in the workdir changed. A step that cannot be read is skipped for the next one
    (listed in `skipped`; not when `step` is given); CheckpointUnreadableError when none can be
    read.
    """
    workdir = Path(workdir)
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best'; got {which!r}")
    if not (workdir / CHECKPOINTS).is_dir():
        raise FileNotFoundError(f"no checkpoints in {workdir} (expected {workdir}/{CHECKPOINTS})")
    # Without metrics files (no validation split) "best" falls back to the latest, as in Orbax.
    ckpt = Checkpointer(workdir, track_best=True)
    if step is not None and step not in ckpt.steps_on_disk():
        raise FileNotFoundError(
            f"no complete checkpoint at step {step} in {workdir}/{CHECKPOINTS}; there are: "
            f"{', '.join(map(str, sorted(ckpt.steps_on_disk()))) or 'none'}"
        )
    found = ckpt.read_host(which, steps=None if step is None else [step])
    variables = {"params": found.state["params"], "batch_stats": found.state["batch_stats"]}
    return Loaded(
        config=ml_collections.ConfigDict(found.meta["config"]),
        variables=jax.tree.map(np.asarray, variables),
        step=found.step,
        skipped=found.skipped,
    )


def load_variables(
    workdir: str | Path, which: str = "latest"
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """(config, {'params', 'batch_stats'}) of a run's latest or best readable checkpoint, as
    host arrays; a step skipped because it cannot be read is said on stderr (load_checkpoint)."""
    loaded = load_checkpoint(workdir, which)
    if jax.process_index() == 0:
        for line in loaded.warnings():
            print(line, file=sys.stderr)
    return loaded.config, loaded.variables
