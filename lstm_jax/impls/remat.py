"""``"remat"``: rematerialisation for long sequences, checkpointed segments.

The time axis is cut into segments of ``segment`` steps (default about
``sqrt(T)``, :func:`default_segment`); an outer scan runs over segments and
each segment is an inner layer wrapped in ``jax.checkpoint``. Only the carries
at segment boundaries are saved for the backward pass; each segment's
internals are recomputed when its gradient is needed. Activation memory drops
from ``O(T)`` per-step residuals to ``O(T/segment + segment)``, for about one
extra forward pass of compute.

Options (``layer_impl("remat", segment=16, inner="scan")``):

* ``segment``: steps per checkpointed segment; ``None`` picks :func:`default_segment`.
* ``inner``: how each segment runs: ``"manual"`` (default; the hand-derived
  backward, its forward recomputed per segment) or ``"scan"`` (the readable
  cell step under autodiff).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .manual import manual_core
from .scan import scan_core

INNER_CORES = {"manual": manual_core, "scan": scan_core}


def default_segment(seq_len: int) -> int:
    """Segment length for ``"remat"``: a divisor of ``seq_len`` near ``sqrt(seq_len)``.

    ``sqrt(T)`` balances the ``T/segment`` saved boundary carries against the
    ``segment`` steps of residuals live while one segment is recomputed. If
    ``seq_len`` has no divisor in ``[sqrt(T)/2, 2 sqrt(T)]`` the sequence is
    padded instead (masked steps) and ``ceil(sqrt(T))`` is returned.
    """
    root = math.isqrt(seq_len)
    if root * root < seq_len:
        root += 1
    for delta in range(0, root + 1):
        for cand in (root - delta, root + delta):
            if 1 <= cand <= seq_len and seq_len % cand == 0 and root / 2 <= cand <= 2 * root:
                return cand
    return max(root, 1)


def check_options(segment=None, inner="manual") -> None:
    if segment is not None and (not isinstance(segment, int) or isinstance(segment, bool) or segment < 1):
        raise ValueError(f"segment must be a positive int, got {segment!r}")
    if inner not in INNER_CORES:
        raise ValueError(f"inner must be one of {sorted(INNER_CORES)}, got {inner!r}")


def remat_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype, segment=None, inner="manual"):
    if reverse:  # only without a mask (see lstm_jax.sequence): flip time, run forwards, flip back
        ys_tm, final = remat_core(
            cell, params, xs_tm[::-1], carry, None, False, unroll=unroll, compute_dtype=compute_dtype,
            segment=segment, inner=inner,
        )
        return ys_tm[::-1], final
    inner_core = INNER_CORES[inner]
    seq_len, batch = xs_tm.shape[:2]
    seg = min(segment or default_segment(seq_len), seq_len)
    n_seg = -(-seq_len // seg)
    pad = n_seg * seg - seq_len
    if pad:  # padded steps are masked: carry frozen, output zero, sliced off below
        if mask is None:
            mask = jnp.ones((seq_len, batch), bool)
        xs_tm = jnp.concatenate([xs_tm, jnp.zeros((pad,) + xs_tm.shape[1:], xs_tm.dtype)])
        mask = jnp.concatenate([mask, jnp.zeros((pad, batch), bool)])

    def run_segment(state, seg_inputs):
        x_seg, m_seg = seg_inputs
        ys, final = inner_core(cell, params, x_seg, state, m_seg, False, unroll=unroll, compute_dtype=compute_dtype)
        return final, ys

    def by_segment(a):
        return None if a is None else a.reshape((n_seg, seg) + a.shape[1:])

    final, ys = jax.lax.scan(jax.checkpoint(run_segment, prevent_cse=False), carry, (by_segment(xs_tm), by_segment(mask)))
    return ys.reshape((n_seg * seg,) + ys.shape[2:])[:seq_len], final
