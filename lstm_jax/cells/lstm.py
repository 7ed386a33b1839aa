"""The LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

Equations (``σ`` = logistic sigmoid, ``⊙`` = elementwise product)::

    z   = x_t @ w_x + b + h_{t-1} @ w_h          # (..., 4H), blocks [i|f|g|o]
    i_t = σ(z[0:H])        input gate
    f_t = σ(z[H:2H])       forget gate
    g_t = tanh(z[2H:3H])   candidate
    o_t = σ(z[3H:4H])      output gate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)
    y_t = h_t

Jacobian diagonal (quasi-DEER), per unit ``j``; ``∂a = ∂a_t[j]/∂h_{t-1}[j]`` for a gate ``a``,
``∂i = i(1-i) w_h[j, j]``, ``∂f = f(1-f) w_h[j, H+j]``, ``∂g = (1-g²) w_h[j, 2H+j]``,
``∂o = o(1-o) w_h[j, 3H+j]``::

    ∂c_t[j]/∂h_{t-1}[j] = ∂f ⊙ c_{t-1} + ∂i ⊙ g + i ⊙ ∂g        (inside the next line only)
    ∂h_t[j]/∂h_{t-1}[j] = ∂o ⊙ tanh(c_t) + o ⊙ (1 - tanh²(c_t)) ⊙ ∂c_t[j]/∂h_{t-1}[j]
    ∂c_t[j]/∂c_{t-1}[j] = f_t

(the blocks ``∂h_t/∂c_{t-1}`` and ``∂c_t/∂h_{t-1}`` of the ``2H x 2H`` Jacobian
are off its diagonal: quasi-DEER drops them).

Params: ``w_x (I, 4H)``, ``w_h (H, 4H)``, ``b (4H,)``, gate order :data:`LSTM_GATES`
(PyTorch's ``W_ii|W_if|W_ig|W_io``, Flax's ``OptimizedLSTMCell``).
Carry: :class:`LSTMCarry` ``(hidden, cell)``, each ``(..., H)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .base import Cell, check_sizes, chrono_timescales, glorot_blocks, matmul, orthogonal_blocks, recurrent_diagonal

Array = jax.Array

#: Order of the four gate blocks along the ``4H`` axis of ``w_x``, ``w_h``, ``b``.
LSTM_GATES = ("input", "forget", "candidate", "output")


class LSTMCarry(NamedTuple):
    """LSTM state. Named fields, so no code depends on the (h, c) vs (c, h) order.

    hidden: ``h_t``, shape ``(..., H)``; also the cell's output ``y_t``.
    cell:   ``c_t``, shape ``(..., H)``; the additive memory.
    """

    hidden: Array
    cell: Array


def gate_activations(z: Array) -> Array:
    """``[σ(z_i) | σ(z_f) | tanh(z_g) | σ(z_o)]`` as one ``tanh`` over the whole ``(..., 4H)`` block.

    Uses ``σ(x) = (1 + tanh(x/2)) / 2``: with ``s = [½|½|1|½]`` per block,
    ``gates = s ⊙ tanh(s ⊙ z) + (1 - s)``. Same values to float rounding, but
    XLA:CPU evaluates one transcendental over a contiguous array several times
    faster than four over column slices (a scan of just the LSTM gate maths at
    B=64, H=256: 31 µs vs 157 µs per step; 2-4% of a whole training step).
    """
    hidden = z.shape[-1] // 4
    half = jnp.asarray(0.5, z.dtype)
    one = jnp.asarray(1.0, z.dtype)
    scale = jnp.concatenate([jnp.full((2 * hidden,), half), jnp.full((hidden,), one), jnp.full((hidden,), half)])
    return jnp.tanh(z * scale) * scale + (one - scale)


def gate_derivatives(gates: Array) -> Array:
    """``[i(1-i) | f(1-f) | 1-g² | o(1-o)]``: each activation's derivative, from its output.

    ``σ' = σ(1-σ)`` and ``tanh' = 1 - tanh²`` are both ``a ⊙ (p - a) + q`` with
    ``(p, q) = (1, 0)`` on the sigmoid blocks and ``(0, 1)`` on the tanh block,
    so all four are one elementwise pass over the contiguous ``(..., 4H)`` block.
    """
    hidden = gates.shape[-1] // 4
    zero = jnp.zeros((hidden,), gates.dtype)
    one = jnp.ones((hidden,), gates.dtype)
    p = jnp.concatenate([one, one, zero, one])
    q = jnp.concatenate([zero, zero, one, zero])
    return gates * (p - gates) + q


def lstm_recurrence(params, carry: LSTMCarry, xw_t: Array, compute_dtype=None):
    """The module's equations from ``xw_t = x_t @ w_x + b``.

    Keeps ``h_prev``, ``c_prev``, the activated ``gates = [i|f|g|o]`` and
    ``tanh_c = tanh(c_t)``. Storing ``tanh(c_t)`` costs one more ``(T, B, H)``
    array but halves the backward scan's elementwise time: recomputing it there
    (one tanh per step) took as long as all the other backward maths together
    (XLA:CPU, B=64, H=256: 158 vs 83 µs per step).
    """
    h_prev, c_prev = carry.hidden, carry.cell
    z = xw_t + matmul(h_prev, params["w_h"], compute_dtype, h_prev.dtype)
    gates = gate_activations(z)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = f * c_prev + i * g
    tanh_c = jnp.tanh(c)
    h = o * tanh_c
    res = {"h_prev": h_prev, "c_prev": c_prev, "gates": gates, "tanh_c": tanh_c}
    return LSTMCarry(hidden=h, cell=c), h, res


def lstm_backward_step(params, res, dcarry: LSTMCarry, dy: Array, compute_dtype=None):
    """LSTM backward step, given ``dcarry = dL/d(h_t, c_t)`` from step t+1 and ``dy = dL/dy_t``::

        dh      = dcarry.hidden + dy                  # total gradient on h_t
        do      = dh ⊙ tanh(c_t)                      # tanh(c_t) saved by the forward
        dc_t'   = dcarry.cell + dh ⊙ o ⊙ (1 - tanh²(c_t))    # total gradient on c_t
        di      = dc_t' ⊙ g,   df = dc_t' ⊙ c_{t-1},   dg = dc_t' ⊙ i
        dc_{t-1} = dc_t' ⊙ f
        dz_i = di ⊙ i(1-i),  dz_f = df ⊙ f(1-f),  dz_g = dg ⊙ (1-g²),  dz_o = do ⊙ o(1-o)
        dh_{t-1} = dz_t @ w_hᵀ                        # dz_t = [dz_i|dz_f|dz_g|dz_o]

    The four ``dz`` blocks are computed as ``[di|df|dg|do] ⊙ gate derivatives``
    over the whole ``(B, 4H)`` block (:func:`gate_derivatives`).

    Returns ``(dz_t, None, LSTMCarry(dh_{t-1}, dc_{t-1}))``.
    """
    i, f, g, o = jnp.split(res["gates"], 4, axis=-1)
    tanh_c = res["tanh_c"]
    dh = dcarry.hidden + dy
    do = dh * tanh_c
    dct = dcarry.cell + dh * o * (1.0 - tanh_c**2)
    di = dct * g
    df = dct * res["c_prev"]
    dg = dct * i
    dc_prev = dct * f
    dz = jnp.concatenate([di, df, dg, do], axis=-1) * gate_derivatives(res["gates"])
    dh_prev = matmul(dz, params["w_h"], compute_dtype, dh.dtype, transpose_w=True)
    return dz, None, LSTMCarry(hidden=dh_prev, cell=dc_prev)


def lstm_jacobian_diagonal(params, carry: LSTMCarry, xw_t: Array, compute_dtype=None) -> LSTMCarry:
    """``LSTMCarry(∂h_t/∂h_{t-1}, ∂c_t/∂c_{t-1})`` elementwise, ``(..., H)`` each, from one step's gates
    (equations in the module docstring): ``[∂i|∂f|∂g|∂o]`` is one pass over the ``4H`` block."""
    _, _, res = lstm_recurrence(params, carry, xw_t, compute_dtype)
    gates, tanh_c = res["gates"], res["tanh_c"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    dz = gate_derivatives(gates) * recurrent_diagonal(params["w_h"], compute_dtype, gates.dtype)
    di, df, dg, do = jnp.split(dz, 4, axis=-1)
    dc = df * carry.cell + di * g + i * dg
    return LSTMCarry(hidden=do * tanh_c + o * (1.0 - tanh_c**2) * dc, cell=f)


def init_lstm(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32, forget_bias: float = 1.0) -> dict:
    """Params for :func:`lstm_step`.

    w_x: (I, 4H) Glorot-uniform per gate block (fan_out = H);
    w_h: (H, 4H) four independent orthogonal (H, H) blocks;
    b:   (4H,) zeros, except the forget block = ``forget_bias`` (1.0), so the
         cell starts out remembering (Jozefowicz et al., 2015).
    """
    input_size, hidden_size = check_sizes("init_lstm", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    b = jnp.zeros((4 * hidden_size,), dtype).at[hidden_size : 2 * hidden_size].set(forget_bias)
    return {
        "w_x": glorot_blocks(k_x, input_size, hidden_size, 4, dtype),
        "w_h": orthogonal_blocks(k_h, hidden_size, 4, dtype),
        "b": b,
    }


def chrono_lstm(key: Array, params: dict, max_timescale: float) -> dict:
    """``params`` with the chrono gate biases (Tallec & Ollivier 2018); weights unchanged.

    ``b[forget] = log u``, ``u ~ U(1, max_timescale - 1)`` per unit, and
    ``b[input] = -b[forget]``: unit ``j`` starts with a memory of about
    ``1 + u_j`` steps and writes in proportion to what it forgets, so the
    cell's memory ranges cover ``[2, max_timescale]`` from the first step
    (the default ``forget_bias = 1`` gives every unit ``1 + e ≈ 3.7`` steps).
    """
    hidden = params["w_h"].shape[0]
    log_u = chrono_timescales(key, hidden, max_timescale, params["b"].dtype)
    b = params["b"].at[hidden : 2 * hidden].set(log_u).at[0:hidden].set(-log_u)
    return {**params, "b": b}


def lstm_zeros_carry(hidden_size: int, batch_shape: tuple = (), dtype=jnp.float32) -> LSTMCarry:
    """Zero :class:`LSTMCarry`, each field (*batch_shape, H)."""
    z = jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype)
    return LSTMCarry(hidden=z, cell=z)


def _hidden(carry: LSTMCarry) -> Array:
    return carry.hidden


LSTM = Cell(
    name="lstm", init=init_lstm, zeros_carry=lstm_zeros_carry, recurrence=lstm_recurrence, num_gates=4,
    backward_step=lstm_backward_step, hidden=_hidden, jacobian_diagonal=lstm_jacobian_diagonal,
    chrono_init=chrono_lstm,
)


def lstm_step(params: dict, carry: LSTMCarry, x_t: Array, *, compute_dtype=None) -> tuple[LSTMCarry, Array]:
    """LSTM step ``(params, LSTMCarry(h, c), x_t) -> (LSTMCarry, y_t)``, the four gates from one fused matmul per operand.

    Equations (``σ`` = logistic sigmoid, ``⊙`` = elementwise product)::

        z   = x_t @ w_x + b + h_{t-1} @ w_h          # (..., 4H), blocks [i|f|g|o]
        i_t = σ(z[0:H]),  f_t = σ(z[H:2H]),  g_t = tanh(z[2H:3H]),  o_t = σ(z[3H:4H])
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)
        y_t = h_t

    Params:
        w_x: (I, 4H); w_h: (H, 4H); b: (4H,), gate order :data:`LSTM_GATES`.
        :func:`init_lstm` sets the forget block of ``b`` to 1.0 (in the
        params, so it is trained and seen by every backward pass).
    Carry:
        :class:`LSTMCarry` (hidden, cell), each (H,) or (batch, H).

    Example (I = H = 1: every gate's pre-activation is ``x = 1``)::

        >>> import jax.numpy as jnp
        >>> from lstm_jax import LSTMCarry, lstm_step
        >>> params = {"w_x": jnp.ones((1, 4)), "w_h": jnp.zeros((1, 4)), "b": jnp.zeros(4)}
        >>> carry = LSTMCarry(hidden=jnp.zeros(1), cell=jnp.ones(1))
        >>> carry, y = lstm_step(params, carry, jnp.ones(1))
        >>> round(float(carry.cell[0]), 4)        # σ(1)·1 + σ(1)·tanh(1)
        1.2878
        >>> round(float(y[0]), 4)                 # σ(1)·tanh(1.2878)
        0.6277
    """
    return LSTM.step(params, carry, x_t, compute_dtype=compute_dtype)
