"""The shared training loop: Optax, a jitted step, logging, checkpoints, guards.

The loop is model-agnostic. A task supplies

* ``loss_fn(params, batch, key, model_state) -> (loss, (new_model_state, metrics))``:
  a scalar loss to minimise, the next ``model_state`` (any pytree threaded
  across steps, e.g. the recurrent carry for truncated BPTT; ``None`` if
  unused) and a dict of scalar metrics to log. ``fit`` jits and differentiates it.
* ``get_batch(step) -> batch``: a pytree of arrays, a pure function of ``step``
  (so a resumed run sees exactly the batches the uninterrupted run would); in a
  multi-process job, this process's rows of it (:mod:`lstm_jax.distributed.multiprocess`).
* optionally ``eval_fn(params) -> {"val_loss": ..., ...}`` (lower is better for
  ``best_metric``).

Everything random inside a step uses ``jax.random.fold_in(PRNGKey(seed), step)``;
nothing random is carried between steps. Together with deterministic batches
and checkpoints of ``(params, opt_state, model_state, step)``, a run resumed at
step N continues bit-for-bit like the uninterrupted run (on CPU).

Data parallelism needs no change in the step. With ``data_parallel=True`` (by
default: whenever there is more than one device and no ``put_batch`` of the
caller's), :func:`fit` replicates params and optimizer state over all devices
and shards each batch on its leading axis (:mod:`lstm_jax.distributed.sharding`); to
control the mesh yourself, pass params already replicated and your own
sharding ``put_batch``. The optimizer state inherits the
params' sharding, a resumed run restores every array with the sharding of the
array it replaces, and XLA inserts the gradient all-reduce inside the
unchanged jitted step. :func:`put_batch` is the single place where a host
batch goes onto devices; ``make_step=`` can wrap or replace the jitted step.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax

from ..distributed import sharding
from ..distributed.stopping import Preempted, StopControl, stop_message
from ..models.evaluation import evaluate
from .best import BestTracker
from .checkpoint import CheckpointError, load_checkpoint
from .divergence import DivergenceGuard, TrainingDiverged
from .optim import make_optimizer, make_schedule
from .reporting import MetricsLog, StepLogger, TensorBoardWriter, plot_history, save_loss_curve
from .resume import StepSaver, restore_or_start
from .step import make_train_step

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingDiverged",
    "Preempted",
    "make_schedule",
    "make_optimizer",
    "make_train_step",
    "put_batch",
    "fit",
    "evaluate",
    "plot_history",
    "TensorBoardWriter",
    "load_checkpoint",
    "CheckpointError",
]


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings for :func:`fit`.

    ``steps`` is the length of the run and of the learning-rate schedule
    (linear warmup for ``warmup_steps``, then cosine decay to
    ``learning_rate * end_lr_ratio`` at ``steps``). ``max_minutes`` is a
    wall-clock budget: when exceeded, the loop stops after the current step,
    saves a checkpoint and returns (``TrainResult.stop_reason == "time budget"``);
    ``fit(..., resume=True)`` then continues the same schedule. In a multi-process
    job the processes agree on the step (:mod:`lstm_jax.distributed.stopping`).
    ``blowup_factor``: a loss more than this many times the running median
    (and the first loss) stops the run as diverged, before it reaches NaN
    (:mod:`lstm_jax.train.divergence`); ``None`` stops only at NaN/inf.
    """

    steps: int = 1000
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    end_lr_ratio: float = 0.1
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    log_every: int = 50
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_minutes: float | None = None
    seed: int = 0
    progress: bool = True
    blowup_factor: float | None = 10.0

    def validate(self) -> None:
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")

        for name in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            positive_int(name)
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"TrainConfig.learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            raise ValueError(f"TrainConfig.end_lr_ratio must lie in [0, 1], got {self.end_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"TrainConfig.clip_norm must be > 0 (or None to disable), got {self.clip_norm}")
        if self.blowup_factor is not None and not self.blowup_factor > 1:
            raise ValueError(f"TrainConfig.blowup_factor must be > 1 (or None to disable), got {self.blowup_factor!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"TrainConfig.max_minutes must be > 0 or None, got {self.max_minutes}")


@dataclasses.dataclass
class TrainResult:
    params: Any
    opt_state: Any
    model_state: Any
    step: int
    history: list[dict]
    best: dict | None
    stop_reason: str = "completed"  # "completed" | "time budget" (a SIGTERM raises Preempted instead)
    wall_seconds: float = 0.0


class TrainState(NamedTuple):
    """What one training step reads and writes, and what a checkpoint holds."""

    params: Any
    opt_state: Any
    model_state: Any
    step: int


def put_batch(batch: Any) -> Any:
    """Move a host batch onto the default device. Replace to shard over devices."""
    return jax.device_put(batch)


_default_put_batch = put_batch  # fit's ``put_batch`` argument shadows the name


def _placement(put_batch, data_parallel, resume, out_dir):
    """Check ``fit``'s placement arguments; return ``(put_batch or None, data_parallel)``."""
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume from)")
    own_put_batch = put_batch is not None and put_batch is not _default_put_batch
    if data_parallel and own_put_batch:
        raise ValueError("data_parallel=True shards the batch itself: give put_batch or data_parallel=True, not both")
    if data_parallel is None:
        data_parallel = not own_put_batch and jax.device_count() > 1
    if jax.process_count() > 1 and not (data_parallel or own_put_batch):
        raise ValueError("data_parallel=False in a multi-process job would train each process on its own rows")
    return (put_batch if own_put_batch else _default_put_batch), data_parallel


