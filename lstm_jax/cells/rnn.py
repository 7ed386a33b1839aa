"""The Elman RNN cell.

Equations (``@`` = matrix product on the last axis)::

    h_t = tanh(x_t @ w_x + b + h_{t-1} @ w_h)
    y_t = h_t

Jacobian diagonal (quasi-DEER): ``∂h_t[j]/∂h_{t-1}[j] = (1 - h_t[j]²) w_h[j, j]``.

Params: ``w_x (I, H)`` Glorot-uniform, ``w_h (H, H)`` orthogonal, ``b (H,)`` zeros.
Carry: ``h (..., H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .base import Cell, check_sizes, glorot_uniform, matmul, orthogonal_blocks, recurrent_diagonal, zeros_carry

Array = jax.Array


def rnn_recurrence(params, h_prev: Array, xw_t: Array, compute_dtype=None):
    """``h_t = tanh(xw_t + h_{t-1} @ w_h)`` with ``xw_t = x_t @ w_x + b``; keeps ``h_prev`` and ``h``."""
    h = jnp.tanh(xw_t + matmul(h_prev, params["w_h"], compute_dtype, h_prev.dtype))
    return h, h, {"h_prev": h_prev, "h": h}


def rnn_backward_step(params, res, dh_next: Array, dy: Array, compute_dtype=None):
    """Elman backward step; ``dh = dL/dh_t`` in total (from ``y_t`` and from step t+1)::

        dh        = dh_next + dy
        dz_t      = dh ⊙ (1 - h_t²)           # through tanh
        dh_{t-1}  = dz_t @ w_hᵀ

    (``dW_x = Σ x_tᵀ dz_t``, ``dW_h = Σ h_{t-1}ᵀ dz_t``, ``db = Σ dz_t``, ``dx_t = dz_t w_xᵀ``:
    after the scan, in :mod:`lstm_jax.bptt`). Returns ``(dz_t, None, dh_{t-1})``.
    """
    dz = (dh_next + dy) * (1.0 - res["h"] ** 2)
    return dz, None, matmul(dz, params["w_h"], compute_dtype, dz.dtype, transpose_w=True)


def rnn_jacobian_diagonal(params, h_prev: Array, xw_t: Array, compute_dtype=None) -> Array:
    """``∂h_t[j] / ∂h_{t-1}[j] = (1 - h_t[j]²) w_h[j, j]``, ``(..., H)``: one step's work (tanh' from ``h_t``)."""
    h = rnn_recurrence(params, h_prev, xw_t, compute_dtype)[0]
    return (1.0 - h**2) * recurrent_diagonal(params["w_h"], compute_dtype, h.dtype)


def init_rnn(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> dict:
    """Params for :func:`rnn_step`: w_x (I, H) Glorot-uniform, w_h (H, H) orthogonal, b (H,) zeros."""
    input_size, hidden_size = check_sizes("init_rnn", input_size, hidden_size)
    k_x, k_h = jax.random.split(key)
    return {
        "w_x": glorot_uniform(k_x, input_size, hidden_size, dtype),
        "w_h": orthogonal_blocks(k_h, hidden_size, 1, dtype),
        "b": jnp.zeros((hidden_size,), dtype),
    }


RNN = Cell(
    name="rnn", init=init_rnn, zeros_carry=zeros_carry, recurrence=rnn_recurrence, num_gates=1,
    backward_step=rnn_backward_step, jacobian_diagonal=rnn_jacobian_diagonal,
)


def rnn_step(params: dict, carry: Array, x_t: Array, *, compute_dtype=None) -> tuple[Array, Array]:
    """Elman RNN step ``(params, h_{t-1}, x_t) -> (h_t, y_t)``.

    Equations::

        h_t = tanh(x_t @ w_x + b + h_{t-1} @ w_h)
        y_t = h_t

    Params:
        w_x: (I, H); w_h: (H, H); b: (H,)
    Carry:
        h: (H,) or (batch, H)

    Example (I = 1, H = 2, a batch of one)::

        >>> import jax.numpy as jnp
        >>> from lstm_jax import rnn_step
        >>> params = {"w_x": jnp.array([[1.0, -1.0]]), "w_h": jnp.eye(2), "b": jnp.zeros(2)}
        >>> h, y = rnn_step(params, jnp.array([[0.5, 0.0]]), jnp.array([[0.5]]))   # tanh([0.5+0.5, -0.5+0])
        >>> [round(v, 4) for v in h[0].tolist()]
        [0.7616, -0.4621]
    """
    return RNN.step(params, carry, x_t, compute_dtype=compute_dtype)
