"""Flax NNX modules: the library's recurrent stacks as layers of a Flax model.

``RNN``, ``LSTM``, ``GRU``, ``MinGRU`` and ``MinLSTM`` are ``nnx.Module``\\ s.
Each holds the params of :func:`lstm_jax.init_stack` as ``nnx.Param``\\ s
(one per array, at the same path: ``layers[k]["w_x"]``, or
``layers[k]["forward"]["w_x"]`` when bidirectional) and runs them with
:func:`lstm_jax.apply_stack`, so every layer implementation of
:data:`lstm_jax.impls.IMPLS` runs underneath::

    h^0 = x;   h^k = layer_k(h^{k-1})   (bidirectional: [fwd_k(h^{k-1}) | bwd_k(h^{k-1})])
    y = h^{num_layers},  dropout(rate) on every h^k but the last while training

Shapes: ``x`` is ``(batch, time, in_features)``; ``y`` is
``(batch, time, hidden_size)`` (``2 * hidden_size`` if bidirectional). The
carry is the library's stack carry (:func:`lstm_jax.zeros_stack_carry`): a
list with one entry per layer (an :class:`lstm_jax.LSTMCarry` for the LSTM,
the hidden state ``(batch, hidden_size)`` for the others; a
``{"forward", "backward"}`` dict per bidirectional layer).

Example (a two-layer LSTM inside a Flax model)::

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from lstm_jax.flax import LSTM
    >>> lstm = LSTM(3, 8, num_layers=2, impl="manual", rngs=nnx.Rngs(0))
    >>> y, carry = lstm(jnp.ones((4, 10, 3)), lengths=jnp.array([10, 7, 3, 1]), return_carry=True)
    >>> y.shape, carry[1].hidden.shape
    ((4, 10, 8), (4, 8))
    >>> [{k: v.shape for k, v in layer.items()} for layer in lstm.params][0]   # the library's params
    {'w_x': (3, 32), 'w_h': (8, 32), 'b': (32,)}
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from . import impls
from .cells import get_cell
from .layers import apply_stack, init_stack, zeros_stack_carry

Array = jax.Array

__all__ = ["RecurrentStack", "RNN", "LSTM", "GRU", "MinGRU", "MinLSTM"]


def _to_variables(tree):
    """The library's params (lists of dicts of arrays) as NNX containers of ``nnx.Param``."""
    if isinstance(tree, (list, tuple)):
        return nnx.List([_to_variables(t) for t in tree])
    if isinstance(tree, dict):
        return nnx.Dict({k: _to_variables(v) for k, v in tree.items()})
    return nnx.Param(tree)


def _to_arrays(node):
    """The inverse of :func:`_to_variables`: plain lists and dicts of the Params' arrays."""
    if isinstance(node, nnx.List):
        return [_to_arrays(n) for n in node]
    if isinstance(node, nnx.Dict):
        return {k: _to_arrays(v) for k, v in node.items()}
    return node[...]


def _assign(node, tree) -> None:
    """Write the arrays of ``tree`` into the Params of ``node`` (same structure)."""
    if isinstance(node, nnx.List):
        for n, t in zip(node, tree):
            _assign(n, t)
    elif isinstance(node, nnx.Dict):
        for k, n in node.items():
            _assign(n, tree[k])
    else:
        node.set_value(jnp.asarray(tree))


def _shapes(tree) -> Any:
    return jax.tree_util.tree_map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype).name), tree)


