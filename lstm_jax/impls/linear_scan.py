"""Linear recurrences ``x_t = a_t x_{t-1} + b_t`` solved as a parallel prefix over time (for ``"deer"``).

The affine maps ``x -> a x + b`` compose associatively,
``(a2, b2) ∘ (a1, b1) = (a2 a1, a2 b1 + b2)``, so all ``T`` prefixes come from a
parallel scan of depth ``O(log T)``; ``a`` is a ``(D, D)`` matrix per step
(DEER) or its diagonal, a ``(D,)`` vector (quasi-DEER: elementwise products).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

SCANS = ("auto", "associative", "doubling")
#: ``scan="auto"`` uses the doubling prefix up to this ``T`` (its extra ``log T`` work is small there).
DOUBLING_MAX_T = 64


def _combine_full(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return jnp.matmul(a2, a1), jnp.einsum("...ij,...j->...i", a2, b1) + b2


def _combine_diagonal(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _doubling(combine, a: Array, b: Array, identity: Array) -> Array:
    """Hillis-Steele prefix: ``ceil(log2 T)`` levels in a ``fori_loop``, each ``x_t <- x_{t-2^k} ∘ x_t``.

    ``O(T log T)`` work (vs ``O(T)`` for ``associative_scan``) but one combine to compile,
    whatever ``T``: ``associative_scan`` unrolls ``2 log2 T`` levels of slicing, which
    XLA:CPU took seconds to compile even at ``T = 13``.
    """
    seq_len = b.shape[0]
    pad_a, pad_b = jnp.broadcast_to(identity, a.shape), jnp.zeros_like(b)

    def level(k, ab):
        a, b = ab
        start = seq_len - jnp.left_shift(1, k)  # element t - 2^k, identity before the start
        earlier = (
            jax.lax.dynamic_slice_in_dim(jnp.concatenate([pad_a, a]), start, seq_len),
            jax.lax.dynamic_slice_in_dim(jnp.concatenate([pad_b, b]), start, seq_len),
        )
        return combine(earlier, (a, b))

    return jax.lax.fori_loop(0, max(1, (seq_len - 1).bit_length()), level, (a, b))[1]


def linear_recurrence(a: Array, b: Array, *, diagonal: bool, scan: str = "auto") -> Array:
    """``x_t = a_t x_{t-1} + b_t`` with ``x_{-1} = 0``, over axis 0, as a parallel prefix.

    ``a (T, ..., D, D)`` (matrices) or ``(T, ..., D)`` (``diagonal``), ``b (T, ..., D)``. Returns ``x`` like ``b``.
    ``scan``: ``"associative"`` (``jax.lax.associative_scan``, work-efficient), ``"doubling"``
    (:func:`_doubling`, fast to compile) or ``"auto"``: doubling up to ``T =`` :data:`DOUBLING_MAX_T`.
    """
    combine = _combine_diagonal if diagonal else _combine_full
    if scan == "doubling" or (scan == "auto" and b.shape[0] <= DOUBLING_MAX_T):
        identity = jnp.ones((), a.dtype) if diagonal else jnp.eye(a.shape[-1], dtype=a.dtype)
        return _doubling(combine, a, b, identity)
    return jax.lax.associative_scan(combine, (a, b))[1]


def shift_back(x: Array) -> Array:
    """``out_t = x_{t+1}``, zero at ``t = T-1``: what step ``t+1`` hands back to step ``t``."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])], axis=0)
