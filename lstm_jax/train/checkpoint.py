"""Training checkpoints with Orbax: the last k steps plus the best one.

Layout of a run directory ``out_dir``::

    out_dir/
      metadata.json            run metadata (config, vocab, ...), human readable
      metrics.jsonl            written by :func:`lstm_jax.train.fit`
      loss_curve.png
      checkpoints/
        <step>/state/...       params, opt_state, model_state, step (Orbax StandardSave)
        <step>/metadata/...    the same metadata as JSON, so each step is self-contained

One :class:`orbax.checkpoint.CheckpointManager` holds every step. Its
preservation policy keeps a step if it is one of the ``keep`` latest *or* it is
the best one by ``best_metric`` (lower is better) among the steps saved with
evaluation metrics.

Atomicity: Orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and
renames it to ``<step>`` only once every file is written, so an interrupted save
never replaces or damages an existing step; leftover tmp directories are not
listed as steps and are removed when a manager is opened (``cleanup_tmp_directories``).
New saves always use a new step number, so the last good checkpoint is never
overwritten. Restoring a damaged step raises :class:`CheckpointError` naming the
step directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

CHECKPOINT_SUBDIR = "checkpoints"
METADATA_FILE = "metadata.json"



class _QuietOrbax(logging.Filter):
    # Saving a step without eval metrics is normal here (it is kept as one of
    # the latest k); Orbax warns about it on every such save.
    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietOrbax())


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


def _json_safe(obj: Any) -> Any:
    """Plain-JSON version of ``obj`` (numpy scalars -> Python, tuples -> lists)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON serializable: {o!r}")


def _to_numpy(tree):
    """Host numpy copy of a pytree of arrays (None leaves are kept).

    An array split over several processes (e.g. a data-parallel carry) is
    gathered first, so every checkpoint holds whole arrays and restores into
    any process count; Orbax then writes them from the primary process.
    """
    return jax.tree_util.tree_map(_host_array, tree)


def _host_array(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return multihost_utils.process_allgather(x, tiled=True)  # a collective: every process saves
    return np.asarray(x)


def _abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _to_numpy(tree))


class Checkpointer:
    """Save and restore training state under ``out_dir/checkpoints``.

    Args:
        out_dir: the run directory.
        keep: how many of the latest steps to keep.
        best_metric: name of the metric (lower is better) that selects the best
            step; steps saved without it are kept only while among the latest.
    """

    def __init__(self, out_dir: str | Path, *, keep: int = 3, best_metric: str = "val_loss"):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.out_dir = Path(out_dir).resolve()
        self.directory = self.out_dir / CHECKPOINT_SUBDIR
        self.best_metric = best_metric
        policy = pp.AnyPreservationPolicy(
            [
                pp.LatestN(n=keep),
                pp.BestN(
                    get_metric_fn=lambda m: m[best_metric],
                    reverse=True,  # ascending sort reversed: the smallest value sorts last and is kept
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes Orbax write the metrics next to each step (and so
            # survive a restart); which steps to keep is decided by the policy.
            best_fn=lambda m: m[best_metric],
            best_mode="min",
            keep_checkpoints_without_metrics=False,
            create=True,
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- queries -----------------------------------------------------------
    def all_steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        best, best_value = None, math.inf
        for step in self.all_steps():
            metrics = self.manager.metrics(step)
            if metrics and self.best_metric in metrics and metrics[self.best_metric] < best_value:
                best, best_value = step, metrics[self.best_metric]
        return best

    def metrics(self, step: int) -> dict | None:
        return self.manager.metrics(step)

    def best_record(self) -> dict | None:
        """``{"step": best step, **its metrics}``, or ``None`` if no step was saved with metrics."""
        step = self.best_step()
        if step is None or not self.metrics(step):
            return None
        return {"step": step, **self.metrics(step)}

    # -- save / restore ------------------------------------------------------
    def save(self, step: int, state: dict, *, metadata: dict | None = None, metrics: dict | None = None) -> None:
        """Write ``state`` (a pytree of arrays) as ``step``; blocks until finalized."""
        if step in self.manager.all_steps():
            # Never overwrite an existing (good) step in place.
            return
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        if metrics is not None and self.best_metric not in metrics:
            metrics = None
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_numpy(state)),
                metadata=ocp.args.JsonSave(_json_safe(metadata or {})),
            ),
            metrics=metrics,
            force=True,
        )
        self.manager.wait_until_finished()

    def _step_or_error(self, which: str | int) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoint found in {self.directory} (missing or empty directory); "
                "train first, or point to the run directory that holds 'checkpoints/'"
            )
        if which == "last":
            return steps[-1]
        if which == "best":
            best = self.best_step()
            return steps[-1] if best is None else best
        if isinstance(which, (int, np.integer)):
            if int(which) not in steps:
                raise CheckpointError(f"no checkpoint for step {which} in {self.directory}; available: {steps}")
            return int(which)
        raise ValueError(f"which must be 'last', 'best' or a step number, got {which!r}")

    def restore(self, which: str | int = "last", *, like: dict | None = None) -> tuple[dict, dict, int]:
        """Restore ``(state, metadata, step)``.

        ``like``: a pytree with the structure, shapes and dtypes of the saved
        state (e.g. freshly initialised params/opt_state); needed to get optax
        NamedTuples back. Without it, the raw tree (dicts/lists of arrays) is returned.
        """
        step = self._step_or_error(which)
        step_dir = self.directory / str(step)
        state_args = ocp.args.StandardRestore(_abstract(like)) if like is not None else ocp.args.StandardRestore()
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(state=state_args, metadata=ocp.args.JsonRestore()),
            )
        except Exception as e:  # Orbax/tensorstore raise many types for damaged files
            if "Structure mismatch" in str(e) or "not found in metadata" in str(e):
                raise CheckpointError(
                    f"checkpoint step {step} at {step_dir} holds a different state structure than "
                    "the current model/optimizer (was the model or optimizer configuration changed "
                    f"since it was saved?): {str(e).splitlines()[0][:300]}"
                ) from e
            raise CheckpointError(
                f"checkpoint step {step} at {step_dir} is corrupted or incomplete and cannot be "
                f"restored ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
                f"Other steps available: {[s for s in self.all_steps() if s != step]}; delete the "
                "damaged step directory to fall back to them."
            ) from e
        state = restored["state"]
        if like is not None:
            bad = _shape_mismatch(like, state)
            if bad:
                raise CheckpointError(f"checkpoint step {step} at {step_dir} does not match the model: {bad}")
        return state, dict(restored["metadata"] or {}), step

    def close(self) -> None:
        self.manager.close()


