"""``"hoisted"``: the input projection out of the loop, differentiated by autodiff.

``x_t @ w_x + b`` does not depend on the carry, so it is computed for all time
steps at once, as one large ``(T*B, I) @ (I, G*H)`` matmul, before the scan;
the scan body then only does ``h @ w_h`` and the gate non-linearities (the
cell's ``recurrence``). This is exactly the forward of the hand-derived BPTT
(:func:`lstm_jax.bptt.forward_scan`) without its residuals, so the cell
equations stay written once.
"""

from __future__ import annotations

from ..bptt.scans import forward_scan


def hoisted_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype):
    ys_tm, final, _ = forward_scan(
        cell, params, xs_tm, carry, mask, reverse, unroll=unroll, compute_dtype=compute_dtype, keep_residuals=False
    )
    return ys_tm, final
