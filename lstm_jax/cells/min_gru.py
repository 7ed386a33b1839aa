"""minGRU (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201), log-space variant.

Equations (the update gate and the candidate see the input only)::

    a   = x_t @ w_x + b                      # (..., 2H), blocks [z|h]
    z_t = σ(a_z)                             update gate
    h̃_t = g(a_h)                             candidate; g(x) = x + 0.5 (x >= 0), σ(x) (x < 0)
    h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
    y_t = h_t

Linear in the state, ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``log a_t = -softplus(a_z)``
and ``log b_t = -softplus(-a_z) + log g(a_h)``: the layer impl ``"parallel"``
runs it as an associative scan over time. The paper's default minGRU uses
``h̃_t = a_h`` in linear space; ``g`` is its log-space version, the one this
library implements (``h̃ > 0`` so that ``log b_t`` exists; the sequential step
computes the same function). Shared equations and the backward:
:mod:`lstm_jax.cells.minimal` (write logit ``u = a_z``).

Params: ``w_x (I, 2H)`` Glorot-uniform per block, ``b (2H,)`` zeros, gate order
:data:`MIN_GRU_GATES`; no ``w_h``. Carry: ``h (..., H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .minimal import min_cell

Array = jax.Array

#: Order of the two blocks along the ``2H`` axis.
MIN_GRU_GATES = ("update", "candidate")


def min_gru_logits(xw: Array):
    """``xw (..., 2H) -> (u = a_z, a_h, {})``: the write logit is the update gate's pre-activation."""
    a_z, a_h = jnp.split(xw, 2, axis=-1)
    return a_z, a_h, {}


def min_gru_logits_backward(du: Array, da_h: Array, res) -> Array:
    """``dL/dxw = [du | da_h]`` (``u`` is ``a_z`` itself)."""
    return jnp.concatenate([du, da_h], axis=-1)


MIN_GRU = min_cell("min_gru", 2, min_gru_logits, min_gru_logits_backward)
init_min_gru = MIN_GRU.init


def min_gru_step(params: dict, carry: Array, x_t: Array, *, compute_dtype=None) -> tuple[Array, Array]:
    """minGRU step ``(params, h_{t-1}, x_t) -> (h_t, y_t)``.

    Equations::

        a   = x_t @ w_x + b                   # (..., 2H), blocks [z|h]
        z_t = σ(a_z),   h̃_t = g(a_h)          # g(x) = x + 0.5 (x >= 0), σ(x) (x < 0)
        h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t
        y_t = h_t

    Params:
        w_x: (I, 2H); b: (2H,)
    Carry:
        h: (H,) or (batch, H)

    Example (all-zero params: ``z = 0.5``, ``h̃ = g(0) = 0.5``, so ``h_t = 0.5 h + 0.25``)::

        >>> import jax.numpy as jnp
        >>> from lstm_jax import min_gru_step
        >>> params = {"w_x": jnp.zeros((3, 4)), "b": jnp.zeros(4)}                  # I = 3, H = 2
        >>> h, y = min_gru_step(params, jnp.array([1.0, -1.0]), jnp.ones(3))
        >>> h.tolist()
        [0.75, -0.25]
    """
    return MIN_GRU.step(params, carry, x_t, compute_dtype=compute_dtype)
