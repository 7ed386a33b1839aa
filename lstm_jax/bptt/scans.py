"""The cell-agnostic scans of the hand-derived BPTT, time-major.

:func:`forward_scan` runs any :class:`~lstm_jax.cells.Cell` with its input
projection hoisted out of the loop and (optionally) keeps each step's
residuals; :func:`backward_scan` walks the residuals in the opposite
direction with the cell's ``backward_step``; :func:`layer_grads` turns the
pre-activation gradients into parameter and input gradients with one matmul
each over all steps. :func:`backward_time_major` chains the last two. The
per-step equations live on the cells (``lstm_jax/cells/*.py``).

Shapes: ``xs_tm (T, B, I)``, ``mask (T, B)`` bool or ``None``, carry leaves
``(B, H)``, residuals ``(T, B, ...)``, ``dz (T, B, G*H)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..cells import Cell
from ..cells.base import contract, matmul

Array = jax.Array


def tree_where(mask: Array, a, b):
    """Elementwise select on pytrees; ``mask`` is ``(B, 1)``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(mask, x, y), a, b)


def require_backward(cell: Cell, what: str = "the hand-derived backward") -> None:
    """The after-loop gradient formulas assume params ``w_x``, the recurrent weights (if any) and the cell's biases only."""
    if cell.backward_step is None:
        raise ValueError(
            f"{what} needs cell {cell.name!r} to define backward_step; it has none "
            "(use impl 'scan' or 'hoisted', which differentiate the recurrence by autodiff)"
        )
    known = {"w_x", cell.recurrent_weight, cell.input_bias, cell.recurrent_bias} - {None}
    if set(cell.param_keys) != known:
        raise ValueError(
            f"{what} covers params {sorted(known)}; cell {cell.name!r} has {sorted(cell.param_keys)}"
        )


def outputs_from_h_prev(h_prev: Array, final_h: Array, mask, reverse: bool) -> Array:
    """The outputs, rebuilt from the residuals instead of being stored a second time.

    The hidden carry after step t is the ``h_prev`` of the next processed step
    (t+1, or t-1 when the scan runs in reverse), and the final carry after the
    last one; the output is that carry on real steps and 0 past the length::

        y_t = m_t ⊙ h_t,    h_t = h_prev_{t+1}  (h_T = final hidden)
    """
    if reverse:
        hs = jnp.concatenate([final_h[None], h_prev[:-1]], axis=0)
    else:
        hs = jnp.concatenate([h_prev[1:], final_h[None]], axis=0)
    return hs if mask is None else jnp.where(mask[..., None], hs, jnp.zeros_like(hs))


def forward_scan(cell: Cell, params, xs_tm, carry, mask, reverse: bool, *, unroll, compute_dtype, keep_residuals):
    """``(ys_tm (T,B,H), final, residuals or None)``; the input projection is one matmul over all steps.

    Masked steps (``mask[t, b]`` False) freeze the carry and output zero.
    """
    dtype = jax.tree_util.tree_leaves(carry)[0].dtype
    xw = cell.input_projection(params, xs_tm, compute_dtype, dtype)  # (T, B, G*H)

    def body(c, inp):
        xw_t, m_t = inp
        new_c, y, res = cell.recurrence(params, c, xw_t, compute_dtype)
        if m_t is not None:
            valid = m_t[:, None]
            new_c = tree_where(valid, new_c, c)
            y = jnp.where(valid, y, jnp.zeros_like(y))
        # With residuals, y_t is not emitted: it is already stored as the next step's h_prev.
        return new_c, (res if keep_residuals else y)

    final, out = jax.lax.scan(body, carry, (xw, mask), reverse=reverse, unroll=unroll)
    if not keep_residuals:
        return out, final, None
    return outputs_from_h_prev(out["h_prev"], cell.hidden(final), mask, reverse), final, out


