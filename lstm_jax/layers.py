"""Running cells over sequences: the one scan, plus stacking and bidirectionality.

Layout is batch-major everywhere the user sees it: ``xs`` is
``(batch, time, features)`` (as ``torch.nn.LSTM(batch_first=True)`` and Flax
``nn.RNN``); a single sequence ``(time, features)`` works too. Inside, the
scan runs over the time axis.

* :func:`scan_layer` runs one cell in one direction: optional ``reverse``,
  per-example ``lengths`` for padded batches, ``unroll``.
* :func:`init_stack` / :func:`apply_stack` compose layers: the output
  sequence of layer k is the input of layer k+1, optionally bidirectional
  (forward and reverse outputs concatenated on the feature axis) and with
  dropout between layers.

Padded batches (``lengths``): for example ``b`` only steps ``t < lengths[b]``
are real. Past them the carry is frozen and outputs are zero, so the final
carry is the carry after the last real step. In the reverse direction each
sequence is read from its own last real step back to 0 (not from the padding),
and outputs are returned in the original time order.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .cells import Cell, get_cell

Array = jax.Array


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_lengths(lengths, batch: int, seq_len: int) -> Array:
    lengths = jnp.asarray(lengths)
    if lengths.shape != (batch,):
        raise ValueError(
            f"lengths must have shape (batch,) = ({batch},), got {lengths.shape}"
        )
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if _is_concrete(lengths):
        values = np.asarray(lengths)
        if (values < 0).any() or (values > seq_len).any():
            raise ValueError(
                f"lengths must lie in [0, seq_len={seq_len}]; got min {values.min()}, "
                f"max {values.max()}"
            )
    return lengths


def _flip_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverse each sequence ``xs[b, :lengths[b]]`` in place; padding stays put.

    An involution: applying it twice returns ``xs``.
    """
    seq_len = xs.shape[1]
    t = jnp.arange(seq_len)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(xs, idx.reshape(idx.shape + (1,) * (xs.ndim - 2)), axis=1)


def check_sequence_inputs(xs: Array, carry: Any, lengths: Array | None):
    """Checks shared by every layer implementation on batch-major input.

    ``xs`` must be ``(batch, time, features)`` with a non-empty time axis,
    every carry leaf must lead with ``batch``, and ``lengths`` (if given) must
    be ``(batch,)`` integers in ``[0, time]``. Returns the checked ``lengths``.
    """
    if xs.ndim != 3:
        raise ValueError(
            f"xs must have shape (batch, time, features) or (time, features); got shape {xs.shape}"
        )
    batch, seq_len, _ = xs.shape
    if seq_len == 0:
        raise ValueError(f"xs has an empty time axis (shape {xs.shape})")
    for leaf in jax.tree_util.tree_leaves(carry):
        if leaf.ndim < 1 or leaf.shape[0] != batch:
            raise ValueError(
                f"carry leaves must have leading batch dimension {batch} to match xs "
                f"{xs.shape}; got a leaf of shape {leaf.shape}"
            )
    return None if lengths is None else _check_lengths(lengths, batch, seq_len)


def with_batch_axis(layer: Callable, xs: Array, carry: Any, *, lengths=None, **kwargs):
    """Run ``layer(xs, carry, lengths=..., **kwargs)`` on one ``(time, features)``
    sequence by giving it (and its carry and length) a batch axis of 1."""
    if lengths is not None:
        lengths = jnp.reshape(jnp.asarray(lengths), (1,))
    carry = jax.tree_util.tree_map(lambda c: c[None], carry)
    ys, final = layer(xs[None], carry, lengths=lengths, **kwargs)
    return ys[0], jax.tree_util.tree_map(lambda c: c[0], final)


