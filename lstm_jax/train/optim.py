"""The default optimiser of :func:`lstm_jax.train.fit`: clipping, then AdamW on a warmup-cosine schedule.

``fit`` takes any ``optax.GradientTransformation`` (``fit(..., optimizer=...)``:
gradient accumulation with ``optax.MultiSteps``, another optimiser); when none
is given it builds this one from the :class:`~lstm_jax.train.TrainConfig`.
The transformation is cached per setting, so the jitted step (which takes the
optimizer as a static argument) compiles once per setting, across calls of
``fit`` (a resumed run does not recompile).

Example::

    >>> from lstm_jax.train import TrainConfig
    >>> schedule = make_schedule(TrainConfig(steps=100, learning_rate=1e-2, warmup_steps=10))
    >>> [round(float(schedule(s)), 5) for s in (0, 5, 10, 99)]  # warmup to the peak, cosine to a tenth
    [0.0, 0.005, 0.01, 0.001]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

__all__ = ["OPTIMIZER_FIELDS", "make_schedule", "make_optimizer"]

#: The :class:`~lstm_jax.train.TrainConfig` fields the default optimizer depends on.
OPTIMIZER_FIELDS = ("steps", "learning_rate", "warmup_steps", "end_lr_ratio", "weight_decay", "clip_norm")


def make_schedule(config) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, cosine decay to ``learning_rate*end_lr_ratio`` at ``steps``."""
    return _schedule(config.steps, config.learning_rate, config.warmup_steps, config.end_lr_ratio)


def make_optimizer(config) -> optax.GradientTransformation:
    """Global-norm gradient clipping (``clip_norm``; ``None``: none), then AdamW on :func:`make_schedule`,
    with weight decay on matrices only. The same object for the same settings (see the module docstring)."""
    return _optimizer(*(getattr(config, f) for f in OPTIMIZER_FIELDS))


@functools.lru_cache(maxsize=None)
def _schedule(steps, learning_rate, warmup_steps, end_lr_ratio):
    warmup = min(warmup_steps, max(steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=learning_rate * end_lr_ratio,
    )


def _decay_mask(params):
    # Decay weight matrices (and embeddings), not biases or other vectors.
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


@functools.lru_cache(maxsize=None)
def _optimizer(steps, learning_rate, warmup_steps, end_lr_ratio, weight_decay, clip_norm):
    # clip_norm=None still adds the (no-op) transform, so the optimizer state
    # has one structure and checkpoints stay interchangeable.
    clip = math.inf if clip_norm is None else clip_norm
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(_schedule(steps, learning_rate, warmup_steps, end_lr_ratio), weight_decay=weight_decay,
                    mask=_decay_mask),
    )
