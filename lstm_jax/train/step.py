"""The jitted training step of :func:`lstm_jax.train.fit`: one Optax update of any loss.

``step_fn(params, opt_state, model_state, batch, step) -> (params, opt_state, model_state, stats)``
differentiates ``loss_fn(params, batch, key, model_state) -> (loss, (model_state, metrics))``
with the key ``fold_in(PRNGKey(seed), step)`` (nothing random is carried between
steps, so a resumed run sees the keys the uninterrupted run would), applies the
optimizer's update and returns ``stats``: ``loss``, ``grad_norm`` (before any
clipping), the task's metrics, optional ``grad_metrics(grads)``, and whether
the updated params are finite (read by :mod:`lstm_jax.train.divergence`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .divergence import PARAMS_FINITE
from .optim import make_optimizer

__all__ = ["make_train_step"]


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "seed", "grad_metrics"))
def _train_step(params, opt_state, model_state, batch, step, *, loss_fn, optimizer, seed, grad_metrics=None):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
    (loss, (new_model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, key, model_state
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    stats = {"loss": loss, "grad_norm": optax.tree.norm(grads), **(metrics or {})}
    if grad_metrics is not None:
        stats.update(grad_metrics(grads))
    # Cheap divergence check on the *updated* params (the loss above is of the old ones).
    stats[PARAMS_FINITE] = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)]))
    return params, opt_state, new_model_state, stats


def make_train_step(
    loss_fn: Callable, config, grad_metrics: Callable | None = None, *,
    optimizer: optax.GradientTransformation | None = None,
) -> Callable:
    """Jitted ``step_fn(params, opt_state, model_state, batch, step) -> (params, opt_state, model_state, stats)``.

    One update with ``optimizer`` (default: :func:`lstm_jax.train.optim.make_optimizer` ``(config)``)
    and the key ``fold_in(PRNGKey(config.seed), step)``.

    ``grad_metrics(grads) -> dict`` (optional, a module-level function so it
    can be a static jit argument) adds scalars computed from the raw gradients
    to ``stats``, e.g. the norm of one parameter's gradient per step.

    The compiled step is cached on ``(loss_fn, optimizer, seed, grad_metrics)``;
    the default optimizer is one object per setting, so calling :func:`fit`
    again with the same ``loss_fn`` (e.g. to resume) does not recompile.
    """
    return functools.partial(
        _train_step, loss_fn=loss_fn, optimizer=make_optimizer(config) if optimizer is None else optimizer,
        seed=config.seed, grad_metrics=grad_metrics,
    )
