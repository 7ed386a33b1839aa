"""Averaging a model's metrics over evaluation batches.

:func:`evaluate`: the mean of per-batch sums (a task's ``eval_step`` returns
sums and a ``count``), accumulated in float64 on the host; per-item outputs
(e.g. a classifier's predictions) are collected alongside when asked. The
models' ``eval_fn`` use it; :func:`lstm_jax.train.fit` calls those.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import numpy as np

__all__ = ["evaluate"]


def evaluate(eval_step: Callable, params, batches: Iterable, *, count_key: str = "count",
             collect: Sequence[str] = ()) -> dict:
    """Average metrics over batches.

    ``eval_step(params, batch)`` returns a dict of *sums* over the batch plus
    ``count`` (number of items); the result is every sum divided by the total
    count. Sums are accumulated in float64 on the host. Keys in ``collect`` are
    per-item arrays ``(n_batch, ...)`` instead: they are concatenated over the
    batches (in order) and returned as NumPy arrays, not averaged.

    >>> import jax.numpy as jnp
    >>> step = lambda p, b: {"err": jnp.sum(jnp.abs(b - p)), "count": b.size}
    >>> evaluate(step, 1.0, [jnp.array([1.0, 3.0]), jnp.array([0.0])])
    {'err': 1.0}
    >>> step = lambda p, b: {"err": jnp.sum(jnp.abs(b - p)), "count": b.size, "diff": b - p}
    >>> evaluate(step, 1.0, [jnp.array([1.0, 3.0]), jnp.array([0.0])], collect=("diff",))["diff"]
    array([ 0.,  2., -1.], dtype=float32)
    """
    totals: dict[str, float] = {}
    parts: dict[str, list] = {k: [] for k in collect}
    for batch in batches:
        out = jax.device_get(eval_step(params, batch))
        for k, v in out.items():
            if k in parts:
                parts[k].append(np.asarray(v))
            else:
                totals[k] = totals.get(k, 0.0) + float(v)
    n = totals.pop(count_key, 0.0)
    if n <= 0:
        raise ValueError("evaluate: no items (empty evaluation set?)")
    return {**{k: v / n for k, v in totals.items()}, **{k: np.concatenate(v) for k, v in parts.items()}}
