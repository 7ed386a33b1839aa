"""``"scan"``, the reference: the cell's readable step under ``jax.lax.scan``, differentiated by autodiff.

:func:`scan_layer` is the one sequential scan of the library, for any step
function ``step(params, carry, x_t) -> (carry, y_t)`` (a registered cell's or
your own); every other implementation must agree with it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ..sequence import check_sequence_inputs, over_time, with_batch_axis

Array = jax.Array


def scan_time_major(step: Callable, params, xs_tm, carry, mask, reverse: bool, *, unroll: int = 1):
    """``lax.scan`` of ``step(params, ·, ·)`` over ``xs_tm (T, B, I)``.

    With ``mask (T, B)`` the carry is frozen and the output zero where it is False.
    Returns ``(ys_tm (T, B, H), final_carry)``.
    """
    cell_step = functools.partial(step, params)
    if mask is None:
        final, ys_tm = jax.lax.scan(cell_step, carry, xs_tm, reverse=reverse, unroll=unroll)
        return ys_tm, final

    def masked_step(carry, inputs):
        x_t, m_t = inputs
        new_carry, y_t = cell_step(carry, x_t)
        valid = m_t[:, None]  # (batch, 1)
        new_carry = jax.tree_util.tree_map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)
        return new_carry, jnp.where(valid, y_t, jnp.zeros_like(y_t))

    final, ys_tm = jax.lax.scan(masked_step, carry, (xs_tm, mask), reverse=reverse, unroll=unroll)
    return ys_tm, final


def scan_layer(
    step: Callable,
    params: Any,
    xs: Array,
    carry: Any,
    *,
    reverse: bool = False,
    lengths: Array | None = None,
    unroll: int = 1,
) -> tuple[Array, Any]:
    """Run ``step(params, carry, x_t) -> (carry, y_t)`` over the time axis of ``xs``.

    Args:
        step: a cell step (e.g. :func:`~lstm_jax.cells.lstm_step`, or a
            ``functools.partial`` of one with ``compute_dtype``).
        params: the cell's params pytree.
        xs: ``(batch, time, features)``, or ``(time, features)`` for one sequence.
        carry: initial carry with leading shape ``(batch,)`` (or none for one
            sequence); it may be a trainable parameter.
        reverse: read the sequence from the end; outputs stay in input order.
        lengths: ``(batch,)`` int, real length of each padded sequence.
        unroll: passed to ``jax.lax.scan``.

    Returns:
        ``(ys, final_carry)``: ``ys`` is ``(batch, time, H)`` (zero past each
        length), ``final_carry`` the carry after each sequence's last real step.
    """
    xs = jnp.asarray(xs)
    if xs.ndim == 2:
        return with_batch_axis(
            functools.partial(scan_layer, step, params), xs, carry, lengths=lengths, reverse=reverse, unroll=unroll
        )
    lengths = check_sequence_inputs(xs, carry, lengths)

    def core(xs_tm, c, mask, scan_reverse):
        return scan_time_major(step, params, xs_tm, c, mask, scan_reverse, unroll=unroll)

    return over_time(core, xs, carry, lengths=lengths, reverse=reverse)


def scan_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype):
    """The ``"scan"`` implementation's time-major core: :func:`scan_time_major` over ``cell.step``."""
    step = cell.step if compute_dtype is None else functools.partial(cell.step, compute_dtype=compute_dtype)
    return scan_time_major(step, params, xs_tm, carry, mask, reverse, unroll=unroll)
