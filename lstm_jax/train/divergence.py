"""The divergence guard of :func:`lstm_jax.train.fit`: stop at a blow-up, and name a checkpoint worth keeping.

Step convention (the same in every message, in ``metrics.jsonl`` and in the
checkpoint numbers): **step s is the state after s updates**. The loss logged
at step s is the loss of update s, computed on the parameters of step s-1;
checkpoint s holds the parameters after update s.

A run has diverged at update ``u`` when

* its loss or gradient norm is NaN/inf, or
* its loss is a *blow-up*: more than ``blowup_factor`` times
  ``max(median of the last `window` losses, the run's first loss)``. This
  catches a run on its way to NaN (a loss of 6e21 with lr=1e6 is still
  finite) while a loss near zero (a regression that is almost solved) may
  still jump by orders of magnitude without being called diverged: the
  first loss (about ``ln(vocab)`` for a language model, the variance of the
  target for a regression) sets the floor of the threshold; or
* the parameters after update ``u`` are NaN/inf.

The loss of update ``s+1`` is the loss of checkpoint ``s``'s parameters, so
the guard also knows which steps were *sane*: a step whose parameters' loss
was at most :data:`SANE_FACTOR` times the running median at the time. On
divergence, the *last good checkpoint* is the latest saved step that was sane
and came before the step whose parameters diverged (``u-1`` in the first two
cases, ``u`` in the third): on a run that climbs for a few steps before it
explodes, that is a checkpoint from before the climb, not one written at a
loss already a hundred times the median. The message names it, and the best
checkpoint by validation (which the scripts' sample/eval modes load by
default). Steps from before a resume count as sane.

In a multi-process job every process runs its own guard on the same numbers:
the loss, gradient norm and params-finite flag are replicated outputs of the
one SPMD step (reduced across processes inside it), so all processes raise
at the same update without exchanging anything (:mod:`lstm_jax.distributed.stopping`;
``tests/test_multiprocess.py`` checks the processes read the same bits).
"""

from __future__ import annotations

import collections
import math
import statistics

__all__ = ["PARAMS_FINITE", "SANE_FACTOR", "DivergenceGuard", "TrainingDiverged"]

#: Key of the stats entry (a bool) saying whether the updated params are all finite.
PARAMS_FINITE = "params_finite"

#: A step is sane if its parameters' loss is at most this many times the running median.
SANE_FACTOR = 3.0

_ADVICE = "Try a lower config.learning_rate, a smaller config.clip_norm, or a longer config.warmup_steps."


class TrainingDiverged(RuntimeError):
    """The loss blew up or became NaN/inf; no checkpoint was written for the step that did.

    Attributes: ``step`` (the update that diverged, 1-based), ``good_step``
    (the last checkpoint saved before the divergence started, or ``None``),
    ``best_step`` (the best checkpoint by validation, or ``None``).
    """

    def __init__(self, message: str, step: int, good_step: int | None = None, best_step: int | None = None):
        super().__init__(message)
        self.step, self.good_step, self.best_step = step, good_step, best_step


class DivergenceGuard:
    """Checks every update's stats; raises :class:`TrainingDiverged` (see the module docstring).

    Args:
        blowup_factor: the blow-up threshold factor (``None``: only NaN/inf count).
        window: how many recent losses the running median covers.
    """

    def __init__(self, blowup_factor: float | None = 10.0, window: int = 50):
        if blowup_factor is not None and not blowup_factor > 1:
            raise ValueError(f"blowup_factor must be > 1 (or None to disable), got {blowup_factor!r}")
        self.blowup_factor = blowup_factor
        self.recent: collections.deque = collections.deque(maxlen=window)
        self.first: float | None = None
        self.insane: set[int] = set()  # steps whose parameters' loss was above SANE_FACTOR x the median

    def threshold(self) -> float | None:
        """The loss above which the next update is a blow-up (``None`` before the first loss)."""
        if self.blowup_factor is None or self.first is None:
            return None
        return self.blowup_factor * max(statistics.median(self.recent), self.first)

    def check(self, update: int, stats: dict, lr: float | None, ckpt=None) -> None:
        """``update``: 1-based number of the update whose ``stats`` these are (the step it would make);
        ``lr``: its learning rate for the message (``None``: unknown, a caller's own optimizer).

        Pops :data:`PARAMS_FINITE` from ``stats``; ``ckpt`` is the run's
        :class:`~lstm_jax.train.checkpoint.Checkpointer` (or ``None``).
        """
        params_finite = bool(stats.pop(PARAMS_FINITE, True))
        loss, grad_norm = stats["loss"], stats["grad_norm"]
        limit = self.threshold()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what, bad_params_step = f"loss={loss}, grad_norm={grad_norm}", update - 1
        elif limit is not None and loss > limit:
            what = (
                f"loss={loss:.4g} is a blow-up (> {self.blowup_factor:g} x max(median of the last "
                f"{len(self.recent)} losses {statistics.median(self.recent):.4g}, first loss {self.first:.4g}))"
            )
            bad_params_step = update - 1
        elif not params_finite:
            what, bad_params_step = f"loss={loss:.4g}, but the parameters are NaN/inf after the update", update
        else:
            if self.recent and loss > SANE_FACTOR * statistics.median(self.recent):
                self.insane.add(update - 1)
            self.recent.append(loss)
            if self.first is None:
                self.first = loss
            return
        raise self._diverged(update, what, bad_params_step, lr, ckpt)

    def _diverged(self, update, what, bad_params_step, lr, ckpt) -> TrainingDiverged:
        saved = ckpt.all_steps() if ckpt is not None else []
        good = max((s for s in saved if s < bad_params_step and s not in self.insane), default=None)
        best = ckpt.best_step() if ckpt is not None else None
        if not saved:
            where = "no checkpoint was written"
        else:
            where = f"last good checkpoint: step {good}" if good is not None else "no good checkpoint"
            if bad_params_step in saved:
                where += f" (step {bad_params_step} holds the diverging parameters)"
            if best is not None and best <= bad_params_step - 1:
                where += f"; best by validation: step {best}"
            where += f", in {ckpt.directory}"
        message = (
            f"training diverged at step {update}: {what}{'' if lr is None else f' (learning rate {lr:.3g})'}. "
            f"Nothing was saved for step {update}; {where}. {_ADVICE}"
        )
        return TrainingDiverged(message, update, good, best)