def open_run_directory(out_dir: str | Path, *, keep: int, best_metric: str, resume: bool) -> Checkpointer:
    """The :class:`Checkpointer` of a training run directory (created if missing).

    A run is never silently overwritten or invented: with ``resume=False`` a
    directory that already holds checkpoints is refused, with ``resume=True``
    one without any is.

    Raises:
        CheckpointError: one of the two cases above.
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    directory = Path(out_dir).resolve() / CHECKPOINT_SUBDIR
    # Both refusals happen before an Orbax manager exists where the directory
    # alone decides: even a closed manager can leave a signalling thread that
    # prints tracebacks at interpreter shutdown, after the one error line.
    steps = _step_dirs(directory)
    if resume and not steps:
        raise CheckpointError(f"resume=True: no checkpoint to resume from in {directory}")
    if not resume and steps:
        raise CheckpointError(
            f"{directory} already holds checkpoints (steps {steps}); pass resume=True "
            "to continue that run, or choose another out_dir"
        )
    ckpt = Checkpointer(out_dir, keep=keep, best_metric=best_metric)
    with closed_on_error(ckpt):
        # Step directories that Orbax does not count as finished checkpoints
        # (e.g. a save cut off before its commit) leave nothing to resume.
        if resume and ckpt.latest_step() is None:
            raise CheckpointError(f"resume=True: no checkpoint to resume from in {ckpt.directory}")
    return ckpt


def _step_dirs(directory: Path) -> list[int]:
    """The steps of ``directory``'s step directories, sorted (Orbax names them by the step number;
    a half-written one, ``N.orbax-checkpoint-tmp-*``, is not counted)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


@contextlib.contextmanager
def closed_on_error(ckpt: Checkpointer):
    """Close ``ckpt`` if the block raises, then re-raise.

    An Orbax manager left open when an error ends the program has live threads
    at interpreter shutdown, which then print ~40 lines of absl / asyncio
    tracebacks after the one clear error line.
    """
    try:
        yield ckpt
    except BaseException:
        ckpt.close()
        raise


def _shape_mismatch(like, state) -> str | None:
    a = jax.tree_util.tree_leaves(like)
    b = jax.tree_util.tree_leaves(state)
    if len(a) != len(b):
        return f"{len(b)} arrays saved, {len(a)} expected"
    for x, y in zip(a, b):
        if np.shape(x) != np.shape(y):
            return f"array of shape {np.shape(y)} saved where {np.shape(x)} expected"
    return None


def write_metadata(out_dir: str | Path, metadata: dict) -> None:
    """Write ``out_dir/metadata.json`` atomically (temp file, then rename)."""
    path = Path(out_dir) / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(metadata), indent=2, sort_keys=True))
    tmp.replace(path)


def read_metadata(out_dir: str | Path) -> dict:
    path = Path(out_dir) / METADATA_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def load_checkpoint(out_dir: str | Path, which: str | int = "best", *, like: Any = None) -> tuple[Any, dict]:
    """Params and metadata from a run directory written by :func:`lstm_jax.train.fit`.

    Args:
        out_dir: the run directory (the one holding ``checkpoints/``).
        which: ``"best"`` (lowest ``best_metric``; the latest if no step has
            metrics), ``"last"``, or a step number.
        like: optional params pytree to restore into (checks shapes).

    Raises:
        CheckpointError: the directory has no checkpoint, or the step is damaged.
    """
    out_dir = Path(out_dir)
    if not (out_dir / CHECKPOINT_SUBDIR).is_dir():
        raise CheckpointError(
            f"no checkpoint directory {out_dir / CHECKPOINT_SUBDIR}: is {out_dir} a training run "
            "directory (the out_dir of a training run)?"
        )
    meta = read_metadata(out_dir)
    ckpt = Checkpointer(out_dir, best_metric=meta.get("best_metric", "val_loss"))
    try:
        state, step_meta, step = ckpt.restore(which)
    finally:
        ckpt.close()
    params = state["params"]
    if like is not None:
        params = _restore_structure(like, params)
    metadata = {**meta, **step_meta, "step": step}
    return params, metadata


def _restore_structure(like, params):
    leaves = jax.tree_util.tree_leaves(params)
    treedef = jax.tree_util.tree_structure(like)
    if treedef.num_leaves != len(leaves):
        raise CheckpointError(f"checkpoint params have {len(leaves)} arrays, model expects {treedef.num_leaves}")
    return jax.tree_util.tree_unflatten(treedef, leaves)
