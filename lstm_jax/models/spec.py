"""What a recurrent model is: :class:`RecurrentSpec`, one frozen record carried by models, scripts and checkpoints.

A model's params are a plain pytree; what they mean (which cell, how many layers, which
way they read, how they run over time) is the spec. Every model function takes the spec
instead of loose ``cell=``, ``impl=``, ``unroll=``, ``dropout=`` arguments, and every
checkpoint the training scripts write records ``spec.to_dict()`` in its metadata, so a
checkpoint says what it is: :meth:`RecurrentSpec.from_dict` rebuilds the spec, and the
spec alone runs the restored params (nothing is guessed from shapes).

>>> import jax
>>> spec = RecurrentSpec(cell="gru", hidden=8, layers=2)
>>> stack = spec.init(jax.random.PRNGKey(0), input_size=3)
>>> ys, finals = spec.run(stack, jax.numpy.ones((4, 5, 3)))
>>> ys.shape, RecurrentSpec.from_dict(spec.to_dict()) == spec
((4, 5, 8), True)
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import jax
import jax.numpy as jnp

from ..cells import get_cell
from ..impls import IMPLS, LayerImpl, layer_impl
from ..layers import apply_stack, init_stack, zeros_stack_carry
from ..precision import get_precision

__all__ = ["RecurrentSpec"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RecurrentSpec:
    """A stack of recurrent layers, as data: hashable (a static argument under ``jit``) and JSON-able.

    Attributes:
        cell: a name in :data:`lstm_jax.cells.CELLS` (``"lstm"``, ``"gru"``, ``"rnn"``, ``"min_gru"``, ``"min_lstm"``).
        hidden: hidden size ``H`` of every layer (each direction).
        layers: number of stacked layers.
        bidirectional: each layer reads both ways; outputs are ``2H`` wide.
        impl: how each layer runs over time: ``None`` (the default), the fastest impl for the call here by a
            fixed rule (:func:`lstm_jax.impls.default_impl`), or a name in :data:`lstm_jax.impls.IMPLS`
            (``"scan"``: the reference).
        precision: the matmul policy (:data:`lstm_jax.precision.PRECISIONS`: ``"fp32"``, ``"bf16"``).
        dropout: rate between layers (and where a model says, before its readout); training only.
        unroll: ``jax.lax.scan`` unroll factor.
    """

    cell: str = "lstm"
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = False
    impl: str | None = None
    precision: str = "fp32"
    dropout: float = 0.0
    unroll: int = 1

    def __post_init__(self):
        get_cell(self.cell)  # one line naming the known cells
        get_precision(self.precision)
        for name in ("hidden", "layers", "unroll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not _is_integral(value) or operator.index(value) < 1:
                raise ValueError(f"RecurrentSpec.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, operator.index(value))
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"RecurrentSpec.bidirectional must be True or False, got {self.bidirectional!r}")
        if self.impl is not None and (not isinstance(self.impl, str) or self.impl not in IMPLS):
            raise ValueError(f"RecurrentSpec.impl must be None (the default rule) or one of {sorted(IMPLS)}, "
                             f"got {self.impl!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RecurrentSpec.dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))

    # ------------------------------------------------------------------ as data

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-able dict (what checkpoints record under ``metadata["model"]["spec"]``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RecurrentSpec":
        """The spec of :meth:`to_dict`'s dict; an unknown key is an error naming it (a newer or foreign record)."""
        if not isinstance(data, dict):
            raise ValueError(f"a RecurrentSpec record must be a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"RecurrentSpec record has unknown keys {unknown}; known: "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        return cls(**data)

    def replace(self, **changes: Any) -> "RecurrentSpec":
        """A copy with ``changes`` (validated like a new spec)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ as a layer

    @property
    def features(self) -> int:
        """Width of the stack's outputs: ``H``, or ``2H`` when bidirectional."""
        return self.hidden * (2 if self.bidirectional else 1)

    @property
    def layer(self) -> LayerImpl:
        """The bound layer implementation (``impl`` with ``precision``; ``None``: the default rule's, per call),
        as :func:`apply_stack` takes it."""
        return layer_impl(self.impl, precision=self.precision)

    def init(self, key: Array, input_size: int, dtype: Any = jnp.float32) -> list:
        """The stack's params: :func:`lstm_jax.layers.init_stack` with this spec's cell, sizes and directions."""
        return init_stack(key, self.cell, input_size, self.hidden, num_layers=self.layers,
                          bidirectional=self.bidirectional, dtype=dtype)

    def zeros_carry(self, stack: list, batch_shape: tuple = ()) -> list:
        """Zero initial carries for ``stack`` (from :meth:`init`) and a batch of ``batch_shape``."""
        return zeros_stack_carry(self.cell, stack, batch_shape)

    def run(self, stack: list, xs: Array, carry: list | None = None, *, lengths: Array | None = None,
            key: Array | None = None, train: bool = False, compute_dtype: Any = None) -> tuple[Array, list]:
        """``(ys (B, T, features), final carries)`` of the stack over ``xs`` ``(B, T, F)``.

        Dropout between layers only with ``train=True`` (and then ``key`` is needed when ``dropout > 0``);
        ``compute_dtype`` overrides the precision policy's matmul dtype (e.g. the bf16 policy of a classifier
        that casts its input itself).
        """
        dropout = self.dropout if train else 0.0
        return apply_stack(self.cell, stack, xs, carry, lengths=lengths, unroll=self.unroll,
                           compute_dtype=compute_dtype, dropout=dropout, key=key if dropout else None,
                           impl=self.layer)


def _is_integral(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
