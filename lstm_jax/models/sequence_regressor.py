"""A recurrent stack with a linear head, for the synthetic long-range tasks.

``xs (B, T, F) -> spec.run (apply_stack) -> ys (B, T, H) -> linear head``, read out either
at the last step (the adding problem: one number per sequence) or at every step
(the copy task: a distribution over tokens per step). The stack is the library's
:func:`~lstm_jax.layers.apply_stack`, so every cell (``rnn``, ``gru``,
``lstm``) and every layer implementation runs unchanged.

:func:`make_task` bundles what training needs for one task at one length:
input/output sizes, a deterministic ``get_batch(step)``, the loss, and the
trivial baseline the loss is compared against (:class:`Task`).

Params::

    {"stack": [layer params, ...],           # from init_stack
     "head":  {"w": (H, out), "b": (out,)}}  # w Glorot-uniform, b zeros
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ..cells import glorot_uniform
from ..data import synthetic
from ..stack import chrono_init_stack
from . import task as task_protocol
from .evaluation import evaluate
from .losses import cross_entropy
from .spec import RecurrentSpec

Array = jax.Array

READOUTS = ("last", "all")


def init_sequence_model(key: Array, spec: RecurrentSpec, input_size: int, output_size: int,
                        dtype=jnp.float32) -> dict:
    """Params ``{"stack": ..., "head": {"w", "b"}}`` for :func:`apply_sequence_model`."""
    if not isinstance(output_size, int) or output_size < 1:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    k_stack, k_head = jax.random.split(key)
    head = {
        "w": glorot_uniform(k_head, spec.features, output_size, dtype),
        "b": jnp.zeros((output_size,), dtype),
    }
    return {"stack": spec.init(k_stack, input_size, dtype), "head": head}


def apply_sequence_model(params: dict, xs: Array, spec: RecurrentSpec, *, readout: str = "last") -> Array:
    """Run the model; ``readout="last"`` -> ``(B, out)``, ``"all"`` -> ``(B, T, out)``."""
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
    ys, _ = spec.run(params["stack"], xs)
    if readout == "last":
        ys = ys[..., -1, :]
    return ys @ params["head"]["w"] + params["head"]["b"]


# ---------------------------------------------------------------------------
# Tasks


class Task(NamedTuple):
    """One synthetic task at one length, ready for :func:`lstm_jax.train.fit`.

    name:        ``"adding"`` or ``"copy"``.
    T:           the length parameter (sequence length / delay).
    input_size:  features per step fed to the stack.
    output_size: head outputs (1 for adding, vocabulary size for copy).
    readout:     ``"last"`` or ``"all"``.
    batch_fn:    ``batch_fn(key, batch) -> get_batch(step)``, deterministic in step.
    loss:        ``loss(outputs, batch) -> (scalar loss, metrics dict)``.
    baseline:    loss of the trivial memoryless predictor (adding: MSE 1/6;
                 copy: cross-entropy log K on the recall steps).
    metric:      name of the loss in the metrics dict (``"mse"`` / ``"xent"``).
    """

    name: str
    T: int
    input_size: int
    output_size: int
    readout: str
    batch_fn: Callable
    loss: Callable
    baseline: float
    metric: str

    def model_loss(self, spec: RecurrentSpec, params, batch) -> tuple[Array, dict]:
        """Forward the model on ``batch = (inputs, targets)`` and score it."""
        inputs, _ = batch
        out = apply_sequence_model(params, self.prepare(inputs), spec, readout=self.readout)
        return self.loss(out, batch)

    def prepare(self, inputs: Array) -> Array:
        """Turn the generator's inputs into the float features the stack reads."""
        if self.name == "copy":
            return jax.nn.one_hot(inputs, self.input_size, dtype=jnp.float32)
        return inputs


def _adding_loss(outputs, batch):
    _, targets = batch
    mse = jnp.mean((outputs[..., 0] - targets) ** 2)
    return mse, {"mse": mse}


