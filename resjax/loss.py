"""The loss every part of resjax trains and measures with: softmax cross-entropy."""

from __future__ import annotations

import jax
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy of [..., classes] logits and integer labels, with
    optional label smoothing (Szegedy et al. 2016)."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits, targets)
