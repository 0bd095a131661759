"""What the instruments measure: a run's weights (a portable weights file or a workdir's
checkpoint), its weights at step 0, and a fixed set of its training examples.

The examples are the first `count` of the run's training part (its train split minus the
validation examples), in order, without augmentation, normalised as in training: the same
examples for every point, every net and every rerun, named in every output so anyone can
recompute a number.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from resjax import data, weights
from resjax.config import data_config_of
from resjax.models import load_params
from resjax.models.portable import Portable
from resjax.training.step import create_train_state


@dataclasses.dataclass(frozen=True)
class Run:
    """Weights to study, and where they came from.

    Attributes:
      label: 'ResNet-56' or 'plain-56' (for legends), else the model name.
      source: the weights file or workdir as given.
      step: the checkpoint's step (None for a weights file).
      weights: the network, its variables and its recorded training config.
    """

    label: str
    source: str
    step: int | None
    weights: Portable

    @property
    def config(self) -> ml_collections.ConfigDict:
        if self.weights.config is None:
            raise ValueError(
                f"{self.source} records no training config: its data, normalisation and seed "
                "are unknown (export weights from a run with `python -m resjax.export`)"
            )
        return ml_collections.ConfigDict(self.weights.config)


def label_of(weights: Portable) -> str:
    model = weights.model()
    return f"{'ResNet' if model.residual else 'plain'}-{model.depth}"


def load_run(path: str | Path, *, step: int | None = None) -> Run:
    """A weights file, or a workdir's latest readable checkpoint (or the one at `step`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a weights file or a workdir)")
    if not path.is_dir():
        if step is not None:
            raise ValueError(f"{path} is a weights file: it has no steps to choose from")
        portable = load_params(path)
        return Run(label_of(portable), str(path), None, portable)
    loaded = weights.load_checkpoint(path, step=step)
    portable = loaded.portable()
    return Run(label_of(portable), str(path), loaded.step, portable)


def kept_steps(workdir: str | Path) -> list[int]:
    """The complete checkpoints of a run, oldest first."""
    return weights.checkpoint_steps(workdir)


def initial_variables(run: Run, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """The run's variables at step 0, as its seed makes them (`create_train_state`; the
    optimizer does not touch initialisation, so none is needed)."""
    state = create_train_state(run.config, run.weights.model(), optax.identity(), image_shape)
    return jax.tree.map(np.asarray, {"params": state.params, "batch_stats": state.batch_stats})


@dataclasses.dataclass(frozen=True)
class Examples:
    """A fixed set of training examples, in batches ready for `eval_sums`.

    Attributes:
      batches: host batches {'image': uint8 [B,H,W,C], 'label', 'mask'} (the last padded).
      splits: the dataset (its `normalize_images` turns the uint8 images into network input).
      description: dataset, split, which examples, how many: for every output's record.
    """

    batches: list[dict[str, np.ndarray]]
    splits: data.Splits
    description: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.description["count"])


def training_examples(
    run: Run, count: int, batch_size: int, data_dir: str | None = None
) -> Examples:
    """The first `count` examples of the run's training part (not augmented) in batches of
    `batch_size`; `count` 0 means all of them."""
    if count < 0 or batch_size < 1:
        raise ValueError(f"examples must be >= 0 and batch size >= 1; got {count}, {batch_size}")
    data_config = data_config_of(run.weights.config, None, data_dir)
    splits = data.load_splits(data_config)
    available = len(splits.train)
    count = available if count == 0 else count
    if count > available:
        raise ValueError(
            f"asked for {count} training examples; {run.source}'s training part has {available}"
        )
    subset = splits.train.slice(0, count)
    batch_size = min(batch_size, count)
    batches = list(
        data.eval_batches(
            subset,
            splits,
            batch_size,
            prefetch_batches=0,
            process_index=0,  # every process evaluates its points on every example
            process_count=1,
            normalize_on_host=False,
        )
    )
    description = {
        "dataset": data_config.name,
        "train_split": data_config.train_split,
        "val_examples": int(data_config.val_examples),
        "first": 0,
        "count": count,
        "which": f"examples [0, {count}) of the training part of {data_config.name} "
        f"{data_config.train_split} (its last {int(data_config.val_examples)} are validation)",
        "augmentation": "none",
        "normalisation": "the run's own (training split mean/std)",
    }
    host = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
    return Examples(host, splits, description)