def make_task(name: str, T: int, *, num_symbols: int = 8, length: int = 10) -> Task:
    """The :class:`Task` ``"adding"`` (sequence length ``T``) or ``"copy"`` (delay ``T``)."""
    if name == "adding":
        synthetic.adding_problem(jax.random.key(0), 1, T)  # validate T now
        return Task(
            "adding", T, 2, 1, "last",
            lambda key, batch: synthetic.adding_batch_fn(key, batch, T),
            _adding_loss, synthetic.ADDING_BASELINE_MSE, "mse",
        )
    if name == "copy":
        synthetic.copy_task(jax.random.key(0), 1, T, num_symbols=num_symbols, length=length)
        vocab = synthetic.copy_vocab_size(num_symbols)
        recall = synthetic.copy_recall_slice(T, length)

        def copy_loss(outputs, batch):
            _, targets = batch
            logits, tgt = outputs[:, recall], targets[:, recall]
            xent = cross_entropy(logits, tgt)
            acc = jnp.mean(jnp.argmax(logits, axis=-1) == tgt)
            return xent, {"xent": xent, "accuracy": acc}

        return Task(
            "copy", T, vocab, vocab, "all",
            lambda key, batch: synthetic.copy_batch_fn(key, batch, T, num_symbols=num_symbols, length=length),
            copy_loss, math.log(num_symbols), "xent",
        )
    raise ValueError(f"unknown task {name!r}; choose 'adding' or 'copy'")


def regressor_config(task: Task, spec: RecurrentSpec, *, init: str = "standard", num_symbols: int = 8,
                     copy_length: int = 10) -> dict:
    """JSON-able record of a regressor (a checkpoint's ``metadata["model"]``): the task as :func:`make_task`
    builds it, the init and the spec; :func:`regressor_from_config` reads it back."""
    made = {"name": task.name, "T": task.T}
    if task.name == "copy":
        made.update(num_symbols=num_symbols, length=copy_length)
    return {"task": made, "init": init, "spec": spec.to_dict()}


def regressor_from_config(config: dict) -> tuple[Task, RecurrentSpec]:
    """``(task, spec)`` of a :func:`regressor_config` record; one line when the record has no spec."""
    if not isinstance(config, dict) or "spec" not in config or "task" not in config:
        raise ValueError("the checkpoint's metadata has no regressor spec (metadata['model']['spec'] and ['task'])")
    return make_task(**config["task"]), RecurrentSpec.from_dict(config["spec"])


def regressor_task(task: Task, spec: RecurrentSpec, *, init: str = "standard",
                   chunk: int = 500) -> task_protocol.Task:
    """``task`` (from :func:`make_task`) with the recurrent stack ``spec`` and a linear head as a
    :class:`lstm_jax.models.task.Task`; ``data`` is a fixed test batch ``(inputs, targets)``.

    ``init="chrono"`` sets the keep-gate biases for memory up to ``T`` steps (Tallec & Ollivier 2018).
    ``evaluate`` averages the task's metrics (``mse``, or ``xent`` and ``accuracy``) over every
    sequence of the batch, ``chunk`` at a time; ``metric`` is the task's loss metric.
    """
    if init not in ("standard", "chrono"):
        raise ValueError(f"init must be 'standard' or 'chrono', got {init!r}")

    def init_params(key):
        params = init_sequence_model(key, spec, task.input_size, task.output_size)
        if init == "chrono":  # memory ranges up to the whole sequence
            seq_len = task.batch_fn(jax.random.key(0), 1)(0)[0].shape[1]
            params["stack"] = chrono_init_stack(jax.random.fold_in(key, 1), spec.cell, params["stack"], seq_len)
        return params

    def loss(params, batch, key, model_state):
        value, metrics = task.model_loss(spec, params, batch)
        return value, (model_state, metrics)

    @jax.jit
    def chunk_metrics(params, batch):
        return task.model_loss(spec, params, batch)[1]

    def chunk_sums(params, b):  # the chunk's means times its size, for the one evaluate's sums
        n = b[0].shape[0]
        return {**{name: float(v) * n for name, v in jax.device_get(chunk_metrics(params, b)).items()}, "count": n}

    def evaluate_all(params, data):
        inputs, targets = data
        chunks = ((inputs[s : s + chunk], targets[s : s + chunk]) for s in range(0, inputs.shape[0], chunk))
        return evaluate(chunk_sums, params, chunks)

    return task_protocol.Task(init=init_params, loss=loss, evaluate=evaluate_all, metric=task.metric)
