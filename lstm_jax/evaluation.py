"""Evaluation inside :func:`lstm_jax.train.fit`: averaging over batches, and tracking the best step.

* :func:`evaluate`: the mean of per-batch sums (a task's ``eval_step`` returns
  sums and a ``count``), accumulated in float64 on the host; per-item outputs
  (e.g. a classifier's predictions) are collected alongside when asked.
* :class:`BestTracker`: runs the task's ``eval_fn`` at a step, logs the record
  and keeps the best by one metric (lower is better). A tie goes to the later
  step, the one the checkpoint policy keeps (Orbax's ``BestN``), so the
  reported best is always a checkpoint on disk.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

import jax
import numpy as np

__all__ = ["evaluate", "BestTracker"]


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


class BestTracker:
    """``eval_fn(params) -> {metric: value}`` at chosen steps, logged to ``log``; the best by ``best_metric``.

    ``best``: ``None`` or ``{"step": s, **metrics}`` (a resumed run starts from its record).
    """

    def __init__(self, eval_fn: Callable | None, log, best_metric: str, best: dict | None = None):
        self.eval_fn, self.log, self.best_metric, self.best = eval_fn, log, best_metric, best

    def due(self, step: int, eval_every: int, last_step: int, stopping_for_time: bool) -> bool:
        """Evaluate every ``eval_every`` steps, at the last step, and when a time budget stops the run
        (a preemption adds no evaluation: time is short, only the checkpoint)."""
        return self.eval_fn is not None and (step % eval_every == 0 or step == last_step or stopping_for_time)

    def run(self, step: int, params) -> dict:
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in self.eval_fn(params).items()}
        self.log.write({"kind": "eval", "step": step, **metrics, "eval_seconds": round(time.perf_counter() - t0, 3)})
        if self.best_metric in metrics and (self.best is None or metrics[self.best_metric] <= self.best[self.best_metric]):
            self.best = {"step": step, **metrics}
        return metrics
