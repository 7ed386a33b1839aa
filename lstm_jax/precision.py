"""Precision policies: what runs in reduced precision, and what never does.

A policy names the dtype of the *matmul operands*; everything that
accumulates stays float32 (or the params' dtype):

=========  =====================================================================
``fp32``   every product in the params' dtype (float32)
``bf16``   matmul operands bfloat16 with float32 accumulation
           (``preferred_element_type``), in the forward and in the
           hand-derived backward alike; parameters, optimizer state, the
           recurrent carry, gate non-linearities, losses and gradients stay
           float32 (master weights). On CPUs with AMX-BF16 and on GPUs with
           tensor cores the products run at the bf16 rate.
=========  =====================================================================

Checkpoints hold float32 parameters under either policy, so a run trained in
one precision resumes or evaluates in the other.

Where a policy applies: ``layer_impl(name, precision="bf16")`` binds it to a
layer implementation, and every model function takes the equivalent
``compute_dtype=`` (:attr:`Precision.compute_dtype`); the experiment scripts'
``--precision`` flag sets both from one name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

__all__ = ["PRECISIONS", "Precision", "get_precision"]


@dataclasses.dataclass(frozen=True)
class Precision:
    """One policy: ``name``, the matmul operand dtype (``None``: the params' dtype) and a summary."""

    name: str
    compute_dtype: Any
    summary: str

    def describe(self) -> str:
        return f"{self.name} ({self.summary})"


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", None, "all products in float32"),
        Precision(
            "bf16", jnp.bfloat16,
            "matmul operands bfloat16, float32 accumulation; params, optimizer state, carry and gates float32",
        ),
    )
}


def get_precision(precision: str | Precision | None) -> Precision:
    """The policy called ``precision`` (``None``: ``"fp32"``); a :class:`Precision` is returned as is."""
    if isinstance(precision, Precision):
        return precision
    if precision is None:
        return PRECISIONS["fp32"]
    try:
        return PRECISIONS[precision]
    except (KeyError, TypeError):
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}") from None
