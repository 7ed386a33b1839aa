"""``"manual"``: the hand-derived BPTT of :mod:`lstm_jax.bptt` as a ``jax.custom_vjp`` layer.

Same forward as ``"hoisted"``; under ``jax.grad`` the backward is the
hand-written one (:func:`lstm_jax.bptt.backward_time_major`): one reverse scan
that carries only the state gradients and emits ``dz_t``, then
``dW_x``, ``dW_h``, the biases and ``dx`` as one matmul or sum each over all
steps (the arrangement cuDNN and oneDNN use). Gradients flow to ``params``,
``xs`` and ``carry``; the mask is data (no cotangent). Forward-mode
(``jax.jvp``) is not defined for a custom_vjp function: use ``"scan"`` for that.
"""

from __future__ import annotations

import functools

import jax

from ..bptt.scans import backward_time_major, forward_scan, require_backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7))
def _manual(cell, params, xs_tm, carry, mask, reverse, unroll, compute_dtype):
    ys_tm, final, _ = forward_scan(
        cell, params, xs_tm, carry, mask, reverse, unroll=unroll, compute_dtype=compute_dtype, keep_residuals=False
    )
    return ys_tm, final


def _manual_fwd(cell, params, xs_tm, carry, mask, reverse, unroll, compute_dtype):
    ys_tm, final, residuals = forward_scan(
        cell, params, xs_tm, carry, mask, reverse, unroll=unroll, compute_dtype=compute_dtype, keep_residuals=True
    )
    return (ys_tm, final), (params, xs_tm, mask, residuals)


def _manual_bwd(cell, reverse, unroll, compute_dtype, saved, cotangents):
    params, xs_tm, mask, residuals = saved
    dys_tm, dfinal = cotangents
    dtype = residuals["h_prev"].dtype
    dfinal = jax.tree_util.tree_map(lambda a: a.astype(dtype), dfinal)
    dparams, dxs_tm, dcarry0 = backward_time_major(
        cell, params, xs_tm, residuals, mask, reverse, dys_tm.astype(dtype), dfinal,
        unroll=unroll, compute_dtype=compute_dtype,
    )
    # Cotangents must carry the primal dtypes.
    dparams = {k: dparams[k].astype(params[k].dtype) for k in params}
    return dparams, dxs_tm, dcarry0, None


_manual.defvjp(_manual_fwd, _manual_bwd)


def manual_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype):
    require_backward(cell, "impl 'manual'")
    return _manual(cell, params, xs_tm, carry, mask, reverse, unroll, compute_dtype)
