"""Running cells over sequences: the user-facing layer API.

Layout is batch-major everywhere the user sees it: ``xs`` is
``(batch, time, features)`` (as ``torch.nn.LSTM(batch_first=True)`` and Flax
``nn.RNN``); a single sequence ``(time, features)`` works too.

* :func:`scan_layer` runs one step function in one direction (the one scan,
  :func:`lstm_jax.impls.scan.scan_layer`; a registered cell's step runs the
  default impl for that cell): optional ``reverse``, per-example ``lengths``
  for padded batches, ``unroll``.
* :func:`init_stack` / :func:`apply_stack` compose layers: the output
  sequence of layer k is the input of layer k+1, optionally bidirectional
  (forward and reverse outputs concatenated on the feature axis) and with
  dropout between layers. Each layer runs with one of the implementations of
  :mod:`lstm_jax.impls`, named by ``impl=``; ``impl=None`` (the default) is
  the fastest here by a fixed rule (:func:`lstm_jax.impls.default_impl`).

Cells (``CELLS``): ``rnn``, ``lstm``, ``gru``, ``min_gru``, ``min_lstm``.
Implementations (``IMPLS``): ``scan``, ``hoisted``, ``manual``, ``remat``,
``parallel``, ``deer``, ``cudnn``, ``onednn``.
(``tests/test_docs.py`` checks these two lists against the registries.)

Padded batches (``lengths``): for example ``b`` only steps ``t < lengths[b]``
are real. Past them the carry is frozen and outputs are zero, so the final
carry is the carry after the last real step. In the reverse direction each
sequence is read from its own last real step back to 0 (not from the padding),
and outputs are returned in the original time order (:mod:`lstm_jax.sequence`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from .cells import Cell, cell_of_step, get_cell
from .impls import LayerImpl, layer_impl
from .impls.scan import scan_layer as scan_reference
from .stack import DIRECTIONS, init_stack, is_bidirectional, run_stack, zeros_stack_carry

Array = jax.Array

__all__ = ["scan_layer", "init_stack", "count_params", "hidden_for_params", "zeros_stack_carry", "apply_stack", "layer_impl", "DIRECTIONS", "is_bidirectional"]


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
    impl: str | LayerImpl | None = None,
    checked_lengths: bool = False,
) -> tuple[Array, list]:
    """Run a stack of recurrent layers (from :func:`init_stack`) over ``xs``.

    Args:
        cell: a name in :data:`lstm_jax.cells.CELLS` or a :class:`~lstm_jax.cells.Cell`.
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
        impl: how each layer runs over time: ``None`` (the default), the
            fastest impl for the call here by a fixed rule
            (:func:`lstm_jax.impls.default_impl`: ``onednn`` on an x86-64 CPU,
            else ``manual``; same results as ``"scan"``, first-order gradients);
            a name in :data:`lstm_jax.impls.IMPLS` (``"scan"``: the reference,
            also for ``jax.jvp`` and higher derivatives), or
            ``layer_impl(name, **options)`` (e.g. ``layer_impl("remat", segment=32)``).
        checked_lengths: under ``jit``, check ``lengths`` against ``[0, time]``
            with ``checkify`` instead of clipping them (a debug mode; run the
            function through :func:`lstm_jax.sequence.with_length_checks`).

    Returns:
        ``(ys, final_carry)``: ``ys`` is the last layer's outputs,
        ``(batch, time, H)`` or ``(batch, time, 2H)`` if bidirectional;
        ``final_carry`` is a list like ``carry``.

    Example (a padded batch through a bidirectional LSTM layer, hand-derived BPTT)::

        >>> import jax, jax.numpy as jnp
        >>> from lstm_jax import apply_stack, init_stack
        >>> params = init_stack(jax.random.PRNGKey(0), "lstm", input_size=3, hidden_size=4, bidirectional=True)
        >>> xs = jnp.ones((2, 5, 3))                                # (batch, time, features)
        >>> ys, finals = apply_stack("lstm", params, xs, lengths=jnp.array([5, 2]), impl="manual")
        >>> ys.shape                                                # forward and backward outputs
        (2, 5, 8)
        >>> bool(jnp.all(ys[1, 2:] == 0))                           # zero past each length
        True
    """
    cell = get_cell(cell)
    run = layer_impl(impl)
    xs = jnp.asarray(xs)
    if xs.ndim not in (2, 3):
        raise ValueError(
            f"xs must have shape (batch, time, features) or (time, features); got shape {xs.shape}"
        )
    if carry is None and isinstance(params, (list, tuple)):
        carry = zeros_stack_carry(cell, params, xs.shape[:-2])
    if dropout and key is None:
        raise ValueError("dropout > 0 needs a jax.random key")
    dropout_key = [key]  # split once per layer, in order (the sequence of masks is part of the results)

    def layer(p, h, c, reverse):
        ys, final = run(
            cell, p, h, c, reverse=reverse, lengths=lengths, unroll=unroll, compute_dtype=compute_dtype,
            checked_lengths=checked_lengths,
        )
        return ys, final, None

    def drop(k, h):
        dropout_key[0], sub = jax.random.split(dropout_key[0])
        keep = jax.random.bernoulli(sub, 1.0 - dropout, h.shape)
        return jnp.where(keep, h / (1.0 - dropout), 0.0)

    ys, finals, _ = run_stack(layer, params, xs, carry, between=drop if dropout else None)
    return ys, finals


def scan_layer(
    step: Callable,
    params,
    xs: Array,
    carry,
    *,
    reverse: bool = False,
    lengths: Array | None = None,
    unroll: int = 1,
    impl: str | LayerImpl | None = None,
) -> tuple[Array, object]:
    """Run ``step(params, carry, x_t) -> (carry, y_t)`` over the time axis of ``xs``.

    Args:
        step: a step function: a registered cell's (``lstm_step``, ``LSTM.step``,
            or a ``functools.partial`` of one binding ``compute_dtype``) or your own.
        params: the step's params pytree.
        xs: ``(batch, time, features)``, or ``(time, features)`` for one sequence.
        carry: initial carry with leading shape ``(batch,)`` (or none for one
            sequence); it may be a trainable parameter.
        reverse: read the sequence from the end; outputs stay in input order.
        lengths: ``(batch,)`` int, real length of each padded sequence.
        unroll: passed to ``jax.lax.scan``.
        impl: ``None`` (default): a registered cell's step runs the impl
            :func:`lstm_jax.impls.default_impl` picks for that cell (the same
            results), any other step ``jax.lax.scan``; ``"scan"``: always
            ``jax.lax.scan`` of ``step`` (the reference); another impl name or
            :func:`layer_impl` runs that impl of the step's cell.

    Returns:
        ``(ys, final_carry)``: ``ys`` is ``(batch, time, H)`` (zero past each
        length), ``final_carry`` the carry after each sequence's last real step.

    Example::

        >>> import jax, jax.numpy as jnp
        >>> from lstm_jax import init_lstm, lstm_step, lstm_zeros_carry, scan_layer
        >>> params = init_lstm(jax.random.PRNGKey(0), 3, 4)
        >>> ys, final = scan_layer(lstm_step, params, jnp.ones((2, 5, 3)), lstm_zeros_carry(4, (2,)))
        >>> ys.shape
        (2, 5, 4)
    """
    found = cell_of_step(step)
    if (impl is None and found is None) or impl == "scan":
        return scan_reference(step, params, xs, carry, reverse=reverse, lengths=lengths, unroll=unroll)
    if found is None:
        raise ValueError(
            f"scan_layer: impl {getattr(impl, 'name', impl)!r} runs a registered cell's step (lstm_step, LSTM.step, "
            f"...); {step!r} is none of them: leave impl=None or pass impl='scan' for your own step function"
        )
    cell, compute_dtype = found
    return layer_impl(impl)(cell, params, xs, carry, reverse=reverse, lengths=lengths, unroll=unroll,
                            compute_dtype=compute_dtype)


def count_params(params) -> int:
    """Number of scalars in a params pytree (arrays or ``jax.ShapeDtypeStruct``s)."""
    return sum(int(math.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


def hidden_for_params(make_params: Callable[[int], object], target: int, *, max_hidden: int = 1 << 16) -> int:
    """The largest hidden size ``H`` whose ``make_params(H)`` has at most ``target`` scalars.

    ``make_params(H)`` builds the whole model's params for hidden size ``H``
    (e.g. ``lambda H: init_stack(key, "min_gru", I, H, num_layers=2)``); it is
    only traced (``jax.eval_shape``), so nothing is allocated. Used to compare
    cells at equal parameter count (a minGRU has ``2H(I+1)`` params per layer,
    an LSTM ``4H(I+H+1)``). The count must grow with ``H``.
    """
    def count(hidden: int) -> int:
        return count_params(jax.eval_shape(lambda: make_params(hidden)))

    if count(1) > target:
        raise ValueError(f"even hidden size 1 has {count(1)} params, more than the target {target}")
    lo, hi = 1, 2
    while hi <= max_hidden and count(hi) <= target:
        lo, hi = hi, 2 * hi
    hi = min(hi, max_hidden + 1)
    while hi - lo > 1:  # count(lo) <= target < count(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= target else (lo, mid)
    return lo
