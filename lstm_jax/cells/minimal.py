"""What minGRU and minLSTM share (Feng et al. 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

Both cells drop the state from their gates, so the state enters only through
one elementwise convex mix::

    w_t = σ(u_t),  k_t = 1 - w_t = σ(-u_t)         write and keep coefficients
    h̃_t = g(a_h)                                   candidate, from the input only
    h_t = k_t ⊙ h_{t-1} + w_t ⊙ h̃_t

where the *write logit* ``u_t`` and ``a_h`` are blocks of ``xw_t = x_t @ w_x + b``
(minGRU: ``u = a_z``; minLSTM: ``u = log i_t - log f_t``, see the cell modules),
and ``g`` is the paper's log-space candidate activation::

    g(x) = x + 0.5 (x >= 0),   σ(x) (x < 0)         continuous, > 0, g(0) = 0.5

The recurrence is linear in the state: ``h_t = a_t ⊙ h_{t-1} + b_t`` with, in
log space (no exponent of a large number is ever taken)::

    log a_t = log σ(-u) = -softplus(u)
    log b_t = log σ(u) + log g(a_h) = -softplus(-u) + log g(a_h)

which is what the layer impl ``"parallel"`` scans over. Its Jacobian is the
diagonal ``∂h_t/∂h_{t-1} = k_t`` (the cell's ``jacobian_diagonal``), so
quasi-DEER is exact Newton on these cells and ends in one iteration. Using ``g`` rather
than the identity for ``h̃`` is the paper's log-space variant and the default
(and only) variant here: it keeps ``b_t > 0``, so ``log b_t`` exists, and the
sequential step computes exactly the same function in linear space.

Backward of one step, with ``dh = dh_next + dy``::

    dh_{t-1} = dh ⊙ k
    du       = dh ⊙ (h̃ - h_{t-1}) ⊙ w ⊙ k          (dσ(u)/du = w k)
    da_h     = dh ⊙ w ⊙ g'(a_h),   g'(x) = 1 (x >= 0), σ(x)(1 - σ(x)) (x < 0)

and each cell maps ``(du, da_h)`` back to ``dL/dxw``. Init: ``w_x`` Glorot-uniform
per ``H``-wide block, ``b`` zeros; there is no ``w_h``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .base import Cell, check_sizes, glorot_blocks, zeros_carry

Array = jax.Array


def g(x: Array) -> Array:
    """``x + 0.5`` for ``x >= 0``, ``σ(x)`` below: positive, continuous, linear growth."""
    return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def log_g(x: Array) -> Array:
    """``log g(x)``; the inner ``where`` keeps the unused ``log`` branch finite (no NaN gradient)."""
    return jnp.where(x >= 0, jnp.log(jnp.where(x >= 0, x, 0.0) + 0.5), -jax.nn.softplus(-x))


def g_prime(x: Array) -> Array:
    """``g'(x)``: 1 for ``x >= 0`` (the branch autodiff takes at 0), ``σ(x)(1 - σ(x))`` below."""
    s = jax.nn.sigmoid(x)
    return jnp.where(x >= 0, 1.0, s * (1.0 - s))


def mix_recurrence(logits: Callable, params, h_prev: Array, xw_t: Array, compute_dtype=None):
    """``h_t = σ(-u) ⊙ h_{t-1} + σ(u) ⊙ g(a_h)`` with ``(u, a_h, extra) = logits(xw_t)``.

    Keeps ``h_prev``, ``keep`` = σ(-u), ``write`` = σ(u), ``htilde`` = g(a_h),
    ``dg`` = g'(a_h) and the cell's ``extra`` residuals (both coefficients are
    stored: ``1 - write`` would lose the precision of a keep near 0).
    """
    u, a_h, extra = logits(xw_t)
    keep, write = jax.nn.sigmoid(-u), jax.nn.sigmoid(u)
    htilde = g(a_h)
    h = keep * h_prev + write * htilde
    return h, h, {"h_prev": h_prev, "keep": keep, "write": write, "htilde": htilde, "dg": g_prime(a_h), **extra}


def mix_backward_step(logits_backward: Callable, params, res, dh_next: Array, dy: Array, compute_dtype=None):
    """The module docstring's backward; ``logits_backward(du, da_h, res)`` gives ``dL/dxw``.

    Returns ``(dL/dxw_t, None, dh_{t-1})``: no recurrent matmul, so no ``dz_rec``.
    """
    dh = dh_next + dy
    keep, write = res["keep"], res["write"]
    du = dh * (res["htilde"] - res["h_prev"]) * write * keep
    da_h = dh * write * res["dg"]
    return logits_backward(du, da_h, res), None, dh * keep


def mix_log_coefficients(logits: Callable, params, xw: Array, compute_dtype=None):
    """``(log a, log b)`` of ``h_t = a_t ⊙ h_{t-1} + b_t``: ``(-softplus(u), -softplus(-u) + log g(a_h))``."""
    u, a_h, _ = logits(xw)
    return -jax.nn.softplus(u), -jax.nn.softplus(-u) + log_g(a_h)


def min_cell(name: str, num_gates: int, logits: Callable, logits_backward: Callable) -> Cell:
    """The :class:`Cell` of a minimal gated cell from its write-logit map and that map's backward.

    ``logits(xw) -> (u, a_h, extra_residuals)`` with ``xw (..., num_gates*H)``;
    ``logits_backward(du, da_h, res) -> dL/dxw``. Params ``w_x (I, num_gates*H)``, ``b (num_gates*H,)``.
    """

    def init(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> dict:
        input_size, hidden_size = check_sizes(f"init_{name}", input_size, hidden_size)
        return {
            "w_x": glorot_blocks(key, input_size, hidden_size, num_gates, dtype),
            "b": jnp.zeros((num_gates * hidden_size,), dtype),
        }

    def recurrence(params, h_prev, xw_t, compute_dtype=None):
        return mix_recurrence(logits, params, h_prev, xw_t, compute_dtype)

    def backward_step(params, res, dh_next, dy, compute_dtype=None):
        return mix_backward_step(logits_backward, params, res, dh_next, dy, compute_dtype)

    def linear_recurrence(params, xw, compute_dtype=None):
        return mix_log_coefficients(logits, params, xw, compute_dtype)

    def jacobian_diagonal(params, h_prev, xw_t, compute_dtype=None):  # ∂h_t/∂h_{t-1} = keep, (..., H)
        return mix_recurrence(logits, params, h_prev, xw_t, compute_dtype)[2]["keep"]

    init.__name__ = init.__qualname__ = f"init_{name}"
    init.__doc__ = (
        f"Params for {name}: w_x (I, {num_gates}H) Glorot-uniform per H-wide block, "
        f"b ({num_gates}H,) zeros; no w_h."
    )
    return Cell(
        name=name, init=init, zeros_carry=zeros_carry, recurrence=recurrence, num_gates=num_gates,
        param_keys=("w_x", "b"), backward_step=backward_step, recurrent_weight=None,
        linear_recurrence=linear_recurrence, jacobian_diagonal=jacobian_diagonal,
    )
