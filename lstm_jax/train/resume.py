"""The run directory of :func:`lstm_jax.train.fit`: where it starts, and what it saves.

``restore_or_start`` opens the run directory (:func:`lstm_jax.train.checkpoint.open_run_directory`),
restores the latest checkpoint when resuming (placed like the caller's arrays,
e.g. replicated over a mesh), warns about a changed config and writes
``metadata.json`` (process 0 only). :class:`StepSaver` writes the training
state at the steps the loop chooses, never the same step twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from ..distributed import sharding
from .checkpoint import Checkpointer, closed_on_error, open_run_directory, write_metadata

__all__ = ["RunStart", "StepSaver", "restore_or_start"]


def _checkpoint_tree(params, opt_state, model_state, step) -> dict:
    """What a checkpoint holds: the one layout that saving writes and resuming reads."""
    return {"params": params, "opt_state": opt_state, "model_state": model_state, "step": np.int64(step)}


class RunStart(NamedTuple):
    """Where :func:`~lstm_jax.train.fit` starts: the (possibly restored) state, the checkpointer, the best eval so far."""

    params: Any
    opt_state: Any
    model_state: Any
    step: int
    checkpointer: Checkpointer | None
    best: dict | None


def restore_or_start(out, config, params, opt_state, model_state, *, resume, best_metric, run_meta) -> RunStart:
    """Open the run directory ``out`` (:func:`~lstm_jax.train.checkpoint.open_run_directory`) and,
    if ``resume``, restore its latest checkpoint, placed like the caller's arrays
    (e.g. replicated over a mesh). ``out=None``: nothing on disk, start at step 0.
    """
    if out is None:
        return RunStart(params, opt_state, model_state, 0, None, None)
    ckpt = open_run_directory(out, keep=config.keep_checkpoints, best_metric=best_metric, resume=resume)
    with closed_on_error(ckpt):
        return _restore_into(ckpt, config, params, opt_state, model_state, resume=resume, run_meta=run_meta, out=out)


def _restore_into(ckpt, config, params, opt_state, model_state, *, resume, run_meta, out) -> RunStart:
    start_step, best = 0, None
    if resume:
        like = _checkpoint_tree(params, opt_state, model_state, 0)
        state, saved_meta, _ = ckpt.restore("last", like=like)
        params = sharding.place_like(state["params"], params)
        opt_state = sharding.place_like(state["opt_state"], opt_state)
        model_state = sharding.place_like(state["model_state"], model_state)
        start_step = int(state["step"])
        old_cfg = saved_meta.get("train_config", {})
        changed = {
            k: (old_cfg[k], v)
            for k, v in dataclasses.asdict(config).items()
            if k in old_cfg and old_cfg[k] != v and k not in ("max_minutes", "progress")
        }
        if changed:
            print(f"warning: resuming with a changed config {changed}; the run will not match an uninterrupted one")
        best = ckpt.best_record()
    if sharding.is_main_process():  # one writer in a multi-process job
        write_metadata(out, run_meta)
    return RunStart(params, opt_state, model_state, start_step, ckpt, best)


class StepSaver:
    """Saves a :class:`~lstm_jax.train.TrainState` to the run's checkpointer, at most once per step.

    ``last_saved``: the step already on disk (a resumed run's start), so a
    stop right after resuming writes nothing twice.
    """

    def __init__(self, checkpointer: Checkpointer | None, run_meta: dict, last_saved: int | None):
        self.checkpointer, self.run_meta, self.last_saved = checkpointer, run_meta, last_saved

    def due(self, step: int, checkpoint_every: int, last_step: int) -> bool:
        return step % checkpoint_every == 0 or step == last_step

    def save(self, state, metrics: dict | None = None) -> None:
        if self.checkpointer is None or self.last_saved == state.step:
            return
        tree = _checkpoint_tree(state.params, state.opt_state, state.model_state, state.step)
        self.checkpointer.save(state.step, tree, metadata=self.run_meta, metrics=metrics)
        self.last_saved = state.step
