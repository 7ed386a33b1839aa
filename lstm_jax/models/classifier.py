"""Sequence classifier: recurrent stack -> features (last state, or outputs pooled over time) -> linear -> logits.

    xs (B, T, F) --apply_stack--> ys (B, T, D), final carries       D = H, or 2H when bidirectional
    features = h_T (B, D)                  readout "last" (default): the top layer's final state
             = mean_t ys[:, t] (B, D)      readout "mean": its outputs averaged over the real steps
             = max_t ys[:, t]  (B, D)      readout "max": their element-wise maximum over the real steps
    logits = features @ W + b       (B, C)
    loss   = mean softmax cross-entropy(logits, integer labels)

Pooling hands the readout every step's output directly, not only what the
state kept until the end; with ``lengths`` it covers each sequence's real
steps only (padding never enters the mean or the maximum).

The loss is taken on the raw logits (``optax.softmax_cross_entropy_with_integer_labels``
applies log-softmax itself, stably). Squashing the logits through a sigmoid
first, a common mistake, bounds them to (0, 1): the softmax over ten such
values can never be confident, so the gradients stay small and training is
slow and capped.

For a bidirectional stack the ``"last"`` features are ``[h_T forward, h_0 backward]``
(each direction's state after reading the whole sequence), ``2H`` wide.

Params are a plain dict ``{"rnn": <init_stack list>, "head": {"w": (H, C), "b": (C,)}}``.
The loss is :func:`lstm_jax.models.losses.cross_entropy` (re-exported here).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..cells import get_cell
from ..data.image_batches import eval_batches
from ..sequence import is_concrete, time_mask
from ..stack import check_chrono_init, chrono_init_stack
from .evaluation import evaluate
from .losses import cross_entropy, cross_entropy_per_item
from .spec import RecurrentSpec
from .task import Task

Array = jax.Array

READOUTS = ("last", "mean", "max")
"""What the linear head reads: the top layer's final state, or its outputs averaged / maxed over time."""


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """A sequence classifier: ``input_size`` features per step, ``num_classes`` classes, and the recurrent
    stack as a :class:`~lstm_jax.models.spec.RecurrentSpec` (its ``precision`` is the matmul policy; params
    stay float32 under any).

    ``chrono_timescale``: ``None`` keeps the cell's own gate biases (LSTM forget bias 1); a number ``T``
    draws every layer's keep-gate biases by the chrono init for memory up to ``T`` steps (Tallec &
    Ollivier 2018; :func:`lstm_jax.stack.chrono_init_stack`), e.g. the sequence length."""

    input_size: int
    num_classes: int = 10
    spec: RecurrentSpec = RecurrentSpec()
    readout: str = "last"
    chrono_timescale: float | None = None

    def __post_init__(self):
        if not isinstance(self.spec, RecurrentSpec):
            raise TypeError(f"ClassifierConfig.spec must be a RecurrentSpec, got {type(self.spec).__name__}")
        if self.input_size < 1 or self.num_classes < 2:
            raise ValueError(f"ClassifierConfig needs input_size >= 1 and num_classes >= 2, got {self}")
        if self.readout not in READOUTS:
            raise ValueError(f"ClassifierConfig.readout must be one of {READOUTS}, got {self.readout!r}")
        if self.chrono_timescale is not None:
            try:
                check_chrono_init(self.spec.cell, self.chrono_timescale)
            except ValueError as err:
                raise ValueError(f"ClassifierConfig.chrono_timescale: {err}") from None

    def to_dict(self) -> dict:
        """JSON-able, as a checkpoint's ``metadata["model"]`` records it (:meth:`from_dict` reads it back)."""
        return {"input_size": int(self.input_size), "num_classes": int(self.num_classes), "spec": self.spec.to_dict(),
                "readout": self.readout, "chrono_timescale": self.chrono_timescale}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassifierConfig":
        """The config of a :meth:`to_dict` record; one line when the record has no spec."""
        if not isinstance(data, dict) or "spec" not in data:
            raise ValueError("the checkpoint's metadata has no classifier spec (metadata['model']['spec'])")
        return cls(input_size=data["input_size"], num_classes=data["num_classes"],
                   spec=RecurrentSpec.from_dict(data["spec"]), readout=data.get("readout", "last"),  # older: last
                   chrono_timescale=data.get("chrono_timescale"))  # older: the cell's own init


