"""``"parallel"``: all time steps at once, for cells whose recurrence is linear in the state.

A cell with a :attr:`~lstm_jax.cells.Cell.linear_recurrence` (minGRU, minLSTM)
has ``h_t = a_t ⊙ h_{t-1} + b_t`` with ``a_t``, ``b_t`` functions of the
input only (steps ``t = 1..T``). Unrolled from the initial carry ``h_0``::

    h_t = A_t ⊙ h_0 + B_t,    A_t = Π_{s<=t} a_s,    B_t = Σ_{s<=t} (Π_{s<r<=t} a_r) b_s

and the pairs ``(A, B)`` compose associatively::

    (A1, B1) then (A2, B2)  =  (A1 A2,  A2 B1 + B2)

so ``jax.lax.associative_scan`` evaluates every ``(A_t, B_t)`` in ``O(log T)``
depth. Option ``space``:

* ``"log"`` (default, as in the paper): the scan runs on ``(log A, log B)``
  with ``(lA1 + lA2, logaddexp(lA2 + lB1, lB2))``. This is the paper's
  cumulative log-sum-exp, but as pairs: ``log h_t = a*_t + logcumsumexp(log b - a*)``
  with ``a* = cumsum(log a)`` subtracts two numbers that grow with ``T`` and
  loses float32 digits on long sequences; the pair form never leaves the
  range of ``log B_t`` (bounded by ``log max h̃``).
* ``"linear"``: the same scan on ``(A, B) = (exp log a, exp log b)``; every
  term is non-negative, so there is no cancellation either, and it is cheaper.

The initial carry ``h_0`` never enters a logarithm: ``h_t = exp(log A_t) ⊙ h_0 + exp(log B_t)``
is formed at the end, in linear space, so ``h_0`` may be zero or negative
(the paper's log-space scan needs ``h_0 > 0``) and the gradient w.r.t. ``h_0``
is ``Σ_t A_t ⊙ dL/dh_t``.

Backward (a ``jax.custom_vjp``, rather than autodiff through the scan's
``O(log T)`` levels, which compiles about twice as slowly and keeps every
level): the total state gradient is itself a linear recurrence, run
backwards in time as one more associative scan (linear space: it has either sign)::

    λ_t = dL/dh_t (direct) + a_{t+1} ⊙ λ_{t+1}           (λ_T: direct only)
    dL/dlog a_t = λ_t ⊙ a_t ⊙ h_{t-1},   dL/dlog b_t = λ_t ⊙ b_t,   dL/dh_0 = a_1 ⊙ λ_1

Every factor is bounded (``0 < a_t <= 1``), so this is as exact as the forward.
Forward-mode (``jax.jvp``) is therefore not defined for this impl (as for ``"manual"``).

Mask (padding, ``mask[t, b]`` False): ``a_t = 1``, ``b_t = 0`` (the identity
pair), so the carry is frozen; outputs are zero there. In log space ``log 0``
is a finite stand-in, :func:`log_zero`, so that no infinity enters the
arithmetic (``logaddexp(-inf, -inf)`` is a special case, with a NaN derivative). Padded inputs are zeros already (the shared front), so
NaN there cannot reach the coefficients. ``reverse`` (only without a mask, see
:mod:`lstm_jax.sequence`) flips time around the forward scan. ``unroll`` does
not apply (no loop).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

SPACES = ("log", "linear")


def supports(cell) -> bool:
    """Only cells that give ``linear_recurrence`` (``h_t = a_t ⊙ h_{t-1} + b_t``) run here."""
    return cell.linear_recurrence is not None


#: Why a cell is refused (part of the error message).
REQUIREMENT = "cells linear in the state (with Cell.linear_recurrence, h_t = a_t * h_{t-1} + b_t)"


def check_options(space="log") -> None:
    if space not in SPACES:
        raise ValueError(f"space must be one of {list(SPACES)}, got {space!r}")


def log_zero(dtype) -> float:
    """A finite ``log 0``: ``exp`` of it is exactly 0, and sums of it with log-coefficients stay finite."""
    return float(-jnp.finfo(dtype).max / 4)


def _combine_log(earlier, later):
    la1, lb1 = earlier
    la2, lb2 = later
    return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)


def _combine_linear(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a1 * a2, a2 * b1 + b2


def _states(log_a, log_b, h0, space: str):
    """``h_t = A_t ⊙ h_0 + B_t`` for all ``t`` (time axis 0) from the coefficient logs."""
    if space == "log":
        log_A, log_B = jax.lax.associative_scan(_combine_log, (log_a, log_b))
        A, B = jnp.exp(log_A), jnp.exp(log_B)
    else:
        A, B = jax.lax.associative_scan(_combine_linear, (jnp.exp(log_a), jnp.exp(log_b)))
    return A * h0 + B  # h_0 enters linearly: any sign, never through a log


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def linear_scan(log_a, log_b, h0, space: str = "log"):
    """All states of ``h_t = a_t ⊙ h_{t-1} + b_t``: ``log_a, log_b (T, ...)``, ``h0 (...)`` -> ``(T, ...)``."""
    return _states(log_a, log_b, h0, space)


def _linear_scan_fwd(log_a, log_b, h0, space):
    hs = _states(log_a, log_b, h0, space)
    return hs, (log_a, log_b, h0, hs)


def _linear_scan_bwd(space, saved, dhs):
    log_a, log_b, h0, hs = saved
    a, b = jnp.exp(log_a), jnp.exp(log_b)
    next_a = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])  # a_{t+1}; nothing after the last step
    _, lam = jax.lax.associative_scan(_combine_linear, (next_a, dhs), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    return lam * a * h_prev, lam * b, a[0] * lam[0]


linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def parallel_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype, space="log"):
    """``(ys_tm (T, B, H), final (B, H))`` from one associative scan over ``(T, B, H)`` coefficient pairs."""
    del unroll  # nothing to unroll
    dtype = carry.dtype
    xw = cell.input_projection(params, xs_tm, compute_dtype, dtype)  # (T, B, G*H)
    log_a, log_b = cell.linear_recurrence(params, xw, compute_dtype)
    valid = None if mask is None else mask[..., None]  # (T, B, 1)
    if valid is not None:  # the identity pair (a, b) = (1, 0) freezes the carry
        log_a = jnp.where(valid, log_a, jnp.zeros_like(log_a))
        log_b = jnp.where(valid, log_b, jnp.full_like(log_b, log_zero(dtype)))
    if reverse:  # only without a mask: the last step is processed first
        hs = linear_scan(log_a[::-1], log_b[::-1], carry, space)[::-1]
    else:
        hs = linear_scan(log_a, log_b, carry, space)
    final = hs[0] if reverse else hs[-1]
    ys = hs if valid is None else jnp.where(valid, hs, jnp.zeros_like(hs))
    return ys.astype(dtype), final.astype(dtype)
