"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201), log-space variant.

Equations (gates and candidate see the input only; no output gate, no cell state)::

    a    = x_t @ w_x + b                     # (..., 3H), blocks [f|i|h]
    f_t  = σ(a_f),  i_t = σ(a_i)             forget and input gates
    f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)     normalised: f' + i' = 1
    h̃_t  = g(a_h)                            candidate; g(x) = x + 0.5 (x >= 0), σ(x) (x < 0)
    h_t  = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t
    y_t  = h_t

The normalised gates are computed from logs, never as a ratio of two sigmoids
(both can underflow to 0): with ``u = log i_t - log f_t = softplus(-a_f) - softplus(-a_i)``,
``i' = σ(u)`` and ``f' = σ(-u)``. So minLSTM is the minimal gated mix of
:mod:`lstm_jax.cells.minimal` with write logit ``u``, and is linear in the
state: ``log a_t = -softplus(u)``, ``log b_t = -softplus(-u) + log g(a_h)``
(layer impl ``"parallel"``). As for minGRU, ``g`` is the paper's log-space
variant and the only one implemented.

Backward of ``u``: ``da_f = -du ⊙ (1 - f_t)``, ``da_i = du ⊙ (1 - i_t)``
(``d softplus(-a)/da = -σ(-a)``), with ``du`` from :func:`~lstm_jax.cells.minimal.mix_backward_step`.

Params: ``w_x (I, 3H)`` Glorot-uniform per block, ``b (3H,)`` zeros (so
``f' = i' = 1/2`` at a zero input), gate order :data:`MIN_LSTM_GATES`; no ``w_h``.
Carry: ``h (..., H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .minimal import min_cell

Array = jax.Array

#: Order of the three blocks along the ``3H`` axis.
MIN_LSTM_GATES = ("forget", "input", "candidate")


def min_lstm_logits(xw: Array):
    """``xw (..., 3H) -> (u = log i - log f, a_h, {"not_f": 1 - f, "not_i": 1 - i})``."""
    a_f, a_i, a_h = jnp.split(xw, 3, axis=-1)
    u = jax.nn.softplus(-a_f) - jax.nn.softplus(-a_i)  # -log f + log i
    return u, a_h, {"not_f": jax.nn.sigmoid(-a_f), "not_i": jax.nn.sigmoid(-a_i)}


def min_lstm_logits_backward(du: Array, da_h: Array, res) -> Array:
    """``dL/dxw = [-du ⊙ (1 - f) | du ⊙ (1 - i) | da_h]``."""
    return jnp.concatenate([-du * res["not_f"], du * res["not_i"], da_h], axis=-1)


MIN_LSTM = min_cell("min_lstm", 3, min_lstm_logits, min_lstm_logits_backward)
init_min_lstm = MIN_LSTM.init


def min_lstm_step(params: dict, carry: Array, x_t: Array, *, compute_dtype=None) -> tuple[Array, Array]:
    """minLSTM step ``(params, h_{t-1}, x_t) -> (h_t, y_t)``.

    Equations::

        a    = x_t @ w_x + b                  # (..., 3H), blocks [f|i|h]
        f_t  = σ(a_f),  i_t = σ(a_i),  h̃_t = g(a_h)
        f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
        h_t  = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t
        y_t  = h_t

    Params:
        w_x: (I, 3H); b: (3H,)
    Carry:
        h: (H,) or (batch, H)

    Example (all-zero params: ``f' = i' = 0.5``, ``h̃ = g(0) = 0.5``, so ``h_t = 0.5 h + 0.25``)::

        >>> import jax.numpy as jnp
        >>> from lstm_jax import min_lstm_step
        >>> params = {"w_x": jnp.zeros((3, 6)), "b": jnp.zeros(6)}                  # I = 3, H = 2
        >>> h, y = min_lstm_step(params, jnp.array([1.0, -1.0]), jnp.ones(3))
        >>> h.tolist()
        [0.75, -0.25]
    """
    return MIN_LSTM.step(params, carry, x_t, compute_dtype=compute_dtype)