class RecurrentStack(nnx.Module):
    """A stack of recurrent layers of one cell (the subclasses name it), as an ``nnx.Module``.

    Args:
        in_features: features of the input ``x`` (its last axis).
        hidden_size: hidden size ``H`` of every layer.
        num_layers: stacked layers; layer ``k > 0`` reads layer ``k-1``'s outputs.
        bidirectional: each layer runs forward and backward and concatenates the two.
        dropout: rate of dropout on each layer's output but the last, while training
            (``model.train()``, the default; ``model.eval()`` or ``deterministic=True`` turns it off).
        impl: the layer implementation: a name in :data:`lstm_jax.impls.IMPLS`;
            ``None`` is the library's default for this cell on this backend
            (:func:`lstm_jax.impls.default_impl`, picked per call); :attr:`resolved_impl` says which runs.
        precision: a policy of :mod:`lstm_jax.precision` (``"fp32"``, ``"bf16"``);
            ``None``: the implementation's own (fp32).
        param_dtype: dtype of the params.
        rngs: ``nnx.Rngs``: ``params`` (or ``default``) initialises the weights; with
            ``dropout > 0`` and more than one layer, ``dropout`` (or ``default``) draws the masks.
    """

    cell: ClassVar[str]

    def __init__(
        self,
        in_features: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        impl: str | None = None,
        precision: str | None = None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"{type(self).__name__}: dropout must be a rate in [0, 1), got {dropout!r}")
        self.in_features = in_features
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.dropout = float(dropout)
        self.impl = impl
        self.precision = precision
        self.deterministic = False  # flipped by model.eval() / model.train()
        impls.layer_impl(impl, precision=precision)  # refuse an unknown name or policy now, not at the first call
        params = init_stack(
            rngs.params(), self.cell, in_features, hidden_size,
            num_layers=num_layers, bidirectional=self.bidirectional, dtype=param_dtype,
        )
        self.layers = _to_variables(params)
        self.rngs: nnx.RngStream | None = nnx.data(None)
        if self.dropout and num_layers > 1:
            try:
                self.rngs = rngs["dropout"].fork()
            except KeyError:
                raise ValueError(f"{type(self).__name__}: dropout={dropout} needs rngs with a 'dropout' (or 'default') "
                                 "stream, e.g. nnx.Rngs(params=0, dropout=1)") from None

    @property
    def resolved_impl(self) -> str:
        """The name of the layer implementation that runs: ``impl``, or the library's default for this cell and
        precision here (:func:`lstm_jax.impls.default_impl`; with ``lengths``, a default ``onednn`` runs ``manual``)."""
        return self.impl if self.impl is not None else impls.default_impl(self.cell, precision=self.precision)

    @property
    def out_features(self) -> int:
        """Features of the outputs: ``hidden_size``, doubled if bidirectional."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def params(self) -> list:
        """The params as :func:`lstm_jax.init_stack` builds them (a list of dicts of arrays)."""
        return _to_arrays(self.layers)

    def set_params(self, params: Sequence) -> None:
        """Replace every weight by the same-shaped array of ``params`` (the library's layout, e.g. converted ones)."""
        if _shapes(list(params)) != _shapes(self.params):
            raise ValueError(f"{type(self).__name__}.set_params: params of shapes {_shapes(list(params))} do not "
                             f"match the module's {_shapes(self.params)}")
        _assign(self.layers, list(params))  # in place: an optimizer or a split graph keeps the same Params

    def initial_carry(self, batch_size: int) -> list:
        """The zero carry for ``batch_size`` sequences (:func:`lstm_jax.zeros_stack_carry`)."""
        return zeros_stack_carry(self.cell, self.params, (batch_size,))

    def __call__(
        self,
        x: Array,
        carry: Sequence | None = None,
        *,
        lengths: Array | None = None,
        return_carry: bool = False,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | Array | None = None,
    ) -> Array | tuple[Array, list]:
        """Run the stack over ``x`` ``(batch, time, in_features)``.

        ``carry``: the initial carry (see :meth:`initial_carry`), zeros if ``None``.
        ``lengths``: ``(batch,)`` real lengths of padded sequences; outputs past them are 0
        and the final carry is the one after each sequence's last real step.
        ``return_carry``: also return the final carry. ``deterministic``: no dropout
        (default: ``model.eval()``'s setting). ``rngs``: a key or ``nnx.Rngs`` for this call's dropout.

        Returns ``y`` ``(batch, time, out_features)``, or ``(y, final_carry)`` with ``return_carry``.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        rate = 0.0 if deterministic or self.num_layers == 1 else self.dropout
        key = self._dropout_key(rngs) if rate else None
        run = impls.layer_impl(self.impl, precision=self.precision)  # None: the library's default, picked per call
        ys, final = apply_stack(get_cell(self.cell), self.params, x, carry, lengths=lengths, dropout=rate, key=key,
                                impl=run)
        return (ys, final) if return_carry else ys


    def _dropout_key(self, rngs: nnx.Rngs | Array | None) -> Array:
        """This call's dropout key: from ``rngs`` if given, else the next of the module's own stream."""
        if isinstance(rngs, nnx.Rngs):
            return rngs["dropout"]()
        if rngs is not None:
            return rngs
        if self.rngs is None:  # only a module built without dropout has no stream, and it never asks
            raise ValueError(f"{type(self).__name__}: dropout needs rngs")
        return self.rngs()


class RNN(RecurrentStack):
    """Elman RNN stack: ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)`` (:mod:`lstm_jax.cells.rnn`)."""

    cell = "rnn"


class LSTM(RecurrentStack):
    """LSTM stack (:mod:`lstm_jax.cells.lstm`); its carry is an :class:`lstm_jax.LSTMCarry` per layer."""

    cell = "lstm"


class GRU(RecurrentStack):
    """GRU stack (:mod:`lstm_jax.cells.gru`, the cuDNN / PyTorch form)."""

    cell = "gru"


class MinGRU(RecurrentStack):
    """minGRU stack (:mod:`lstm_jax.cells.min_gru`): gates read only the input, so ``impl="parallel"`` runs it."""

    cell = "min_gru"


class MinLSTM(RecurrentStack):
    """minLSTM stack (:mod:`lstm_jax.cells.min_lstm`): gates read only the input, so ``impl="parallel"`` runs it."""

    cell = "min_lstm"
