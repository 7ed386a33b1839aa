"""Synthetic long-range memory tasks, generated on the fly from a ``jax.random`` key.

No files: every batch is a pure function of ``(key, batch, T)``, so the same
key always gives the same batch (and ``jax.random.fold_in(key, step)`` gives a
reproducible stream for training). The sizes are static Python ints, so the
generators can be jitted with them as static arguments (see
:func:`adding_batch_fn` / :func:`copy_batch_fn`).

Adding problem (Hochreiter & Schmidhuber 1997; layout of Le, Jaitly & Hinton 2015)
-----------------------------------------------------------------------------------
``inputs`` has shape ``(batch, T, 2)``:

* channel 0 (values):  ``U(0, 1)`` i.i.d. at every step;
* channel 1 (markers): exactly two 1.0s, all else 0.0; the first at a uniform
  position in the first half ``[0, T//2)``, the second at a uniform position in
  the second half ``[T//2, T)``.

``targets`` has shape ``(batch,)``: the sum of the two marked values. The
model reads the whole sequence and answers at the last step. Since the target
is a sum of two ``U(0,1)``, its mean is 1 and its variance 1/6: always
predicting 1.0 gives MSE = 1/6 ~= 0.167 (:data:`ADDING_BASELINE_MSE`), the
number to beat. The task needs ``T >= 2``; the distance the model must bridge
is about ``T/2`` on average and up to ``T - 1``.

Copy / recall task (after Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016)
------------------------------------------------------------------------------
Tokens are ints: ``0`` = blank (:data:`COPY_BLANK`), ``1..K`` = the ``K =
num_symbols`` symbols, ``K + 1`` = the recall marker
(:func:`copy_marker`). With ``L = length`` symbols and a delay of ``T``
blanks, a sequence has ``N = 2L + T`` steps:

=========================  ======================  ========================
positions                  ``inputs``              ``targets``
=========================  ======================  ========================
``[0, L)``                 symbols s_1..s_L        blank
``[L, L + T)``             blank (the delay)       blank
``L + T``                  recall marker           s_1
``(L + T, 2L + T)``        blank                   s_2..s_L
=========================  ======================  ========================

i.e. ``targets[:, t + L + T] == inputs[:, t]`` for ``t < L`` (the inputs
shifted by the delay plus the sequence length), and the model must output the
L symbols starting at the step where it sees the marker. Symbols are uniform
over ``1..K`` (no blanks among them). A model with no memory of the first L
steps can at best output a uniform guess on the recall steps: cross-entropy
``log K`` per recall step (:func:`copy_baseline_xent`), accuracy ``1/K``. The
delay may be 0 (the marker then immediately follows the symbols); ``T`` is the
number of blank steps between the last symbol and the marker, so the distance
from ``s_i`` to the step where it must be produced is ``L + T``.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

#: MSE of always predicting the mean 1.0 on the adding problem: Var(U1 + U2) = 2/12.
ADDING_BASELINE_MSE = 1.0 / 6.0

#: Blank token of the copy task (inputs during the delay, targets outside the recall).
COPY_BLANK = 0


def _check_int(name: str, value, minimum: int, task: str, why: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{task}: {name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < minimum:
        raise ValueError(f"{task}: {name} must be >= {minimum} ({why}), got {value}")
    return value


def _check_key(task: str, key) -> None:
    if not isinstance(key, jax.Array):
        raise TypeError(f"{task}: key must be a jax.random key (jax.Array), got {type(key).__name__}")


# ---------------------------------------------------------------------------
# Adding problem


def adding_problem(key: Array, batch: int, T: int, *, dtype=jnp.float32) -> tuple[Array, Array]:
    """One batch of the adding problem (layout in the module docstring).

    Args:
        key: ``jax.random`` key; the batch is a deterministic function of it.
        batch: number of sequences, >= 1.
        T: sequence length, >= 2 (one marker in each half).
        dtype: floating dtype of inputs and targets.

    Returns:
        ``(inputs, targets)``: ``(batch, T, 2)`` and ``(batch,)``.
    """
    task = "adding_problem"
    _check_key(task, key)
    batch = _check_int("batch", batch, 1, task, "an empty batch has no examples")
    T = _check_int("T", T, 2, task, "one marker goes in each half of the sequence")
    return _adding(key, batch, T, jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _adding(key, batch, T, dtype):
    k_val, k_first, k_second = jax.random.split(key, 3)
    half = T // 2
    values = jax.random.uniform(k_val, (batch, T), dtype)
    first = jax.random.randint(k_first, (batch,), 0, half)
    second = jax.random.randint(k_second, (batch,), half, T)
    t = jnp.arange(T)[None, :]
    markers = ((t == first[:, None]) | (t == second[:, None])).astype(dtype)
    inputs = jnp.stack([values, markers], axis=-1)
    targets = jnp.sum(values * markers, axis=1)
    return inputs, targets


def adding_batch_fn(key: Array, batch: int, T: int, *, dtype=jnp.float32) -> Callable[[int], tuple[Array, Array]]:
    """``get_batch(step) -> (inputs, targets)`` for training: batch ``step`` uses
    ``fold_in(key, step)``, so the stream is reproducible and resumable."""
    adding_problem(key, batch, T, dtype=dtype)  # validate once, eagerly
    dtype = jnp.dtype(dtype)
    return lambda step: _adding(jax.random.fold_in(key, step), batch, T, dtype)


# ---------------------------------------------------------------------------
# Copy / recall task


def copy_marker(num_symbols: int) -> int:
    """Token id of the recall marker for ``num_symbols`` symbols: ``num_symbols + 1``."""
    return num_symbols + 1


def copy_vocab_size(num_symbols: int) -> int:
    """Number of distinct tokens: blank + symbols + marker = ``num_symbols + 2``."""
    return num_symbols + 2


def copy_seq_len(T: int, length: int) -> int:
    """Total steps of a copy-task sequence: ``2 * length + T``."""
    return 2 * length + T


def copy_baseline_xent(num_symbols: int) -> float:
    """Cross-entropy per recall step of a memoryless model (uniform guess): ``log K``."""
    return math.log(num_symbols)


def copy_task(
    key: Array, batch: int, T: int, *, num_symbols: int = 8, length: int = 10
) -> tuple[Array, Array]:
    """One batch of the copy task (layout in the module docstring).

    Args:
        key: ``jax.random`` key; the batch is a deterministic function of it.
        batch: number of sequences, >= 1.
        T: the delay, number of blank steps between the symbols and the marker, >= 0.
        num_symbols: ``K`` >= 2 distinct symbols (tokens ``1..K``).
        length: ``L`` >= 1 symbols to remember.

    Returns:
        ``(inputs, targets)``, both int32 ``(batch, 2 * length + T)``. Use
        :func:`copy_recall_slice` to pick the ``L`` steps where the targets
        are the symbols, and ``jax.nn.one_hot(inputs, copy_vocab_size(K))``
        to feed a recurrent layer.
    """
    task = "copy_task"
    _check_key(task, key)
    batch = _check_int("batch", batch, 1, task, "an empty batch has no examples")
    T = _check_int("T", T, 0, task, "the delay is a number of blank steps")
    num_symbols = _check_int("num_symbols", num_symbols, 2, task, "with one symbol there is nothing to remember")
    length = _check_int("length", length, 1, task, "at least one symbol must be copied")
    return _copy(key, batch, T, num_symbols, length)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _copy(key, batch, T, num_symbols, length):
    symbols = jax.random.randint(key, (batch, length), 1, num_symbols + 1, dtype=jnp.int32)
    blank = lambda n: jnp.full((batch, n), COPY_BLANK, jnp.int32)  # noqa: E731
    marker = jnp.full((batch, 1), copy_marker(num_symbols), jnp.int32)
    inputs = jnp.concatenate([symbols, blank(T), marker, blank(length - 1)], axis=1)
    targets = jnp.concatenate([blank(length + T), symbols], axis=1)
    return inputs, targets


def copy_recall_slice(T: int, length: int) -> slice:
    """Time steps whose targets are the symbols: ``slice(length + T, 2 * length + T)``."""
    return slice(length + T, 2 * length + T)


def copy_batch_fn(
    key: Array, batch: int, T: int, *, num_symbols: int = 8, length: int = 10
) -> Callable[[int], tuple[Array, Array]]:
    """``get_batch(step) -> (inputs, targets)`` for training, batch ``step`` from ``fold_in(key, step)``."""
    copy_task(key, batch, T, num_symbols=num_symbols, length=length)  # validate once
    return lambda step: _copy(jax.random.fold_in(key, step), batch, T, num_symbols, length)