def init_classifier(key: Array, config: ClassifierConfig, dtype=jnp.float32) -> dict:
    """Stack params from :meth:`RecurrentSpec.init` (gate biases by the chrono init when
    ``config.chrono_timescale`` is set), plus a Glorot-uniform readout with zero bias."""
    k_rnn, k_head = jax.random.split(key)
    rnn = config.spec.init(k_rnn, config.input_size, dtype)
    if config.chrono_timescale is not None:
        rnn = chrono_init_stack(jax.random.fold_in(k_rnn, 1), config.spec.cell, rnn, config.chrono_timescale)
    fan_in, fan_out = config.spec.features, config.num_classes
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    w = jax.random.uniform(k_head, (fan_in, fan_out), dtype, -limit, limit)
    return {"rnn": rnn, "head": {"w": w, "b": jnp.zeros((fan_out,), dtype)}}


def last_hidden(final_carries: list, cell="lstm") -> Array:
    """Features from :func:`apply_stack`'s final carries: the top layer's hidden state (``cell.hidden``)."""
    hidden = get_cell(cell).hidden
    top = final_carries[-1]
    if isinstance(top, dict):  # bidirectional
        return jnp.concatenate([hidden(top["forward"]), hidden(top["backward"])], axis=-1)
    return hidden(top)


def pooled_outputs(ys: Array, how: str, lengths: Array | None = None) -> Array:
    """``(B, D)``: the outputs ``ys`` ``(B, T, D)`` averaged (``"mean"``) or maxed (``"max"``) over time,
    over the first ``lengths[b]`` steps of each sequence when given (at least one: an empty sequence has
    nothing to pool).

    >>> pooled_outputs(jnp.array([[[1.0], [3.0], [9.0]]]), "mean", lengths=jnp.array([2]))
    Array([[2.]], dtype=float32)
    """
    if how not in ("mean", "max"):
        raise ValueError(f"pooling must be 'mean' or 'max', got {how!r}")
    if lengths is None:
        return ys.mean(axis=1) if how == "mean" else ys.max(axis=1)
    real = time_mask(lengths, ys.shape[1]).T[..., None]  # (B, T, 1)
    if how == "mean":
        return jnp.where(real, ys, 0).sum(axis=1) / jnp.maximum(lengths, 1)[:, None].astype(ys.dtype)
    return jnp.where(real, ys, -jnp.inf).max(axis=1)


def classifier_logits(
    params: dict,
    xs: Array,
    config: ClassifierConfig,
    *,
    lengths: Array | None = None,
    key: Array | None = None,
    train: bool = False,
    compute_dtype=None,
) -> Array:
    """Logits ``(B, C)`` for sequences ``xs`` ``(B, T, F)``.

    ``train=True`` with ``config.spec.dropout > 0`` applies dropout between layers
    (needs ``key``). With ``lengths``, each sequence's features are its state
    after its last real step (``readout="last"``) or pool its real steps only.
    """
    xs = jnp.asarray(xs, params["head"]["w"].dtype)
    if lengths is not None and config.readout != "last":
        lengths = jnp.asarray(lengths)
        if is_concrete(lengths) and int(lengths.min()) < 1:
            raise ValueError(f"readout {config.readout!r} pools each sequence's real steps: lengths must be >= 1, "
                             f"got a minimum of {int(lengths.min())}")
    ys, finals = config.spec.run(params["rnn"], xs, lengths=lengths, key=key, train=train,
                                 compute_dtype=compute_dtype)
    if config.readout == "last":
        h = last_hidden(finals, config.spec.cell)
    else:
        h = pooled_outputs(ys, config.readout, lengths)
    return h @ params["head"]["w"] + params["head"]["b"]