def scan_layer(
    step: Callable,
    params: Any,
    xs: Array,
    carry: Any,
    *,
    reverse: bool = False,
    lengths: Array | None = None,
    unroll: int = 1,
):
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
    seq_len = xs.shape[1]
    cell_step = functools.partial(step, params)
    xs_tm = jnp.swapaxes(xs, 0, 1)  # (time, batch, features)

    if lengths is None:
        final, ys_tm = jax.lax.scan(cell_step, carry, xs_tm, reverse=reverse, unroll=unroll)
        return jnp.swapaxes(ys_tm, 0, 1), final

    if reverse:
        # Reverse = forward over each sequence flipped within its own length.
        flipped = _flip_within_lengths(xs, lengths)
        ys, final = scan_layer(step, params, flipped, carry, lengths=lengths, unroll=unroll)
        return _flip_within_lengths(ys, lengths), final

    def masked_step(carry, inputs):
        x_t, t = inputs
        new_carry, y_t = cell_step(carry, x_t)
        valid = (t < lengths)[:, None]  # (batch, 1)
        new_carry = jax.tree_util.tree_map(
            lambda new, old: jnp.where(valid, new, old), new_carry, carry
        )
        return new_carry, jnp.where(valid, y_t, jnp.zeros_like(y_t))

    final, ys_tm = jax.lax.scan(
        masked_step, carry, (xs_tm, jnp.arange(seq_len)), unroll=unroll
    )
    return jnp.swapaxes(ys_tm, 0, 1), final


# ---------------------------------------------------------------------------
# Layer implementations: interchangeable ways to run one cell over time.
# Each has the signature
#     fn(cell, params, xs, carry, *, reverse, lengths, unroll, compute_dtype) -> (ys, final)
# and must agree with "scan" (the reference) in outputs, final carry and gradients.


def _reference_layer(cell: Cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None):
    step = cell.step if compute_dtype is None else functools.partial(cell.step, compute_dtype=compute_dtype)
    return scan_layer(step, params, xs, carry, reverse=reverse, lengths=lengths, unroll=unroll)


def _lazy_impl(module: str, attr: str) -> Callable:
    """A layer impl living in another module, imported on first call (no import cycle)."""

    def run(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)(*args, **kwargs)

    run.__name__ = attr
    return run


def layer_impl(name: str) -> Callable:
    """The layer implementation called ``name``.

    ``"scan"``: the reference, :func:`scan_layer` over the cell's readable step
    function, differentiated by JAX autodiff.
    ``"manual"``: same forward, but ``jax.grad`` uses the hand-derived BPTT of
    :mod:`lstm_jax.bptt` (a ``jax.custom_vjp``).
    ``"hoisted"``, ``"remat"``: see :mod:`lstm_jax.fast`.
    """
    impls = {
        "scan": _reference_layer,
        "manual": _lazy_impl("bptt", "manual_layer"),
        "hoisted": _lazy_impl("fast", "hoisted_layer"),
        "remat": _lazy_impl("fast", "remat_layer"),
    }
    try:
        return impls[name]
    except KeyError:
        raise ValueError(f"unknown layer impl {name!r}; choose one of {sorted(impls)}") from None


# ---------------------------------------------------------------------------
# Stacks of layers

DIRECTIONS = ("forward", "backward")


def _is_bidirectional(layer_params) -> bool:
    return isinstance(layer_params, dict) and set(layer_params) == set(DIRECTIONS)


def init_stack(
    key: Array,
    cell: str | Cell,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dtype=jnp.float32,
) -> list:
    """Params for :func:`apply_stack`: a list with one entry per layer.

    Each entry is the cell's params dict, or for a bidirectional stack
    ``{"forward": params, "backward": params}``. Layer 0 takes ``input_size``
    features; layer k > 0 takes ``hidden_size`` (``2 * hidden_size`` if
    bidirectional).
    """
    cell = get_cell(cell)
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    layers = []
    in_size = input_size
    for layer_key in jax.random.split(key, num_layers):
        if bidirectional:
            k_f, k_b = jax.random.split(layer_key)
            layers.append(
                {
                    "forward": cell.init(k_f, in_size, hidden_size, dtype),
                    "backward": cell.init(k_b, in_size, hidden_size, dtype),
                }
            )
        else:
            layers.append(cell.init(layer_key, in_size, hidden_size, dtype))
        in_size = hidden_size * (2 if bidirectional else 1)
    return layers


