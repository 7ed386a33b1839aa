"""Recurrent cells as pure functions, each described by one :class:`Cell` object.

Every cell is a function ``step(params, carry, x_t) -> (new_carry, y_t)``:

* ``params`` is a plain dict of arrays (shapes in each cell's module),
* ``carry`` is the recurrent state (an array, or :class:`LSTMCarry`),
* ``x_t`` is one time step of input, ``(input_size,)`` for a single example
  or ``(batch, input_size)`` for a batch; every contraction is over the last axis.

``functools.partial(step, params)`` is then exactly the ``f(carry, x)`` that
``jax.lax.scan`` expects; :mod:`lstm_jax.layers` does that for you.

Weights are stored "input-major" (``x @ W``, as Flax and JAX code do), i.e.
transposed relative to PyTorch's ``weight_ih_l0``. Mixed precision: each step
takes a keyword ``compute_dtype`` (e.g. ``jnp.bfloat16``); the matrix products
then run in that dtype and accumulate into the carry's dtype; the gate
non-linearities and the carry stay in the parameter dtype.

One module per cell (``rnn``, ``lstm``, ``gru``, ``min_gru``, ``min_lstm``;
the two minimal cells of Feng et al. 2024 share :mod:`.minimal`) holds its equations once:
the recurrence, its hand-derived backward step, init and zero carry, and the
:class:`Cell` that bundles them (:mod:`lstm_jax.cells.base` explains the
protocol). To add a cell, write such a module and list its ``Cell`` in
:data:`CELLS` below (or pass the ``Cell`` object itself wherever a cell name
is accepted).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from .base import Cell, glorot_uniform, orthogonal_blocks, zeros_carry
from .gru import GRU, GRU_GATES, gru_step, init_gru
from .lstm import LSTM, LSTM_GATES, LSTMCarry, init_lstm, lstm_step, lstm_zeros_carry
from .min_gru import MIN_GRU, MIN_GRU_GATES, init_min_gru, min_gru_step
from .min_lstm import MIN_LSTM, MIN_LSTM_GATES, init_min_lstm, min_lstm_step
from .rnn import RNN, init_rnn, rnn_step

#: The registered cells by name.
CELLS = {c.name: c for c in (RNN, LSTM, GRU, MIN_GRU, MIN_LSTM)}


#: The registered cells' step functions, so that ``scan_layer(lstm_step, ...)`` can run a faster impl of the cell.
STEP_FUNCTIONS: dict[Callable, Cell] = {
    rnn_step: RNN, lstm_step: LSTM, gru_step: GRU, min_gru_step: MIN_GRU, min_lstm_step: MIN_LSTM,
}


def cell_of_step(step: Callable) -> tuple[Cell, Any] | None:
    """``(cell, compute_dtype)`` if ``step`` is a cell's step: one of :data:`STEP_FUNCTIONS`, a
    :meth:`Cell.step` (``LSTM.step``), or a ``functools.partial`` of either binding ``compute_dtype`` only;
    ``None`` for any other function (your own step)."""
    compute_dtype = None
    if isinstance(step, functools.partial) and not step.args and set(step.keywords) <= {"compute_dtype"}:
        compute_dtype = step.keywords.get("compute_dtype")
        step = step.func
    owner = getattr(step, "__self__", None)
    if isinstance(owner, Cell) and getattr(step, "__func__", None) is Cell.step:
        return owner, compute_dtype
    cell = STEP_FUNCTIONS.get(step) if callable(step) else None
    return None if cell is None else (cell, compute_dtype)


def get_cell(name: str | Cell) -> Cell:
    """Look up a cell by name (``"rnn"``, ``"lstm"``, ``"gru"``, ``"min_gru"``, ``"min_lstm"``);
    a :class:`Cell` is returned as is."""
    if isinstance(name, Cell):
        return name
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}") from None


__all__ = [
    "CELLS", "Cell", "get_cell", "STEP_FUNCTIONS", "cell_of_step",
    "RNN", "rnn_step", "init_rnn",
    "LSTM", "LSTM_GATES", "LSTMCarry", "lstm_step", "init_lstm", "lstm_zeros_carry",
    "GRU", "GRU_GATES", "gru_step", "init_gru",
    "MIN_GRU", "MIN_GRU_GATES", "min_gru_step", "init_min_gru",
    "MIN_LSTM", "MIN_LSTM_GATES", "min_lstm_step", "init_min_lstm",
    "zeros_carry", "glorot_uniform", "orthogonal_blocks",
]
