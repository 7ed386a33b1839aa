"""Softmax cross-entropy on raw logits, shared by the models.

Computed on the raw logits (``optax.softmax_cross_entropy_with_integer_labels``
applies a stable log-softmax itself), in at least float32 so that bf16/fp16
logits do not lose the loss's precision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

__all__ = ["cross_entropy", "cross_entropy_per_item"]


def cross_entropy_per_item(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy in nats of every item: ``logits (..., C)``, integer ``labels (...)`` -> ``(...)``."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy over all items of ``labels`` (``...``), or over those with ``mask == 1``.

    ``mask`` has the shape of ``labels``; an all-zero mask gives 0, not NaN.
    """
    losses = cross_entropy_per_item(logits, labels)
    if mask is None:
        return losses.mean()
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)
