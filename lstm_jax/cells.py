"""Recurrent cells as pure functions.

Every cell is a function ``step(params, carry, x_t) -> (new_carry, y_t)``:

* ``params`` is a plain dict of arrays (shapes below),
* ``carry`` is the recurrent state (an array, or :class:`LSTMCarry`),
* ``x_t`` is one time step of input, shape ``(input_size,)`` for a single
  example or ``(batch, input_size)`` for a batch; the same code serves both,
  because every contraction is over the last axis.

``functools.partial(step, params)`` is then exactly the ``f(carry, x)`` that
``jax.lax.scan`` expects; :mod:`lstm_jax.layers` does that for you.

Notation: ``I`` = input size, ``H`` = hidden size, ``@`` = matrix product on
the last axis. Weights are stored "input-major" (``x @ W``, as Flax and JAX
code do), i.e. transposed relative to PyTorch's ``weight_ih_l0``.

Mixed precision: each step takes a keyword ``compute_dtype`` (e.g.
``jnp.bfloat16`` on accelerators). The matrix products then run in that dtype
and accumulate into the carry's dtype; the gate non-linearities and the carry
stay in the parameter dtype.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict


class LSTMCarry(NamedTuple):
    """LSTM state. Named fields, so no code depends on the (h, c) vs (c, h) order.

    hidden: ``h_t``, shape ``(..., H)``; also the cell's output ``y_t``.
    cell:   ``c_t``, shape ``(..., H)``; the additive memory.
    """

    hidden: Array
    cell: Array


# ---------------------------------------------------------------------------
# Validation shared by the cells. Shapes are static under jit, so every error
# here is raised at trace time, before anything runs.


def _check_input(name: str, params: Params, x: Array) -> None:
    w_x = params["w_x"]
    if x.ndim not in (1, 2):
        raise ValueError(
            f"{name}: x_t must have shape (input_size,) or (batch, input_size); "
            f"got rank {x.ndim} with shape {x.shape}"
        )
    if x.shape[-1] != w_x.shape[0]:
        raise ValueError(
            f"{name}: x_t has {x.shape[-1]} features (shape {x.shape}) but w_x "
            f"expects input_size={w_x.shape[0]} (w_x shape {w_x.shape})"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: x_t must be a floating dtype, got {x.dtype}")


def _check_state(name: str, field: str, state: Array, x: Array, hidden_size: int) -> None:
    expected = x.shape[:-1] + (hidden_size,)
    if state.shape != expected:
        raise ValueError(
            f"{name}: carry {field} has shape {state.shape}, expected {expected} "
            f"for x_t of shape {x.shape} and hidden_size={hidden_size}"
        )


def _matmul(x: Array, w: Array, compute_dtype: Any, out_dtype: Any) -> Array:
    """``x @ w`` in ``compute_dtype`` (if given), accumulated in ``out_dtype``."""
    if compute_dtype is not None:
        x = x.astype(compute_dtype)
        w = w.astype(compute_dtype)
    return jnp.matmul(x, w, preferred_element_type=out_dtype).astype(out_dtype)


# ---------------------------------------------------------------------------
# Elman RNN


def rnn_step(params: Params, carry: Array, x_t: Array, *, compute_dtype=None):
    """Elman RNN step.

    Equations::

        h_t = tanh(x_t @ w_x + h_{t-1} @ w_h + b)
        y_t = h_t

    Params:
        w_x: (I, H); w_h: (H, H); b: (H,)
    Carry:
        h: (H,) or (batch, H)
    """
    _check_input("rnn_step", params, x_t)
    hidden_size = params["w_h"].shape[0]
    _check_state("rnn_step", "h", carry, x_t, hidden_size)
    dtype = carry.dtype
    pre = _matmul(x_t, params["w_x"], compute_dtype, dtype) + _matmul(
        carry, params["w_h"], compute_dtype, dtype
    )
    h = jnp.tanh(pre + params["b"])
    return h, h


# ---------------------------------------------------------------------------
# LSTM

#: Order of the four gate blocks along the ``4H`` axis of ``w_x``, ``w_h``, ``b``.
#: Same as PyTorch (``W_ii|W_if|W_ig|W_io``) and Flax's ``OptimizedLSTMCell``.
LSTM_GATES = ("input", "forget", "candidate", "output")


def lstm_step(params: Params, carry: LSTMCarry, x_t: Array, *, compute_dtype=None):
    """LSTM step, the four gates computed by one fused matmul per operand.

    Equations (``σ`` = logistic sigmoid, ``⊙`` = elementwise product)::

        z   = x_t @ w_x + h_{t-1} @ w_h + b          # (..., 4H), blocks [i|f|g|o]
        i_t = σ(z[0:H])        input gate
        f_t = σ(z[H:2H])       forget gate
        g_t = tanh(z[2H:3H])   candidate
        o_t = σ(z[3H:4H])      output gate
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)
        y_t = h_t

    Params:
        w_x: (I, 4H); w_h: (H, 4H); b: (4H,), gate order :data:`LSTM_GATES`.
        :func:`init_lstm` sets the forget block of ``b`` to 1.0 (in the
        params, so it is trained and seen by every backward pass).
    Carry:
        :class:`LSTMCarry` (hidden, cell), each (H,) or (batch, H).
    """
    _check_input("lstm_step", params, x_t)
    if not isinstance(carry, LSTMCarry):
        raise TypeError(
            f"lstm_step: carry must be an LSTMCarry(hidden, cell), got {type(carry).__name__}"
        )
    hidden_size = params["w_h"].shape[0]
    _check_state("lstm_step", "hidden", carry.hidden, x_t, hidden_size)
    _check_state("lstm_step", "cell", carry.cell, x_t, hidden_size)
    dtype = carry.hidden.dtype
    z = (
        _matmul(x_t, params["w_x"], compute_dtype, dtype)
        + _matmul(carry.hidden, params["w_h"], compute_dtype, dtype)
        + params["b"]
    )
    z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
    i = jax.nn.sigmoid(z_i)
    f = jax.nn.sigmoid(z_f)
    g = jnp.tanh(z_g)
    o = jax.nn.sigmoid(z_o)
    c = f * carry.cell + i * g
    h = o * jnp.tanh(c)
    return LSTMCarry(hidden=h, cell=c), h


# ---------------------------------------------------------------------------
# GRU

#: Order of the three gate blocks along the ``3H`` axis (PyTorch's ``r|z|n``).
GRU_GATES = ("reset", "update", "new")


def gru_step(params: Params, carry: Array, x_t: Array, *, compute_dtype=None):
    """GRU step in the convention of ``torch.nn.GRU``.

    Equations::

        a   = x_t @ w_x + b_x                       # (..., 3H), blocks [r|z|n]
        u   = h_{t-1} @ w_h + b_h                   # (..., 3H)
        r_t = σ(a_r + u_r)                          reset gate
        z_t = σ(a_z + u_z)                          update gate
        n_t = tanh(a_n + r_t ⊙ u_n)                 new state; note r_t multiplies
                                                    the hidden projection *including*
                                                    its bias b_h[n] (PyTorch, cuDNN)
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
        y_t = h_t

    Because of the reset gate's position the two biases are not
    interchangeable, so both are kept.

    Params:
        w_x: (I, 3H); w_h: (H, 3H); b_x: (3H,); b_h: (3H,); gate order :data:`GRU_GATES`.
    Carry:
        h: (H,) or (batch, H)
    """
    _check_input("gru_step", params, x_t)
    hidden_size = params["w_h"].shape[0]
    _check_state("gru_step", "h", carry, x_t, hidden_size)
    dtype = carry.dtype
    a = _matmul(x_t, params["w_x"], compute_dtype, dtype) + params["b_x"]
    u = _matmul(carry, params["w_h"], compute_dtype, dtype) + params["b_h"]
    a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * carry
    return h, h


# ---------------------------------------------------------------------------
# Initialisation


def glorot_uniform(key: Array, fan_in: int, fan_out: int, dtype=jnp.float32) -> Array:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), shape (fan_in, fan_out)."""
    limit = (6.0 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, (fan_in, fan_out), dtype, -limit, limit)