def zeros_stack_carry(cell: str | Cell, params: Sequence, batch_shape: tuple = (), dtype=None) -> list:
    """Zero initial carry for :func:`apply_stack`, mirroring the params structure."""
    cell = get_cell(cell)

    def zeros(p):
        return cell.zeros_carry(cell.hidden_size(p), batch_shape, dtype or p["w_h"].dtype)

    return [
        {d: zeros(p[d]) for d in DIRECTIONS} if _is_bidirectional(p) else zeros(p) for p in params
    ]


def apply_stack(
    cell: str | Cell,
    params: Sequence,
    xs: Array,
    carry: Sequence | None = None,
    *,
    lengths: Array | None = None,
    unroll: int = 1,
    compute_dtype=None,
    dropout: float = 0.0,
    key: Array | None = None,
    impl: str = "scan",
):
    """Run a stack of recurrent layers (from :func:`init_stack`) over ``xs``.

    Args:
        cell: ``"rnn" | "lstm" | "gru"`` or a :class:`~lstm_jax.cells.Cell`.
        params: list of per-layer params (see :func:`init_stack`).
        xs: ``(batch, time, features)`` or ``(time, features)``.
        carry: initial carry per layer, structured like
            :func:`zeros_stack_carry`'s result; zeros if ``None``.
        lengths: ``(batch,)`` real lengths of padded sequences.
        unroll: ``jax.lax.scan`` unroll factor.
        compute_dtype: matmul dtype (e.g. ``jnp.bfloat16``); see :mod:`lstm_jax.cells`.
        dropout: rate of dropout applied to each layer's output except the last
            (needs ``key``); 0 disables it, e.g. for evaluation.
        key: ``jax.random`` key for dropout.
        impl: how each layer runs over time; see :func:`layer_impl`.

    Returns:
        ``(ys, final_carry)``: ``ys`` is the last layer's outputs,
        ``(batch, time, H)`` or ``(batch, time, 2H)`` if bidirectional;
        ``final_carry`` is a list like ``carry``.
    """
    cell = get_cell(cell)
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError(
            "params must be a non-empty list of per-layer params (see init_stack); "
            f"got {type(params).__name__}"
        )
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3):
        raise ValueError(
            f"xs must have shape (batch, time, features) or (time, features); got shape {xs.shape}"
        )
    first = params[0]["forward"] if _is_bidirectional(params[0]) else params[0]
    if xs.dtype != first["w_x"].dtype:
        raise TypeError(
            f"xs dtype {xs.dtype} differs from the params dtype {first['w_x'].dtype}; "
            "cast one of them (use compute_dtype for reduced-precision matmuls)"
        )
    batch_shape = xs.shape[:-2]
    if carry is None:
        carry = zeros_stack_carry(cell, params, batch_shape)
    elif len(carry) != len(params):
        raise ValueError(f"carry has {len(carry)} layers but params has {len(params)}")
    if dropout and key is None:
        raise ValueError("dropout > 0 needs a jax.random key")
    run = functools.partial(
        layer_impl(impl), cell, lengths=lengths, unroll=unroll, compute_dtype=compute_dtype
    )

    finals = []
    h = xs
    for k, (layer_params, layer_carry) in enumerate(zip(params, carry)):
        if _is_bidirectional(layer_params):
            ys_f, fin_f = run(layer_params["forward"], h, layer_carry["forward"])
            ys_b, fin_b = run(layer_params["backward"], h, layer_carry["backward"], reverse=True)
            h = jnp.concatenate([ys_f, ys_b], axis=-1)
            finals.append({"forward": fin_f, "backward": fin_b})
        else:
            h, fin = run(layer_params, h, layer_carry)
            finals.append(fin)
        if dropout and k < len(params) - 1:
            key, sub = jax.random.split(key)
            keep = jax.random.bernoulli(sub, 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
    return h, finals
