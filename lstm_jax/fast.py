"""Fast layer implementations: the same maths as :func:`lstm_jax.layers.scan_layer`, arranged for speed.

Every function here has the ``layer_impl`` signature::

    fn(cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None)
        -> (ys, final_carry)

and is registered in :func:`lstm_jax.layers.layer_impl`, so a model selects it
with ``apply_stack(..., impl="hoisted")``. Each one must agree with the reference
``impl="scan"`` (the readable :func:`~lstm_jax.cells.lstm_step` under
``lax.scan``) in outputs, final carry and gradients; ``tests/test_fast.py``
checks that for every cell, with and without ``lengths`` and ``reverse``.

The variants (measured against each other and against Flax / Equinox /
PyTorch by ``experiments/benchmark.py``):

``"hoisted"``
    The input projection ``x_t @ w_x + b`` does not depend on the carry, so it
    is computed for all time steps at once, as one large ``(T*B, I) @ (I, G*H)``
    matmul, before the scan; the scan body then only does ``h @ w_h`` and the
    gate non-linearities. Time-major inside. Differentiated by JAX autodiff.

The hand-derived backward (input projection hoisted, weight gradients as
single large matmuls after the backward scan, the arrangement cuDNN and oneDNN
use) is *not* here: there is one, impl ``"manual"`` in :mod:`lstm_jax.bptt`,
where each equation is documented and checked against ``jax.grad``.

``"remat"``
    Rematerialisation for long sequences: the time axis is cut into segments
    of ``segment`` steps (default about ``sqrt(T)``); an outer scan runs over
    segments and each segment is an inner scan wrapped in ``jax.checkpoint``.
    Only the carries at segment boundaries are saved for the backward pass;
    each segment's internals are recomputed when its gradient is needed.
    Activation memory drops from ``O(T)`` per-step residuals to
    ``O(T/segment + segment)``, for about one extra forward pass of compute.
    Use :func:`remat_layer` with ``segment=`` to choose the length. Each
    segment runs the ``"manual"`` layer (:func:`lstm_jax.bptt.manual_layer`,
    hand-derived backward) by default (``inner="scan"`` for the readable step
    under autodiff).

Padded batches (``lengths``) and ``reverse`` follow the reference exactly:
past its length a sequence's carry is frozen and its outputs are zero, and
the reverse direction reads each sequence from its own last real step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .bptt import _forward_scan, manual_layer
from .cells import Cell, LSTMCarry, get_cell
from .layers import _flip_within_lengths, check_sequence_inputs, layer_impl, with_batch_axis

Array = jax.Array

__all__ = [
    "hoisted_layer",
    "remat_layer",
    "default_segment",
    "FAST_IMPLS",
]


# ---------------------------------------------------------------------------
# Shared plumbing: batch handling, reverse, lengths -> time-major core.


def _run(core, cell: Cell, params, xs, carry, *, reverse, lengths, unroll, compute_dtype):
    """Batch-major API around a time-major ``core(cell, params, xs_tm, carry, mask, unroll, cd)``.

    ``mask`` is ``None`` or a ``(T, B, 1)`` array of the carry dtype, 1 where
    ``t < lengths[b]``.
    """
    cell = get_cell(cell)
    xs = jnp.asarray(xs)
    if xs.ndim == 2:
        return with_batch_axis(
            functools.partial(_run, core, cell, params), xs, carry, lengths=lengths,
            reverse=reverse, unroll=unroll, compute_dtype=compute_dtype,
        )
    lengths = check_sequence_inputs(xs, carry, lengths)
    batch, seq_len, features = xs.shape
    if features != params["w_x"].shape[0]:
        raise ValueError(
            f"xs has {features} features but w_x expects input_size={params['w_x'].shape[0]}"
        )
    hidden = params["w_h"].shape[0]
    for leaf in jax.tree_util.tree_leaves(carry):
        if leaf.shape != (batch, hidden):
            raise ValueError(
                f"carry leaves must have shape (batch, hidden) = ({batch}, {hidden}); got {leaf.shape}"
            )
    if cell.name == "lstm" and not isinstance(carry, LSTMCarry):
        raise TypeError(f"lstm carry must be an LSTMCarry, got {type(carry).__name__}")
    if reverse:
        flip = (lambda a: a[:, ::-1]) if lengths is None else (lambda a: _flip_within_lengths(a, lengths))
        xs = flip(xs)
    mask = None
    if lengths is not None:
        dtype = jax.tree_util.tree_leaves(carry)[0].dtype
        mask = (jnp.arange(seq_len)[:, None] < lengths[None, :]).astype(dtype)[..., None]
    ys_tm, final = core(cell, params, jnp.swapaxes(xs, 0, 1), carry, mask, unroll, compute_dtype)
    ys = jnp.swapaxes(ys_tm, 0, 1)
    if reverse:
        ys = flip(ys)
    return ys, final


# ---------------------------------------------------------------------------
# "hoisted": input projection out of the loop, autodiff backward.


def _hoisted_core(cell, params, xs_tm, carry, mask, unroll, cd):
    # bptt's forward scan is exactly this arrangement (one matmul for x W_x + b over all
    # steps, then h W_h in the loop); without a cache it emits only ys, and autodiff
    # differentiates it, so the cell equations stay written once for this purpose.
    valid = None if mask is None else mask[..., 0] > 0
    ys_tm, final, _ = _forward_scan(
        cell.name, params, xs_tm, carry, valid, scan_reverse=False, cd=cd, unroll=unroll, with_cache=False
    )
    return ys_tm, final


def hoisted_layer(cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None):
    """Input projection hoisted out of the scan; autodiff backward. See the module docstring."""
    return _run(
        _hoisted_core, cell, params, xs, carry, reverse=reverse, lengths=lengths,
        unroll=unroll, compute_dtype=compute_dtype,
    )


# ---------------------------------------------------------------------------
# "remat": checkpointed segments.


def default_segment(seq_len: int) -> int:
    """Segment length for :func:`remat_layer`: a divisor of ``seq_len`` near ``sqrt(seq_len)``.

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


