"""Character-level language model: input encoding -> stacked recurrent cells -> linear readout.

::

    ids (B, T) --embed/one-hot--> (B, T, E) --apply_stack (N x lstm|gru|rnn|min_*)--> (B, T, H)
        --dropout--> --@ W_out + b_out--> logits (B, T, V)

The loss is the mean softmax cross-entropy of the next character, in nats per
character; bits per character = nats / ln 2.

Params are a plain dict ``{"embed": (V, E) (absent for one-hot input),
"stack": [per-layer cell params], "readout": {"w": (H, V), "b": (V,)}}``.
What the stack is (cell, sizes, impl, precision, dropout, unroll) is a
:class:`~lstm_jax.models.spec.RecurrentSpec`, which every function here takes;
:func:`model_config` records it (the training script saves it as the checkpoint's
``metadata["model"]``) and :func:`spec_from_config` reads it back.

>>> import jax
>>> spec = RecurrentSpec(cell="lstm", hidden=16, layers=2)
>>> params = init_char_model(jax.random.PRNGKey(0), vocab_size=10, spec=spec)
>>> logits, carry = char_logits(params, jax.numpy.zeros((3, 7), int), spec)
>>> logits.shape
(3, 7, 10)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..cells import glorot_uniform
from ..data.windows import StatefulWindows, eval_windows, random_windows
from .evaluation import evaluate
from .losses import cross_entropy, cross_entropy_per_item
from .spec import RecurrentSpec
from .task import Task

Array = jax.Array
LN2 = math.log(2.0)


def init_char_model(
    key: Array,
    vocab_size: int,
    spec: RecurrentSpec,
    embed_dim: int | None = None,
    dtype=jnp.float32,
) -> dict:
    """Initialise a character model.

    Args:
        vocab_size: number of distinct characters ``V``.
        spec: the recurrent stack (cell, hidden size ``H``, layers, directions).
        embed_dim: size of a learned embedding; ``None`` feeds one-hot vectors
            (then the first layer's ``w_x`` rows *are* the embedding).
    """
    if not isinstance(spec, RecurrentSpec):
        raise TypeError(f"spec must be a RecurrentSpec, got {type(spec).__name__}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if embed_dim is not None and (not isinstance(embed_dim, (int, np.integer)) or embed_dim < 1):
        raise ValueError(f"embed_dim must be a positive integer or None (one-hot), got {embed_dim!r}")
    k_embed, k_stack, k_out = jax.random.split(key, 3)
    params: dict[str, Any] = {}
    in_size = vocab_size
    if embed_dim is not None:
        params["embed"] = (jax.random.normal(k_embed, (vocab_size, embed_dim)) / math.sqrt(embed_dim)).astype(dtype)
        in_size = embed_dim
    params["stack"] = spec.init(k_stack, in_size, dtype)
    params["readout"] = {
        "w": glorot_uniform(k_out, spec.features, vocab_size, dtype),
        "b": jnp.zeros((vocab_size,), dtype),
    }
    return params


def model_config(params: dict, spec: RecurrentSpec) -> dict:
    """JSON-able description of the model (saved as checkpoint metadata ``["model"]``): the spec and the sizes
    the params fix (``vocab_size``, ``embed_dim``). :func:`spec_from_config` reads the spec back."""
    return {
        "spec": spec.to_dict(),
        "vocab_size": int(params["readout"]["b"].shape[0]),
        "embed_dim": int(params["embed"].shape[1]) if "embed" in params else None,
    }


def spec_from_config(config: dict) -> RecurrentSpec:
    """The :class:`RecurrentSpec` of a :func:`model_config` record; one line when the record has none."""
    if not isinstance(config, dict) or "spec" not in config:
        raise ValueError("the checkpoint's metadata has no model spec (metadata['model']['spec']); "
                         "it was not written by this version of char_lstm")
    return RecurrentSpec.from_dict(config["spec"])


def encode_inputs(params: dict, inputs: Array) -> Array:
    """Character ids ``(..., T)`` -> the stack's input features ``(..., T, E)``: the learned embedding, or one-hot."""
    inputs = jnp.asarray(inputs)
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
        raise TypeError(f"inputs must be integer character ids, got dtype {inputs.dtype}")
    dtype = params["readout"]["w"].dtype
    if "embed" in params:
        return jnp.take(params["embed"], inputs, axis=0)
    return jax.nn.one_hot(inputs, params["readout"]["b"].shape[0], dtype=dtype)


def zeros_carry(params: dict, spec: RecurrentSpec, batch_size: int | None = None) -> list:
    """Zero recurrent state for ``batch_size`` sequences (``None``: one unbatched sequence)."""
    return spec.zeros_carry(params["stack"], () if batch_size is None else (batch_size,))


def char_logits(
    params: dict,
    inputs: Array,
    spec: RecurrentSpec,
    carry=None,
    *,
    key: Array | None = None,
    train: bool = False,
    compute_dtype=None,
) -> tuple[Array, list]:
    """Next-character logits for ``inputs`` (int ids, ``(B, T)`` or ``(T,)``).

    Returns ``(logits (B, T, V), final_carry)``. ``carry`` continues from a
    previous window (truncated BPTT, sampling); ``None`` starts from zeros.
    With ``train=True``, ``spec.dropout`` (with ``key``) is applied between layers
    and before the readout.
    """
    inputs = jnp.asarray(inputs)
    if inputs.ndim not in (1, 2):
        raise ValueError(f"inputs must have shape (batch, time) or (time,), got {inputs.shape}")
    if inputs.shape[-1] == 0:
        raise ValueError(f"inputs have an empty time axis (shape {inputs.shape})")
    xs = encode_inputs(params, inputs)
    dropout = spec.dropout if train else 0.0
    if dropout and key is None:
        raise ValueError("dropout > 0 needs a jax.random key")
    k_stack, k_out = jax.random.split(key) if dropout else (None, None)
    ys, carry = spec.run(params["stack"], xs, carry, key=k_stack, train=train, compute_dtype=compute_dtype)
    if dropout:
        keep = jax.random.bernoulli(k_out, 1.0 - dropout, ys.shape)
        ys = jnp.where(keep, ys / (1.0 - dropout), 0.0)
    logits = ys @ params["readout"]["w"] + params["readout"]["b"]
    return logits, carry


def char_loss(params, inputs, targets, spec: RecurrentSpec, carry=None, **kwargs) -> tuple[Array, list]:
    """Mean next-character cross-entropy in nats/char; returns ``(loss, final_carry)``."""
    logits, carry = char_logits(params, inputs, spec, carry, **kwargs)
    return cross_entropy(logits, targets), carry


@functools.partial(jax.jit, static_argnames=("spec",))
def eval_step(params, batch, spec: RecurrentSpec) -> dict[str, Array]:
    """Summed loss over a batch ``(inputs, targets)`` from a zero state: ``{"nats": sum, "count": n}``."""
    return eval_stream_step(params, None, batch, spec)[1]


@functools.partial(jax.jit, static_argnames=("spec",))
def eval_stream_step(params, carry, batch, spec: RecurrentSpec) -> tuple[Any, dict[str, Array]]:
    """Summed loss over a batch ``(inputs, targets)`` continuing from ``carry`` (``None``: zeros).

    Returns ``(final_carry, {"nats": sum, "count": n})``: feeding consecutive
    windows of one text through it, each carry into the next, scores every
    character given all the characters before it (no reset at window edges).
    """
    inputs, targets = batch
    logits, carry = char_logits(params, inputs, spec, carry)
    nats = jnp.sum(cross_entropy_per_item(logits, targets))
    return carry, {"nats": nats, "count": jnp.asarray(targets.size, jnp.float32)}


def _filter_logits(logits: Array, temperature: float, top_k: int | None) -> Array:
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return logits


@functools.partial(jax.jit, static_argnames=("length", "top_k", "greedy", "spec"))
def _generate(params, prompt_ids, key, temperature, *, length: int, top_k: int | None, greedy: bool,
              spec: RecurrentSpec):
    logits, carry = char_logits(params, prompt_ids[None, :], spec)
    last = logits[0, -1]

    def body(state, i):
        carry, last = state
        if greedy:
            nxt = jnp.argmax(last).astype(jnp.int32)
        else:
            nxt = jax.random.categorical(jax.random.fold_in(key, i), _filter_logits(last, temperature, top_k)).astype(jnp.int32)
        logits, carry = char_logits(params, nxt[None, None], spec, carry)
        return (carry, logits[0, -1]), nxt

    _, out = jax.lax.scan(body, (carry, last), jnp.arange(length))
    return out


def sample(
    params: dict,
    spec: RecurrentSpec,
    vocab,
    prompt: str,
    length: int = 300,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Generate ``length`` characters after ``prompt``; returns ``prompt`` + the generated text.

    Deterministic for a given ``seed``. ``temperature == 0`` picks the most
    likely character each step (greedy). ``top_k`` keeps only the k most likely
    characters before sampling. Generation runs one character at a time on the reference
    ``scan`` in float32, whatever ``spec.impl`` and ``spec.precision`` trained the model.

    Raises:
        ValueError: empty prompt, characters outside ``vocab`` (from
            ``vocab.encode``), negative length, bad temperature/top_k.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string (the model needs at least one character to condition on)")
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be a non-negative integer, got {length!r}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    ids = np.asarray(vocab.encode(prompt), dtype=np.int32)
    if length == 0:
        return prompt
    out = _generate(
        params,
        jnp.asarray(ids),
        jax.random.PRNGKey(seed),
        jnp.float32(max(temperature, 1e-6)),
        length=int(length),
        top_k=None if top_k is None else int(top_k),
        greedy=temperature == 0,
        spec=spec.replace(impl="scan", precision="fp32"),
    )
    return prompt + vocab.decode(np.asarray(out))


# --------------------------------------------------------------------------- evaluation and the task

EVAL_CONTEXTS = ("window", "stream")
"""How :func:`eval_split` reads a split: ``window`` (zero state per window) and ``stream`` (state carried)."""

EVAL_SPLITS = ("val", "test", "heldout")
"""The splits a run can be scored on: ``heldout`` is ``val`` then ``test`` as one text (:attr:`TextSplits.heldout`)."""


def eval_splits(splits, names=("val", "test")) -> dict:
    """``{name: ids}`` of the :class:`~lstm_jax.data.text.TextSplits` ``splits`` named in ``names`` (``EVAL_SPLITS``).

    Example: ``eval_splits(load_text("tiny_shakespeare"), ["heldout"])["heldout"]`` is the last 10% of the
    corpus (111,540 characters), nanoGPT's validation text.
    """
    table = {"val": lambda: splits.validation, "test": lambda: splits.test, "heldout": lambda: splits.heldout}
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ValueError(f"eval splits must be a non-empty list of {EVAL_SPLITS}, got {list(names)!r}")
    return {name: table[name]() for name in dict.fromkeys(names)}


def eval_split(params, ids, spec: RecurrentSpec, batch_size: int, seq_len: int, context: str = "window") -> dict:
    """Nats and bits per character over every character of ``ids`` (int ids, ``(N,)``).

    ``context="window"``: windows of ``seq_len`` characters, ``batch_size`` at a
    time, each from a zero state, so a prediction sees at most the ``seq_len - 1``
    characters before it in its window (the first of each window sees none).
    ``context="stream"``: the split read once as one sequence, in windows of
    ``seq_len`` with the state carried from each window into the next, so every
    prediction conditions on all earlier characters of the split (char-rnn's
    evaluation). One sequence, so ``batch_size`` is unused and it runs serially.
    Returns ``{"nats_per_char", "bits_per_char"}``.
    """
    if context == "window":
        windows = eval_windows(ids, batch_size, seq_len)
        step = functools.partial(eval_step, spec=spec)
    elif context == "stream":  # (1, seq_len) windows in reading order, then the tail
        windows, carry = eval_windows(ids, 1, seq_len), [zeros_carry(params, spec, 1)]

        def step(params, batch):  # each window continues from the state the one before it left
            carry[0], sums = eval_stream_step(params, carry[0], batch, spec)
            return sums
    else:
        raise ValueError(f"context must be one of {EVAL_CONTEXTS}, got {context!r}")
    nats = evaluate(step, params, windows)["nats"]
    return {"nats_per_char": nats, "bits_per_char": nats / LN2}


def context_prefix(context: str) -> str:
    """Key prefix of a context's figures: none for ``window``, ``"stream_"`` for ``stream``."""
    return "" if context == "window" else f"{context}_"


def eval_contexts(params, ids, spec: RecurrentSpec, batch_size: int, seq_len: int, contexts=EVAL_CONTEXTS) -> dict:
    """:func:`eval_split` under each of ``contexts``, in one dict: ``window`` keys plain, the others prefixed.

    E.g. ``{"nats_per_char", "bits_per_char", "stream_nats_per_char", "stream_bits_per_char"}``.
    """
    out = {}
    for context in contexts:
        r = eval_split(params, ids, spec, batch_size, seq_len, context=context)
        out.update({context_prefix(context) + k: v for k, v in r.items()})
    return out


def make_loss_fn(spec: RecurrentSpec, *, stateful: bool) -> Callable:
    """``loss_fn`` for :func:`lstm_jax.train.fit`: mean nats/char; with ``stateful`` the carry is the model_state.

    ``batch`` is ``(inputs, targets)`` ``(B, T)`` ints, or with ``stateful`` ``(inputs, targets, reset)``:
    ``reset`` zeroes the carried state where a new pass over the streams begins.
    """
    def loss_fn(params, batch, key, model_state):
        if stateful:
            inputs, targets, reset = batch
            carry = jax.tree_util.tree_map(lambda c: jnp.where(reset, jnp.zeros_like(c), c), model_state)
        else:
            inputs, targets = batch
            carry = None
        loss, final = char_loss(params, inputs, targets, spec, carry, key=key, train=True)
        new_state = jax.lax.stop_gradient(final) if stateful else model_state
        return loss, (new_state, {"bits_per_char": loss / LN2})

    return loss_fn


def train_batches(train_ids, batch_size: int, seq_len: int, *, seed: int = 0, stateful: bool = False,
                  rows: slice | None = None) -> Callable[[int], tuple]:
    """``get_batch(step)`` for fit in the format :func:`make_loss_fn` reads: ``rows`` of random windows
    ``(inputs, targets)`` ``(B, seq_len)``, or with ``stateful`` consecutive ones with the ``reset`` flag."""
    if not stateful:
        return lambda step: random_windows(train_ids, batch_size, seq_len, seed=seed, step=step, rows=rows)
    windows = StatefulWindows(train_ids, batch_size, seq_len)
    return lambda step: (*windows(step, rows), np.bool_(windows.is_stream_start(step)))


def char_task(vocab_size: int, spec: RecurrentSpec, *, embed_dim: int | None = None, stateful: bool = False,
              batch_size: int | None = None, eval_batch_size: int = 64, eval_seq_len: int = 64,
              contexts=EVAL_CONTEXTS) -> Task:
    """The character LM as a :class:`~lstm_jax.models.task.Task`; ``data`` is a split's ids ``(N,)``.

    ``validate``: window loss (``{"loss", "bpc"}``, nats and bits per char); ``evaluate``:
    :func:`eval_contexts` under ``contexts``. With ``stateful`` the carried state of ``batch_size``
    streams is the model state (truncated BPTT).
    """
    def init(key):
        return init_char_model(key, vocab_size, spec, embed_dim)

    def validate(params, ids):
        r = eval_split(params, ids, spec, eval_batch_size, eval_seq_len)
        return {"loss": r["nats_per_char"], "bpc": r["bits_per_char"]}

    def report(r):
        line = f"{r['nats_per_char']:.4f} nats/char ({r['bits_per_char']:.4f} bits)"
        if "stream_nats_per_char" in r:
            line += f", full context {r['stream_nats_per_char']:.4f}"
        return line

    state = None
    if stateful:
        state = spec.zeros_carry(jax.eval_shape(init, jax.random.PRNGKey(0))["stack"], (batch_size,))
    return Task(
        init=init,
        loss=make_loss_fn(spec, stateful=stateful),
        evaluate=lambda params, ids: eval_contexts(params, ids, spec, eval_batch_size, eval_seq_len, contexts),
        validate=validate, report=report, metric="loss", model_state=state,
    )
