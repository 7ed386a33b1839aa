"""The shared training loop: Optax, a jitted step, logging, checkpoints, guards.

The loop is model-agnostic. A task supplies

* ``loss_fn(params, batch, key, model_state) -> (loss, (new_model_state, metrics))``:
  a scalar loss to minimise, the next ``model_state`` (any pytree threaded
  across steps, e.g. the recurrent carry for truncated BPTT; ``None`` if
  unused) and a dict of scalar metrics to log. ``fit`` jits and differentiates it.
* ``get_batch(step) -> batch``: a pytree of arrays, a pure function of ``step``
  (so a resumed run sees exactly the batches the uninterrupted run would); in a
  multi-process job, this process's rows of it (:mod:`lstm_jax.multiprocess`).
* optionally ``eval_fn(params) -> {"val_loss": ..., ...}`` (lower is better for
  ``best_metric``).

Everything random inside a step uses ``jax.random.fold_in(PRNGKey(seed), step)``;
nothing random is carried between steps. Together with deterministic batches
and checkpoints of ``(params, opt_state, model_state, step)``, a run resumed at
step N continues bit-for-bit like the uninterrupted run (on CPU).

Data parallelism needs no change in the step. With ``data_parallel=True`` (by
default: whenever there is more than one device and no ``put_batch`` of the
caller's), :func:`fit` replicates params and optimizer state over all devices
and shards each batch on its leading axis (:mod:`lstm_jax.parallel`); to
control the mesh yourself, pass params already replicated and your own
sharding ``put_batch``. The optimizer state inherits the
params' sharding, a resumed run restores every array with the sharding of the
array it replaces, and XLA inserts the gradient all-reduce inside the
unchanged jitted step. :func:`put_batch` is the single place where a host
batch goes onto devices; ``make_step=`` can wrap or replace the jitted step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import parallel
from .checkpoint import CheckpointError, load_checkpoint
from .divergence import PARAMS_FINITE, DivergenceGuard, TrainingDiverged
from .reporting import MetricsLog, StepLogger, plot_history, save_loss_curve
from .resume import restore_or_start
from .stopping import Preempted, StopControl, stop_message

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "Preempted",
    "make_schedule",
    "make_optimizer",
    "make_train_step",
    "put_batch",
    "fit",
    "evaluate",
    "plot_history",
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
    job the processes agree on the step (:mod:`lstm_jax.stopping`).
    ``blowup_factor``: a loss more than this many times the running median
    (and the first loss) stops the run as diverged, before it reaches NaN
    (:mod:`lstm_jax.divergence`); ``None`` stops only at NaN/inf.
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


# ---------------------------------------------------------------------------
# Optimiser


def make_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, cosine decay to ``learning_rate*end_lr_ratio``."""
    warmup = min(config.warmup_steps, max(config.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(config.steps, warmup + 1),
        end_value=config.learning_rate * config.end_lr_ratio,
    )


def _decay_mask(params):
    # Decay weight matrices (and embeddings), not biases or other vectors.
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm gradient clipping, then AdamW on the warmup-cosine schedule."""
    # clip_norm=None still adds the (no-op) transform, so the optimizer state
    # has one structure and checkpoints stay interchangeable.
    clip = math.inf if config.clip_norm is None else config.clip_norm
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.adamw(make_schedule(config), weight_decay=config.weight_decay, mask=_decay_mask),
    )


# ---------------------------------------------------------------------------
# The step


_OPTIMIZER_FIELDS = ("steps", "learning_rate", "warmup_steps", "end_lr_ratio", "weight_decay", "clip_norm")


def _optimizer_key(config: TrainConfig) -> tuple:
    return tuple((f, getattr(config, f)) for f in _OPTIMIZER_FIELDS)


@functools.partial(jax.jit, static_argnames=("loss_fn", "opt_key", "seed", "grad_metrics"))
def _train_step(params, opt_state, model_state, batch, step, *, loss_fn, opt_key, seed, grad_metrics=None):
    optimizer = make_optimizer(TrainConfig(**dict(opt_key)))
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


def make_train_step(loss_fn: Callable, config: TrainConfig, grad_metrics: Callable | None = None) -> Callable:
    """Jitted ``step_fn(params, opt_state, model_state, batch, step) -> (params, opt_state, model_state, stats)``.

    One optimisation step with :func:`make_optimizer` ``(config)`` and the
    dropout/noise key ``fold_in(PRNGKey(config.seed), step)``. ``stats`` holds
    ``loss``, ``grad_norm`` (before clipping) and the task's metrics.

    ``grad_metrics(grads) -> dict`` (optional, a module-level function so it
    can be a static jit argument) adds scalars computed from the raw gradients
    to ``stats``, e.g. the norm of one parameter's gradient per step.

    The compiled step is cached on ``(loss_fn, optimizer settings, seed,
    grad_metrics)``, so calling :func:`fit` again with the same ``loss_fn``
    (e.g. to resume) does not recompile.
    """
    return functools.partial(
        _train_step, loss_fn=loss_fn, opt_key=_optimizer_key(config), seed=config.seed, grad_metrics=grad_metrics
    )


def put_batch(batch):
    """Move a host batch onto the default device. Replace to shard over devices."""
    return jax.device_put(batch)


_default_put_batch = put_batch  # fit's ``put_batch`` argument shadows the name


def evaluate(eval_step: Callable, params, batches: Iterable, *, count_key: str = "count") -> dict:
    """Average metrics over batches.

    ``eval_step(params, batch)`` returns a dict of *sums* over the batch plus
    ``count`` (number of items); the result is every sum divided by the total
    count. Sums are accumulated in float64 on the host.
    """
    totals: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(eval_step(params, batch))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    n = totals.pop(count_key, 0.0)
    if n <= 0:
        raise ValueError("evaluate: no items (empty evaluation set?)")
    return {k: v / n for k, v in totals.items()}


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
        make_step: ``make_step(loss_fn, config) -> step_fn`` (see
            :func:`make_train_step`); replace to wrap the step (e.g. pmean of
            gradients, explicit shardings).
        data_parallel: replicate params/optimizer state over all local devices
            and shard every batch over them (:mod:`lstm_jax.parallel`).
            ``None`` (default): exactly when there is more than one device and
            no ``put_batch`` of your own is given. ``True`` with a
            ``put_batch`` of your own is an error.

    Raises:
        TrainingDiverged: loss or gradient norm became NaN/inf, or the loss
            blew up (:mod:`lstm_jax.divergence`). Nothing is saved for the bad
            step; earlier checkpoints are kept, and the message names the
            last good one.
        Preempted: SIGTERM arrived (a ``SystemExit`` with status 143): every
            process stopped at the same step and saved a checkpoint there
            (:mod:`lstm_jax.stopping`); ``resume=True`` continues exactly.

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
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (the run directory to resume from)")
    own_put_batch = put_batch is not None and put_batch is not _default_put_batch
    if data_parallel and own_put_batch:
        raise ValueError("data_parallel=True shards the batch itself: give put_batch or data_parallel=True, not both")
    if data_parallel is None:
        data_parallel = not own_put_batch and jax.device_count() > 1
    if jax.process_count() > 1 and not (data_parallel or own_put_batch):
        raise ValueError("data_parallel=False in a multi-process job would train each process on its own rows")
    if not own_put_batch:
        put_batch = _default_put_batch

    optimizer = make_optimizer(config)
    opt_state = parallel.colocate(optimizer.init(params), params)
    schedule = make_schedule(config)
    out = Path(out_dir) if out_dir is not None else None
    run_meta = {**(metadata or {}), "train_config": dataclasses.asdict(config), "best_metric": best_metric}
    params, opt_state, model_state, start_step, ckpt, best = restore_or_start(
        out, config, params, opt_state, model_state, resume=resume, best_metric=best_metric, run_meta=run_meta
    )
    log_dir = out if parallel.is_main_process() else None  # metrics, figures: process 0 only
    log = MetricsLog(log_dir / "metrics.jsonl" if log_dir else None, start_step if resume else None)

    if data_parallel:
        params, opt_state, model_state, put_batch = parallel.replicate_train_state(params, opt_state, model_state)
    step_fn = make_step(loss_fn, config)
    guard = DivergenceGuard(config.blowup_factor)
    t_start = time.perf_counter()
    control = StopControl(config.max_minutes, start_step)  # SIGTERM, time budget, watchdog: agreed across processes
    last_saved = start_step if resume else None

    def save(step, metrics=None):
        nonlocal last_saved
        if ckpt is None or last_saved == step:
            return
        state = {"params": params, "opt_state": opt_state, "model_state": model_state, "step": np.int64(step)}
        ckpt.save(step, state, metadata=run_meta, metrics=metrics)
        last_saved = step

    def run_eval(step):
        nonlocal best
        t0 = time.perf_counter()
        metrics = {k: float(v) for k, v in eval_fn(params).items()}
        rec = {"kind": "eval", "step": step, **metrics, "eval_seconds": round(time.perf_counter() - t0, 3)}
        log.write(rec)
        # "<=": a tie goes to the later step, the one the checkpoint policy keeps (Orbax's BestN), so the
        # reported best is always a checkpoint on disk
        if best_metric in metrics and (best is None or metrics[best_metric] <= best[best_metric]):
            best = {"step": step, **metrics}
        return metrics

    logger = StepLogger(
        log, total_steps=config.steps, log_every=config.log_every, start_step=start_step, schedule=schedule,
        items_per_batch=items_per_batch, item_name=item_name, progress=config.progress and parallel.is_main_process(),
        t_start=t_start,
    )
    stop_reason = "completed"
    step = start_step
    try:
        with control:
            while step < config.steps:
                control.doing(step, f"training step {step + 1}")
                batch = put_batch(get_batch(step))
                new_params, new_opt_state, new_model_state, stats = step_fn(
                    params, opt_state, model_state, batch, step
                )
                stats = {k: float(v) for k, v in jax.device_get(stats).items()}
                guard.check(step + 1, stats, float(schedule(step)), ckpt)
                params, opt_state, model_state = new_params, new_opt_state, new_model_state
                step += 1
                logger.step_done(step, stats)

                reason = control.reason(step)  # None, "time budget" or "preempted": the same in every process
                stopping = reason is not None and step < config.steps
                # a preemption adds no evaluation (time is short), only the checkpoint
                eval_now = eval_fn is not None and (step % config.eval_every == 0 or step == config.steps
                                                    or (stopping and reason == "time budget"))
                control.doing(step, "evaluation")
                metrics = run_eval(step) if eval_now else None
                if metrics is not None:
                    logger.eval_done(step, metrics)
                if metrics is not None or step % config.checkpoint_every == 0 or step == config.steps or stopping:
                    control.doing(step, "checkpoint save")
                    save(step, metrics)
                    if log_dir is not None and metrics is not None:
                        save_loss_curve(log.records, log_dir / "loss_curve.png")
                if stopping:
                    stop_reason = reason
                    logger.message(stop_message(reason, step, config.steps, config.max_minutes, saved=out is not None))
                    break
    finally:
        logger.close()
        if log_dir is not None and log.records:
            save_loss_curve(log.records, log_dir / "loss_curve.png")
        if ckpt is not None:
            ckpt.close()
    if stop_reason == "preempted":
        raise Preempted(step, stop_message(reason, step, config.steps, config.max_minutes, saved=out is not None))
    return TrainResult(
        params=params,
        opt_state=opt_state,
        model_state=model_state,
        step=step,
        history=log.records,
        best=best,
        stop_reason=stop_reason,
        wall_seconds=time.perf_counter() - t_start,
    )
