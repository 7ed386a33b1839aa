"""Tracking the best evaluation inside :func:`lstm_jax.train.fit`.

:class:`BestTracker` runs the task's ``eval_fn`` at a step, logs the record
and keeps the best by one metric (lower is better). A tie goes to the later
step, the one the checkpoint policy keeps (Orbax's ``BestN``), so the
reported best is always a checkpoint on disk.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["BestTracker"]


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