def _remat_core(segment, inner_impl):
    def core(cell, params, xs_tm, carry, mask, unroll, cd):
        seq_len, batch = xs_tm.shape[:2]
        seg = segment or default_segment(seq_len)
        seg = min(seg, seq_len)
        n_seg = -(-seq_len // seg)
        pad = n_seg * seg - seq_len
        if pad:
            dtype = jax.tree_util.tree_leaves(carry)[0].dtype
            if mask is None:
                mask = jnp.ones((seq_len, batch, 1), dtype)
            xs_tm = jnp.concatenate([xs_tm, jnp.zeros((pad,) + xs_tm.shape[1:], xs_tm.dtype)])
            mask = jnp.concatenate([mask, jnp.zeros((pad, batch, 1), mask.dtype)])

        inner_layer = manual_layer if inner_impl == "manual" else layer_impl("scan")

        def run_inner(state, seg_inp):
            # The mask is a prefix (t < lengths) in every segment, so it is a per-segment length.
            x_seg, m_seg = seg_inp
            seg_lengths = None if m_seg is None else jnp.sum(m_seg[:, :, 0] > 0, axis=0)
            ys, final = inner_layer(
                cell, params, jnp.swapaxes(x_seg, 0, 1), state, lengths=seg_lengths,
                unroll=unroll, compute_dtype=cd,
            )
            return final, jnp.swapaxes(ys, 0, 1)

        run_segment = jax.checkpoint(run_inner, prevent_cse=False)

        def reshape(a):
            return None if a is None else a.reshape((n_seg, seg) + a.shape[1:])

        final, ys = jax.lax.scan(run_segment, carry, (reshape(xs_tm), reshape(mask)))
        ys = ys.reshape((n_seg * seg,) + ys.shape[2:])[:seq_len]
        return ys, final

    return core


def remat_layer(
    cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None, segment=None,
    inner="manual",
):
    """A segmented, checkpointed scan (see the module docstring).

    ``segment``: steps per checkpointed segment; ``None`` picks :func:`default_segment`.
    ``inner``: how each segment runs: ``"manual"`` (default; the hand-derived
    backward of :mod:`lstm_jax.bptt`, its forward recomputed per segment) or
    ``"scan"`` (the readable cell step under autodiff).
    """
    if segment is not None and (not isinstance(segment, int) or segment < 1):
        raise ValueError(f"segment must be a positive int, got {segment!r}")
    if inner not in ("manual", "scan"):
        raise ValueError(f"inner must be 'manual' or 'scan', got {inner!r}")
    return _run(
        _remat_core(segment, inner), cell, params, xs, carry, reverse=reverse, lengths=lengths,
        unroll=unroll, compute_dtype=compute_dtype,
    )


#: The implementations this module adds to :func:`lstm_jax.layers.layer_impl`.
FAST_IMPLS = {"hoisted": hoisted_layer, "remat": remat_layer}
