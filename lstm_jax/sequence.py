"""The shared front of every layer implementation: validation, padded lengths, reverse, batch axis.

Every way of running a cell over a sequence (:mod:`lstm_jax.impls`, the
per-layer :func:`lstm_jax.bptt.forward`) goes through :func:`run_layer`, so the
same mistake gets the same message from each, and ``reverse`` and ``lengths``
mean the same everywhere:

* ``xs`` is batch-major ``(batch, time, features)``; a single ``(time,
  features)`` sequence gets a batch axis of 1 (:func:`with_batch_axis`).
* ``lengths`` ``(batch,)``: for example ``b`` only steps ``t < lengths[b]``
  are real. Past them the carry is frozen and outputs are zero, so the final
  carry is the carry after the last real step. Padded inputs never reach the
  arithmetic (they are replaced by zeros first), so NaN or inf in the padding
  changes neither outputs nor gradients. Concrete lengths outside
  ``[0, time]`` are an error; traced ones (under ``jit``) cannot be checked
  without a host round trip, so by default they are clipped to ``[0, time]``, the same in
  both directions and every implementation (``lengths=T+5`` means the whole
  sequence, ``-1`` means none of it). With ``checked_lengths=True`` they are
  checked instead (``jax.experimental.checkify``; run the function through
  :func:`with_length_checks`): an out-of-range length raises, naming the values.
* ``reverse``: read each sequence from its end. With ``lengths`` each sequence
  is read from its own last real step back to 0 (flip within length, run
  forwards, flip back), as PyTorch's packed sequences do; outputs are always
  returned in input order.

Inside, implementations are *time-major cores*::

    core(xs_tm (T, B, I), carry, mask (T, B) bool or None, reverse) -> (ys_tm (T, B, H), final)

where ``reverse=True`` only ever comes without a mask (with lengths the front
has already flipped the sequences), so a core may run ``lax.scan(reverse=True)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .cells import Cell, get_cell

Array = jax.Array


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def with_length_checks(fn: Callable) -> Callable:
    """``checkify`` ``fn`` and raise its failed checks: the runner for ``checked_lengths=True``.

    With ``apply_stack(..., checked_lengths=True)`` (or a layer impl called so)
    out-of-range *traced* lengths are checked with :func:`jax.experimental.checkify.check`
    instead of clipped; such a check must run under ``checkify.checkify``. This
    does that and raises ``checkify.JaxRuntimeError`` ("lengths must lie in
    [0, seq_len=T]; got min ..., max ...") on a failed check. Use it outside
    ``jit``: ``with_length_checks(jax.jit(loss))``. The check costs a reduction
    over ``lengths`` and a host round trip per call; it is a debug mode.
    """
    from jax.experimental import checkify

    checked = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        err, out = checked(*args, **kwargs)
        err.throw()
        return out

    return run


def check_lengths(lengths, batch: int, seq_len: int, checked: bool = False) -> Array:
    """``lengths`` must be ``(batch,)`` integers; concrete values must lie in ``[0, seq_len]``,
    traced ones are clipped to it, or with ``checked`` checked by checkify (see the module docstring)."""
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape (batch,) = ({batch},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if is_concrete(lengths):
        values = np.asarray(lengths)
        if (values < 0).any() or (values > seq_len).any():
            raise ValueError(
                f"lengths must lie in [0, seq_len={seq_len}]; got min {values.min()}, max {values.max()}"
            )
        return lengths
    if checked:
        from jax.experimental import checkify

        checkify.check(
            jnp.all((lengths >= 0) & (lengths <= seq_len)),
            f"lengths must lie in [0, seq_len={seq_len}]; got min {{lo}}, max {{hi}}",
            lo=jnp.min(lengths), hi=jnp.max(lengths),
        )
    return jnp.clip(lengths, 0, seq_len)


def check_unroll(unroll) -> int:
    if not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1:
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")
    return int(unroll)


def normalize_compute_dtype(compute_dtype):
    """``None`` or a floating numpy dtype (the matmul dtype); anything else is refused."""
    if compute_dtype is None:
        return None
    try:
        dt = np.dtype(compute_dtype)
    except TypeError:
        raise TypeError(f"compute_dtype must be None or a floating dtype, got {compute_dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"compute_dtype must be None or a floating dtype (e.g. jnp.bfloat16), got {dt}; "
            "the matmuls are floating-point"
        )
    return dt


def flip_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverse each sequence ``xs[b, :lengths[b]]`` (time axis 1) in place; padding stays put.

    An involution: applying it twice returns ``xs``.
    """
    seq_len = xs.shape[1]
    t = jnp.arange(seq_len)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(xs, idx.reshape(idx.shape + (1,) * (xs.ndim - 2)), axis=1)


def time_mask(lengths: Array | None, seq_len: int) -> Array | None:
    """``(T, B)`` bool, True where ``t < lengths[b]``; ``None`` without lengths."""
    if lengths is None:
        return None
    return jnp.arange(seq_len)[:, None] < lengths[None, :]


def with_batch_axis(layer: Callable, xs: Array, carry: Any, *, lengths=None, **kwargs):
    """Run ``layer(xs, carry, lengths=..., **kwargs)`` on one ``(time, features)``
    sequence by giving it (and its carry and length) a batch axis of 1."""
    if lengths is not None:
        lengths = jnp.reshape(jnp.asarray(lengths), (1,))
    carry = jax.tree_util.tree_map(lambda c: c[None], carry)
    ys, final = layer(xs[None], carry, lengths=lengths, **kwargs)
    return ys[0], jax.tree_util.tree_map(lambda c: c[0], final)


def _check_xs_shape(xs: Array) -> tuple:
    """``xs`` must be ``(batch, time, features)`` with a non-empty time axis; returns its shape."""
    if xs.ndim != 3:
        raise ValueError(
            f"xs must have shape (batch, time, features) or (time, features); got shape {xs.shape}"
        )
    if xs.shape[1] == 0:
        raise ValueError(f"xs has an empty time axis (shape {xs.shape})")
    return xs.shape


def check_sequence_inputs(xs: Array, carry: Any, lengths: Array | None):
    """Checks that need no cell: ``xs`` is ``(batch, time, features)`` with a
    non-empty time axis, every carry leaf leads with ``batch``, ``lengths`` (if
    given) passes :func:`check_lengths`. Returns the checked ``lengths``."""
    batch, seq_len, _ = _check_xs_shape(xs)
    for leaf in jax.tree_util.tree_leaves(carry):
        if getattr(leaf, "ndim", 0) < 1 or leaf.shape[0] != batch:
            raise ValueError(
                f"carry leaves must have leading batch dimension {batch} to match xs "
                f"{xs.shape}; got a leaf of shape {getattr(leaf, 'shape', None)}"
            )
    return None if lengths is None else check_lengths(lengths, batch, seq_len)


def check_layer_inputs(
    cell: str | Cell, params, xs: Array, carry, lengths, unroll, compute_dtype, checked_lengths: bool = False
):
    """Everything one layer's inputs must satisfy, checked once for every implementation.

    Returns ``(cell, lengths, unroll, compute_dtype)`` normalised.
    """
    cell = get_cell(cell)
    hidden = cell.check_params(params)
    w_x = params["w_x"]
    if xs.ndim == 3 and xs.dtype != w_x.dtype:  # before the empty-axis check, as apply_stack always did
        raise TypeError(
            f"xs dtype {xs.dtype} differs from the params dtype {w_x.dtype}; "
            "cast one of them (use compute_dtype for reduced-precision matmuls)"
        )
    batch, seq_len, features = _check_xs_shape(xs)
    if features != w_x.shape[0]:
        raise ValueError(
            f"{cell.name}: x_t has {features} features (xs shape {xs.shape}) but w_x expects "
            f"input_size={w_x.shape[0]} (w_x shape {w_x.shape})"
        )
    cell.check_carry(
        carry, hidden, (batch,), params["w_h"].dtype,
        f"(carry must have shape (batch, hidden) per leaf, with leading batch dimension {batch} "
        f"to match xs {xs.shape}; got {jax.tree_util.tree_map(lambda a: getattr(a, 'shape', None), carry)})",
    )
    if lengths is not None:
        lengths = check_lengths(lengths, batch, seq_len, checked_lengths)
    return cell, lengths, check_unroll(unroll), normalize_compute_dtype(compute_dtype)


def over_time(core: Callable, xs: Array, carry, *, lengths: Array | None, reverse: bool):
    """Batch-major ``(B, T, F)`` around a time-major ``core(xs_tm, carry, mask, reverse)``."""
    flip = reverse and lengths is not None
    if flip:
        xs = flip_within_lengths(xs, lengths)
    xs_tm, mask = jnp.swapaxes(xs, 0, 1), time_mask(lengths, xs.shape[1])
    if mask is not None:  # padding never reaches a matmul: NaN there must not leak into gradients
        xs_tm = jnp.where(mask[..., None], xs_tm, jnp.zeros_like(xs_tm))
    ys_tm, final = core(xs_tm, carry, mask, reverse and not flip)
    ys = jnp.swapaxes(ys_tm, 0, 1)
    return (flip_within_lengths(ys, lengths) if flip else ys), final


def run_layer(
    core: Callable, cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None,
    checked_lengths=False, **options,
):
    """Validate, then run ``core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype, **options)``.

    The batch-major layer API shared by every implementation: ``xs (B, T, I)``
    or ``(T, I)``, ``carry`` like the cell's ``zeros_carry``, optional ``lengths
    (B,)``; returns ``(ys (B, T, H), final_carry)``.
    """
    xs = jnp.asarray(xs)
    if xs.ndim == 2:
        return with_batch_axis(
            functools.partial(run_layer, core, cell, params), xs, carry, lengths=lengths, reverse=reverse,
            unroll=unroll, compute_dtype=compute_dtype, checked_lengths=checked_lengths, **options,
        )
    cell, lengths, unroll, cd = check_layer_inputs(
        cell, params, xs, carry, lengths, unroll, compute_dtype, checked_lengths
    )

    def timed(xs_tm, carry, mask, scan_reverse):
        return core(cell, params, xs_tm, carry, mask, scan_reverse, unroll=unroll, compute_dtype=cd, **options)

    return over_time(timed, xs, carry, lengths=lengths, reverse=bool(reverse))