def backward_scan(cell: Cell, params, residuals, dys_tm, dfinal, mask, reverse: bool, *, unroll, compute_dtype):
    """Reverse-time sweep over :func:`forward_scan`'s residuals, down to the first processed step.

    Carry: ``dL/dcarry_t``. Per step::

        dnext, dy_t     = m_t ⊙ dL/dcarry_t, m_t ⊙ dys_t           # m_t = 1 without a mask
        dz_in_t, dz_rec_t, dprev = cell.backward_step(dnext, dy_t)
        dL/dcarry_{t-1} = m_t ? dprev : dL/dcarry_t                # frozen steps pass through

    Returns ``(dz_in (T,B,G*H), dz_rec (T,B,G*H) or None, dL/dcarry_0)``.
    """

    def body(dcarry, inp):
        dy_t, res_t, m_t = inp
        dnext = dcarry
        if m_t is not None:
            valid = m_t[:, None]
            dnext = jax.tree_util.tree_map(lambda a: jnp.where(valid, a, 0.0), dcarry)
            dy_t = jnp.where(valid, dy_t, 0.0)
        dz_in, dz_rec, dprev = cell.backward_step(params, res_t, dnext, dy_t, compute_dtype)
        if m_t is not None:
            dprev = tree_where(valid, dprev, dcarry)
        return dprev, (dz_in, dz_rec)

    dcarry0, (dz_in, dz_rec) = jax.lax.scan(
        body, dfinal, (dys_tm, residuals, mask), reverse=not reverse, unroll=unroll
    )
    return dz_in, dz_rec, dcarry0


def mm_sum(a: Array, b: Array, compute_dtype, out_dtype) -> Array:
    """``Σ_{t,b} a[t,b,:]ᵀ b[t,b,:]``: ``(T,B,M), (T,B,N) -> (M,N)``, one matmul over all steps.

    Contracts the two leading axes in one ``dot_general``: XLA:CPU then lays
    ``a`` out as ``(M, T*B)`` and keeps a bf16 product in bf16, whereas the 2-D
    ``a.reshape(-1, M).T @ b`` form becomes a float32 product (optimized HLO).
    """
    return contract(a, b, ((0, 1), (0, 1)), compute_dtype, out_dtype)


def layer_grads(cell: Cell, params, xs_tm, h_prev, dz_in, dz_rec, compute_dtype):
    """After the loop, over all steps at once::

        dW_x = Σ_t x_tᵀ dz_in_t     dW_h = Σ_t h_{t-1}ᵀ dz_rec_t   (if the cell has W_h)
        d(input bias) = Σ_{t,b} dz_in_t     d(recurrent bias) = Σ_{t,b} dz_rec_t
        dx_t = dz_in_t W_xᵀ

    Returns ``(dparams, dxs_tm (T,B,I))``.
    """
    if dz_rec is None:
        dz_rec = dz_in
    pdtype = params["w_x"].dtype
    grads = {"w_x": mm_sum(xs_tm, dz_in, compute_dtype, pdtype)}
    if cell.recurrent_weight is not None:  # minGRU/minLSTM have none
        grads[cell.recurrent_weight] = mm_sum(h_prev, dz_rec, compute_dtype, pdtype)
    for key, dz in ((cell.input_bias, dz_in), (cell.recurrent_bias, dz_rec)):
        if key is not None:
            grads[key] = dz.sum(axis=(0, 1)).astype(params[key].dtype)
    dxs_tm = matmul(dz_in, params["w_x"], compute_dtype, h_prev.dtype, transpose_w=True).astype(xs_tm.dtype)
    return grads, dxs_tm


def backward_time_major(cell, params, xs_tm, residuals, mask, reverse, dys_tm, dfinal, *, unroll, compute_dtype):
    """:func:`backward_scan` then :func:`layer_grads`: ``(dparams, dxs_tm, dL/dcarry_0)``."""
    dz_in, dz_rec, dcarry0 = backward_scan(
        cell, params, residuals, dys_tm, dfinal, mask, reverse, unroll=unroll, compute_dtype=compute_dtype
    )
    dparams, dxs_tm = layer_grads(cell, params, xs_tm, residuals["h_prev"], dz_in, dz_rec, compute_dtype)
    return dparams, dxs_tm, dcarry0