def orthogonal_blocks(key: Array, hidden_size: int, num_blocks: int, dtype=jnp.float32) -> Array:
    """``num_blocks`` independent orthogonal (H, H) matrices side by side: (H, num_blocks*H).

    Each gate's recurrent block is orthogonal on its own; a single orthogonal
    (H, k*H) matrix would only have orthonormal rows, not orthogonal blocks.
    """
    keys = jax.random.split(key, num_blocks)
    init = jax.nn.initializers.orthogonal()
    return jnp.concatenate([init(k, (hidden_size, hidden_size), dtype) for k in keys], axis=1)


def _check_sizes(name: str, input_size: int, hidden_size: int) -> None:
    for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {label} must be a positive int, got {value!r}")


def init_rnn(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
    """Params for :func:`rnn_step`: w_x (I, H) Glorot-uniform, w_h (H, H) orthogonal, b (H,) zeros."""
    _check_sizes("init_rnn", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    return {
        "w_x": glorot_uniform(k_x, input_size, hidden_size, dtype),
        "w_h": orthogonal_blocks(k_h, hidden_size, 1, dtype),
        "b": jnp.zeros((hidden_size,), dtype),
    }


def init_lstm(
    key: Array, input_size: int, hidden_size: int, dtype=jnp.float32, forget_bias: float = 1.0
) -> Params:
    """Params for :func:`lstm_step`.

    w_x: (I, 4H) Glorot-uniform per gate block (fan_out = H);
    w_h: (H, 4H) four independent orthogonal (H, H) blocks;
    b:   (4H,) zeros, except the forget block = ``forget_bias`` (1.0), so the
         cell starts out remembering (Jozefowicz et al., 2015).
    """
    _check_sizes("init_lstm", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    w_x = jnp.concatenate(
        [glorot_uniform(k, input_size, hidden_size, dtype) for k in jax.random.split(k_x, 4)],
        axis=1,
    )
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size : 2 * hidden_size].set(forget_bias)
    return {"w_x": w_x, "w_h": orthogonal_blocks(k_h, hidden_size, 4, dtype), "b": b}


def init_gru(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
    """Params for :func:`gru_step`: w_x (I, 3H) Glorot-uniform per block, w_h (H, 3H)
    orthogonal per block, b_x and b_h (3H,) zeros."""
    _check_sizes("init_gru", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    w_x = jnp.concatenate(
        [glorot_uniform(k, input_size, hidden_size, dtype) for k in jax.random.split(k_x, 3)],
        axis=1,
    )
    return {
        "w_x": w_x,
        "w_h": orthogonal_blocks(k_h, hidden_size, 3, dtype),
        "b_x": jnp.zeros((3 * hidden_size,), dtype),
        "b_h": jnp.zeros((3 * hidden_size,), dtype),
    }


# ---------------------------------------------------------------------------
# Zero carries


def zeros_carry(hidden_size: int, batch_shape: tuple = (), dtype=jnp.float32) -> Array:
    """Zero state for :func:`rnn_step` and :func:`gru_step`: (*batch_shape, H)."""
    return jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)


def lstm_zeros_carry(hidden_size: int, batch_shape: tuple = (), dtype=jnp.float32) -> LSTMCarry:
    """Zero :class:`LSTMCarry`, each field (*batch_shape, H)."""
    z = jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
    return LSTMCarry(hidden=z, cell=z)


# ---------------------------------------------------------------------------
# The cell protocol


class Cell(NamedTuple):
    """Everything a layer needs to know about a cell type.

    step:       ``(params, carry, x_t) -> (carry, y_t)``
    init:       ``(key, input_size, hidden_size, dtype) -> params``
    zeros_carry: ``(hidden_size, batch_shape, dtype) -> carry``
    """

    name: str
    step: Callable
    init: Callable
    zeros_carry: Callable

    def hidden_size(self, params: Params) -> int:
        return params["w_h"].shape[0]


RNN = Cell("rnn", rnn_step, init_rnn, zeros_carry)
LSTM = Cell("lstm", lstm_step, init_lstm, lstm_zeros_carry)
GRU = Cell("gru", gru_step, init_gru, zeros_carry)

CELLS = {c.name: c for c in (RNN, LSTM, GRU)}


def get_cell(name: str | Cell) -> Cell:
    """Look up a cell by name (``"rnn"``, ``"lstm"``, ``"gru"``)."""
    if isinstance(name, Cell):
        return name
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}") from None
