"""One layer, one direction: :func:`forward` keeps a :class:`LayerCache`, :func:`backward` walks it back.

Batch-major like every user-facing layer function; validation, ``reverse`` and
``lengths`` go through the shared front (:mod:`lstm_jax.sequence`), so the
semantics are those of :func:`lstm_jax.layers.scan_layer`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..cells import Cell, LSTMCarry, get_cell
from ..sequence import check_layer_inputs, flip_within_lengths, over_time, time_mask
from .scans import backward_time_major, forward_scan, require_backward

Array = jax.Array


class Grads(NamedTuple):
    """Gradients returned by the backward passes.

    params: same structure as the params (dict per layer, list for a stack).
    xs:     ``(B, T, I)``, dL/dxs.
    carry:  same structure as the initial carry, dL/d(initial carry).
    """

    params: Any
    xs: Array
    carry: Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "xs", "lengths", "residuals"],
    meta_fields=["cell", "reverse", "compute_dtype", "unroll"],
)
@dataclasses.dataclass(frozen=True)
class LayerCache:
    """What :func:`forward` keeps for :func:`backward` (a pytree).

    cell:       the :class:`~lstm_jax.cells.Cell`.
    reverse:    whether the layer ran in reverse.
    compute_dtype: matmul dtype used in the forward (``None`` = params dtype).
    unroll:     ``jax.lax.scan`` unroll factor, reused by the backward scan.
    params:     the layer's params (the backward needs ``W_x``, ``W_h``).
    xs:         ``(T, B, I)`` time-major inputs *in processing order* (flipped
                within lengths if ``reverse`` with ``lengths``).
    lengths:    ``(B,)`` int or ``None``.
    residuals:  dict name -> ``(T, B, ...)``, what the cell's recurrence keeps.
    """

    cell: Cell
    reverse: bool
    compute_dtype: Any
    unroll: int
    params: Any
    xs: Array
    lengths: Any
    residuals: dict


def forward(
    cell: str | Cell,
    params: dict,
    xs: Array,
    carry: Any,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    compute_dtype=None,
    unroll: int = 1,
):
    """Run one layer of ``cell`` over ``xs (B, T, I)`` and keep what :func:`backward` needs.

    Same semantics (and outputs, up to float rounding) as
    :func:`lstm_jax.layers.scan_layer` with the cell's step; the per-step
    equations are the cell's recurrence. ``compute_dtype`` (e.g.
    ``jnp.bfloat16``) is used in the backward's matmuls too; accumulation stays
    in the params dtype. ``unroll`` applies to both scans.

    Returns:
        ``(ys (B,T,H), final_carry, cache)`` with ``cache`` a :class:`LayerCache`.
    """
    xs = jnp.asarray(xs)
    cell, lengths, unroll, cd = check_layer_inputs(cell, params, xs, carry, lengths, unroll, compute_dtype)
    require_backward(cell, "bptt.forward")
    kept = {}

    def core(xs_tm, c, mask, scan_reverse):
        ys_tm, final, residuals = forward_scan(
            cell, params, xs_tm, c, mask, scan_reverse, unroll=unroll, compute_dtype=cd, keep_residuals=True
        )
        kept.update(xs=xs_tm, residuals=residuals)
        return ys_tm, final

    ys, final = over_time(core, xs, carry, lengths=lengths, reverse=bool(reverse))
    cache = LayerCache(
        cell=cell, reverse=bool(reverse), compute_dtype=cd, unroll=unroll,
        params=params, xs=kept["xs"], lengths=lengths, residuals=kept["residuals"],
    )
    return ys, final, cache


def check_cache(cache, what: str = "backward") -> None:
    """A clear error for a missing, foreign or incomplete cache (instead of a shape error deep in the scan)."""
    if cache is None:
        raise TypeError(f"{what}: missing cache; pass the cache returned by forward(...) (got None)")
    if not isinstance(cache, LayerCache):
        raise TypeError(f"{what}: cache must be the LayerCache returned by forward(...), got {type(cache).__name__}")
    cell = cache.cell
    if not isinstance(cache.residuals, dict):
        raise TypeError(f"{what}: cache.residuals must be a dict, got {type(cache.residuals).__name__}")
    if cache.params is None or cache.xs is None:
        raise ValueError(f"{what}: incomplete cache: params and xs must be kept")
    hidden = cell.check_params(cache.params)
    seq_len, batch = cache.xs.shape[:2]
    dtype = cache.params["w_x"].dtype
    carry = cell.carry_like(hidden, (batch,), dtype)
    xw = jax.ShapeDtypeStruct((batch, cell.num_gates * hidden), dtype)
    _, _, expected = jax.eval_shape(
        lambda p, c, x: cell.recurrence(p, c, x, cache.compute_dtype), cache.params, carry, xw
    )
    missing = [k for k in expected if k not in cache.residuals]
    if missing:
        raise ValueError(
            f"{what}: incomplete cache for {cell.name}: missing residuals {missing} "
            f"(needs {tuple(expected)}); was it built by forward(..., cell={cell.name!r})?"
        )
    for k, spec in expected.items():
        got = getattr(cache.residuals[k], "shape", None)
        if got != (seq_len,) + spec.shape:
            raise ValueError(f"{what}: cache residual {k!r} has shape {got}, expected {(seq_len,) + spec.shape}")


def backward(cache: LayerCache, dys: Array | None, dfinal: Any = None) -> Grads:
    """Hand-derived BPTT for one layer: gradients of every parameter, the inputs and the initial carry.

    Given ``dys = dL/dys`` ``(B, T, H)`` and ``dfinal = dL/d(final carry)``
    (either may be ``None`` for zero), walks time in reverse through all
    steps with the cell's ``backward_step``::

        dz_t, dcarry_{t-1}' = backward_step(m_t ⊙ dL/dcarry_t, m_t ⊙ dys_t)   # m_t = 1 without lengths
        dL/dcarry_{t-1} = m_t ? dcarry_{t-1}' : dL/dcarry_t                  # frozen steps pass through

    then, over all steps at once::

        dW_x = Σ_t x_tᵀ dz_t        dW_h = Σ_t h_{t-1}ᵀ dz_t     db = Σ_{t,b} dz_t
        dx_t = dz_t W_xᵀ            (gru: dz for W_h/b_h uses r ⊙ ds_n in the n block)

    Returns:
        :class:`Grads` ``(params dict, xs (B,T,I), carry like the initial carry)``.

    Raises:
        TypeError: a missing cache, or one that is not the ``LayerCache`` of ``forward``.
        ValueError: an incomplete cache, or ``dys`` / ``dfinal`` of the wrong shape.
    """
    check_cache(cache)
    cell, params = cache.cell, cache.params
    seq_len, batch, _ = cache.xs.shape
    hidden = cell.hidden_size(params)
    dtype = cache.residuals["h_prev"].dtype
    if dys is None:
        dys = jnp.zeros((batch, seq_len, hidden), dtype)
    dys = jnp.asarray(dys)
    if dys.shape != (batch, seq_len, hidden):
        raise ValueError(
            f"backward ({cell.name}): dys must have the shape of ys, (batch, time, hidden) = "
            f"{(batch, seq_len, hidden)}; got {dys.shape}"
        )
    if dfinal is None:
        dfinal = cell.zeros_carry(hidden, (batch,), dtype)
    if isinstance(dfinal, tuple) and not hasattr(dfinal, "_fields"):
        # A plain tuple for a NamedTuple carry (e.g. (dh, dc) for an LSTMCarry).
        like = cell.carry_like(hidden, (batch,), dtype)
        if hasattr(like, "_fields") and len(dfinal) == len(like):
            dfinal = type(like)(*dfinal)
    cell.check_carry(dfinal, hidden, (batch,), params["w_x"].dtype, "", what="dfinal (gradient of the final carry)")
    dys = dys.astype(dtype)
    dfinal = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), dfinal)

    lengths = cache.lengths
    flipped = cache.reverse and lengths is not None
    if flipped:
        dys = flip_within_lengths(dys, lengths)
    dparams, dxs_tm, dcarry0 = backward_time_major(
        cell, params, cache.xs, cache.residuals, time_mask(lengths, seq_len), cache.reverse and not flipped,
        jnp.swapaxes(dys, 0, 1), dfinal, unroll=cache.unroll, compute_dtype=cache.compute_dtype,
    )
    dxs = jnp.swapaxes(dxs_tm, 0, 1)
    if flipped:
        dxs = flip_within_lengths(dxs, lengths)
    return Grads(params=dparams, xs=dxs, carry=dcarry0)


# Per-cell entry points (thin, so each cell's pair can be called and documented on its own;
# the equations of each backward step are in its cell module's docstring).


def _per_cell(name: str):
    def cell_forward(params, xs, carry0, *, lengths=None, reverse=False, compute_dtype=None, unroll=1):
        return forward(name, params, xs, carry0, lengths=lengths, reverse=reverse,
                       compute_dtype=compute_dtype, unroll=unroll)

    def cell_backward(cache, dys, dcarry_final=None) -> Grads:
        check_cache(cache, f"{name}_backward")
        if cache.cell.name != name:
            raise ValueError(f"{name}_backward got a cache built for cell {cache.cell.name!r}")
        return backward(cache, dys, dcarry_final)

    step = get_cell(name).backward_step
    cell_forward.__name__, cell_backward.__name__ = f"{name}_forward", f"{name}_backward"
    cell_forward.__doc__ = (
        f"{name.upper()} over a sequence with cache: :func:`forward` with ``cell={name!r}``. "
        "Returns ``(ys, final_carry, cache)``."
    )
    cell_backward.__doc__ = (
        f"{name.upper()} BPTT: :func:`backward` for a cache from ``{name}_forward``. Per step:\n"
        + (step.__doc__ or "")
    )
    return cell_forward, cell_backward


rnn_forward, rnn_backward = _per_cell("rnn")
lstm_forward, lstm_backward = _per_cell("lstm")
gru_forward, gru_backward = _per_cell("gru")

__all__ = [
    "Grads", "LayerCache", "LSTMCarry", "forward", "backward", "check_cache",
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
]