def _close(logger, log, log_dir, checkpointer) -> None:
    """The end of every run, also on an error: the bar, the last loss curve, the checkpointer's writes."""
    logger.close()
    if log_dir is not None and log.records:
        save_loss_curve(log.records, log_dir / "loss_curve.png")
    if checkpointer is not None:
        checkpointer.close()


# ---------------------------------------------------------------------------
# fit


def fit(
    loss_fn: Callable,
    params,
    get_batch: Callable[[int], Any],
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[Any], dict] | None = None,
    best_metric: str = "val_loss",
    model_state=None,
    resume: bool = False,
    metadata: dict | None = None,
    items_per_batch: int | None = None,
    item_name: str = "items",
    put_batch: Callable | None = None,
    make_step: Callable = make_train_step,
    data_parallel: bool | None = None,
    optimizer: optax.GradientTransformation | None = None,
    metrics: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``params`` for ``config.steps`` steps (see the module docstring for the contract).

    Args:
        out_dir: run directory for ``metrics.jsonl``, ``loss_curve.png``,
            ``metadata.json`` and ``checkpoints/`` (last ``keep_checkpoints``
            steps plus the best by ``best_metric``). ``None``: nothing is written.
        resume: continue from the latest checkpoint in ``out_dir`` (restores
            params, optimiser state, model_state and step). Without a
            checkpoint there, raises :class:`CheckpointError`.
        metadata: JSON-able dict saved with every checkpoint (e.g. vocabulary,
            model config) and in ``metadata.json``.
        items_per_batch: items (e.g. characters) per batch, for the throughput
            shown in the progress bar and logged as ``<item_name>_per_s``.
        put_batch: ``put_batch(host_batch) -> device batch``; ``None``: the
            module's :func:`put_batch` (default device), or the data-parallel
            sharding. Pass your own to shard the batch yourself.
        make_step: ``make_step(loss_fn, config, optimizer=...) -> step_fn`` (see
            :func:`~lstm_jax.train.step.make_train_step`); replace to wrap the
            step (e.g. pmean of gradients, explicit shardings).
        data_parallel: replicate params/optimizer state over all local devices
            and shard every batch over them (:mod:`lstm_jax.distributed.sharding`).
            ``None`` (default): exactly when there is more than one device and
            no ``put_batch`` of your own is given. ``True`` with a
            ``put_batch`` of your own is an error.
        optimizer: any ``optax.GradientTransformation``; ``None``: the
            config's clipping + AdamW + warmup-cosine schedule
            (:func:`~lstm_jax.train.optim.make_optimizer`). With your own, the
            config's optimiser fields are unused and the logged records carry
            no ``lr``; e.g. ``optax.MultiSteps(optax.adam(1e-3), 4)``
            accumulates gradients over 4 batches per update.
        metrics: ``metrics(step, scalars)``, called on process 0 with every record
            the run logs (the training means every ``log_every`` steps, each
            evaluation), named ``"train/loss"``, ``"train/lr"``, ``"eval/val_loss"``, ...
            (:func:`~lstm_jax.train.reporting.record_scalars`); e.g. a
            :class:`~lstm_jax.train.reporting.TensorBoardWriter`, or your own logger's method.

    Raises:
        TrainingDiverged: loss or gradient norm became NaN/inf, or the loss
            blew up (:mod:`lstm_jax.train.divergence`). Nothing is saved for the bad
            step; earlier checkpoints are kept, and the message names the
            last good one.
        Preempted: SIGTERM arrived (a ``SystemExit`` with status 143): every
            process stopped at the same step and saved a checkpoint there
            (:mod:`lstm_jax.distributed.stopping`); ``resume=True`` continues exactly.

    Example (a linear model; any ``loss_fn`` of this signature trains the same way)::

        >>> import jax, jax.numpy as jnp
        >>> from lstm_jax.train import TrainConfig, fit
        >>> def loss_fn(params, batch, key, model_state):
        ...     loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
        ...     return loss, (model_state, {})
        >>> def get_batch(step):                        # a pure function of the step
        ...     x = jax.random.normal(jax.random.PRNGKey(step), (8, 2))
        ...     return {"x": x, "y": x @ jnp.array([1.0, -2.0])}
        >>> config = TrainConfig(steps=200, learning_rate=0.1, warmup_steps=10, weight_decay=0.0, progress=False)
        >>> result = fit(loss_fn, {"w": jnp.zeros(2)}, get_batch, config)
        >>> result.step, result.stop_reason
        (200, 'completed')
        >>> [round(w, 2) for w in result.params["w"].tolist()]
        [1.0, -2.0]
    """
    config.validate()
    put_batch, data_parallel = _placement(put_batch, data_parallel, resume, out_dir)
    schedule = make_schedule(config) if optimizer is None else None  # a caller's optimizer has its own rate
    optimizer = make_optimizer(config) if optimizer is None else optimizer
    out = Path(out_dir) if out_dir is not None else None
    run_meta = {**(metadata or {}), "train_config": dataclasses.asdict(config), "best_metric": best_metric}
    start = restore_or_start(out, config, params, sharding.colocate(optimizer.init(params), params), model_state,
                             resume=resume, best_metric=best_metric, run_meta=run_meta)
    state = TrainState(start.params, start.opt_state, start.model_state, start.step)
    log_dir = out if sharding.is_main_process() else None  # metrics, figures: process 0 only
    log = MetricsLog(log_dir / "metrics.jsonl" if log_dir else None, start.step if resume else None,
                     on_record=metrics if sharding.is_main_process() else None)
    if data_parallel:
        *replicated, put_batch = sharding.replicate_train_state(*state[:3])
        state = TrainState(*replicated, state.step)
    step_fn = make_step(loss_fn, config, optimizer=optimizer)
    guard = DivergenceGuard(config.blowup_factor)
    evals = BestTracker(eval_fn, log, best_metric, start.best)
    saver = StepSaver(start.checkpointer, run_meta, start.step if resume else None)
    control = StopControl(config.max_minutes, start.step)  # SIGTERM, time budget, watchdog: agreed across processes
    logger = StepLogger(
        log, total_steps=config.steps, log_every=config.log_every, start_step=start.step, schedule=schedule,
        items_per_batch=items_per_batch, item_name=item_name, progress=config.progress and sharding.is_main_process(),
    )
    stop_reason = "completed"
    try:
        with control:
            while state.step < config.steps:
                step = state.step
                control.doing(step, f"training step {step + 1}")
                *new, stats = step_fn(*state[:3], put_batch(get_batch(step)), step)
                stats = {k: float(v) for k, v in jax.device_get(stats).items()}
                guard.check(step + 1, stats, None if schedule is None else float(schedule(step)), start.checkpointer)
                state = TrainState(*new, step + 1)
                logger.step_done(state.step, stats)
                reason = control.reason(state.step)  # None, "time budget" or "preempted": the same in every process
                stopping = reason is not None and state.step < config.steps
                control.doing(state.step, "evaluation")
                metrics = None
                if evals.due(state.step, config.eval_every, config.steps, stopping and reason == "time budget"):
                    logger.eval_done(state.step, metrics := evals.run(state.step, state.params))
                if metrics is not None or stopping or saver.due(state.step, config.checkpoint_every, config.steps):
                    control.doing(state.step, "checkpoint save")
                    saver.save(state, metrics)
                    if log_dir is not None and metrics is not None:
                        save_loss_curve(log.records, log_dir / "loss_curve.png")
                if stopping:
                    stop_reason = reason
                    logger.message(stop_message(reason, state.step, config.steps, config.max_minutes, saved=out is not None))
                    break
    finally:
        _close(logger, log, log_dir, start.checkpointer)
    if stop_reason == "preempted":
        raise Preempted(state.step, stop_message(stop_reason, state.step, config.steps, config.max_minutes,
                                                 saved=out is not None))
    return TrainResult(
        params=state.params, opt_state=state.opt_state, model_state=state.model_state, step=state.step,
        history=log.records, best=evals.best, stop_reason=stop_reason, wall_seconds=logger.elapsed(),
    )