def accuracy(logits: Array, labels: Array, mask: Array | None = None) -> Array:
    """Fraction of examples whose arg-max logit is the label."""
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if mask is None:
        return correct.mean()
    return (correct * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def make_loss_fn(config: ClassifierConfig, compute_dtype=None) -> Callable:
    """``loss_fn(params, batch, key, model_state) -> (loss, (model_state, metrics))`` for ``lstm_jax.train.fit``.

    ``batch`` is ``{"x": (B, T, F), "y": (B,)}``.
    """

    def loss_fn(params, batch, key, model_state):
        logits = classifier_logits(
            params, batch["x"], config, key=key, train=True, compute_dtype=compute_dtype
        )
        loss = cross_entropy(logits, batch["y"])
        return loss, (model_state, {"accuracy": accuracy(logits, batch["y"])})

    return loss_fn


def make_predict_fn(config: ClassifierConfig, compute_dtype=None) -> Callable[[Any, Array], Array]:
    """A jitted ``predict(params, x) -> logits`` (evaluation mode: no dropout)."""

    @jax.jit
    def predict(params, x):
        return classifier_logits(params, x, config, compute_dtype=compute_dtype)

    return predict


def make_eval_step(predict: Callable[[Any, Array], Array]) -> Callable[[Any, dict], dict]:
    """``eval_step(params, batch)`` for :func:`lstm_jax.models.evaluation.evaluate` over
    :func:`~lstm_jax.data.image_batches.eval_batches`.

    Per batch: summed ``loss`` and ``accuracy`` (correct count) and ``count`` of the real
    examples (``mask > 0``; padding dropped), and their ``predictions`` (n,) and ``logits``
    (n, C), which ``evaluate(..., collect=EVAL_OUTPUTS)`` concatenates for a confusion matrix.
    """

    def eval_step(params, batch):
        logits = np.asarray(predict(params, batch["x"]))
        keep = np.asarray(batch.get("mask", np.ones(len(batch["y"]), np.float32))) > 0
        logits, y = logits[keep], np.asarray(batch["y"])[keep]
        predictions = logits.argmax(-1)
        return {"loss": float(np.asarray(cross_entropy_per_item(logits, y)).sum()),
                "accuracy": float((predictions == y).sum()), "count": int(keep.sum()),
                "predictions": predictions, "logits": logits}

    return eval_step


EVAL_OUTPUTS = ("predictions", "logits")
"""The per-example outputs of :func:`make_eval_step` (collected, not averaged)."""


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels), np.asarray(predictions)), 1)
    return cm


def classifier_task(config: ClassifierConfig, eval_batch_size: int = 1000, compute_dtype=None) -> Task:
    """The classifier as a :class:`~lstm_jax.models.task.Task`; ``data`` is ``(xs (N, T, F), ys (N,))``.

    ``evaluate`` gives ``{"loss", "accuracy", "error", "count"}`` over every example, and the
    ``predictions`` (N,) and ``logits`` (N, C) behind them (arrays: a confusion matrix needs them).
    """
    eval_step = make_eval_step(make_predict_fn(config, compute_dtype))

    def evaluate_split(params, data):
        xs, ys = data
        r = evaluate(eval_step, params, eval_batches(xs, ys, eval_batch_size), collect=EVAL_OUTPUTS)
        return {"loss": r["loss"], "accuracy": r["accuracy"], "error": 1.0 - r["accuracy"],
                "count": len(r["predictions"]),
                "predictions": r["predictions"], "logits": r["logits"]}

    def validate(params, data):
        r = evaluate_split(params, data)
        return {k: r[k] for k in ("loss", "accuracy", "error")}

    return Task(init=lambda key: init_classifier(key, config), loss=make_loss_fn(config, compute_dtype),
                evaluate=evaluate_split, validate=validate,
                report=lambda r: f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}", metric="loss")
