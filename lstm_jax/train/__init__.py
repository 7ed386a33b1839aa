"""The training kit: :func:`fit` and its parts.

* :mod:`~lstm_jax.train.loop`: ``fit(loss_fn, params, get_batch, config)``, the one training loop
  (a jitted step, evaluation, checkpoints with exact resume, time budget, divergence guard,
  data parallelism), with :class:`TrainConfig` and :class:`TrainResult`.
* :mod:`~lstm_jax.train.step`: the jitted update (:func:`make_train_step`).
* :mod:`~lstm_jax.train.optim`: the default optimizer (AdamW, clipping, warmup-cosine).
* :mod:`~lstm_jax.train.checkpoint`: Orbax I/O and the run directory;
  :mod:`~lstm_jax.train.resume`: restore-or-start and saving.
* :mod:`~lstm_jax.train.divergence`: the guard against a blown-up run;
  :mod:`~lstm_jax.train.best`: tracking the best evaluation;
  :mod:`~lstm_jax.train.reporting`: the step logger, metrics file and loss-curve plots, and
  :class:`TensorBoardWriter` (a ``metrics=`` callback of ``fit`` writing TensorBoard event files).

Imports: the recurrent library, :mod:`lstm_jax.models` (for ``evaluate``) and
:mod:`lstm_jax.distributed` (sharding, agreed stops); nothing imports this kit but the
experiments and users.

>>> from lstm_jax.train import TrainConfig, fit
"""

from .loop import (
    CheckpointError,
    Preempted,
    TensorBoardWriter,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    TrainState,
    evaluate,
    fit,
    load_checkpoint,
    make_optimizer,
    make_schedule,
    make_train_step,
    plot_history,
    put_batch,
)

from . import loop

# The names are loop's own list (one place): mypy and IDEs read the explicit imports above.
__all__: list[str] = []
__all__ += loop.__all__
