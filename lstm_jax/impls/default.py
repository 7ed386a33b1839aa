"""The default layer implementation: a fixed rule that picks the fastest impl here, never by timing.

``apply_stack``, ``scan_layer`` and the model helpers run with ``impl=None`` by
default, which means :func:`default_impl`: a pure function of the backend, the
cell, the precision asked for, the CPU's flags and what is installed. The same
call on the same machine always runs the same code path (a timing at start-up
could pick another one under load), and the rule never changes the precision:
a float32 call stays float32, bf16 stays a choice (``compute_dtype`` or
``layer_impl(..., precision="bf16")``).

=========  ======================  ==========  ====================================
backend    cell                    precision   default
=========  ======================  ==========  ====================================
cpu        lstm, gru, rnn          fp32        ``onednn`` (where it runs), else ``manual``
cpu        lstm, rnn               bf16        ``onednn`` (CPU with bf16 dots), else ``manual``
cpu        gru                     bf16        ``manual`` (oneDNN 3.2's bf16 GRU is its slow one)
cpu        min_gru, min_lstm       any         ``manual``
gpu / tpu  min_gru, min_lstm       any         ``parallel``
gpu / tpu  lstm, gru, rnn          any         ``manual``
any        a cell without a hand   any         ``scan``
           backward (your own)
=========  ======================  ==========  ====================================

Why (docs/performance.md has the measured tables): on the 2-core Zen 4 CPU
of the records, ``onednn`` was the fastest library row at 5 of 5 benchmark
sizes for the fp32 LSTM and GRU and 4 of 5 for the fp32 RNN
(``results/benchmark_onednn_turns.json``), ``manual`` the fastest without it
(``results/benchmark.json``); on an H200 ``manual`` was within 8% of ``cudnn``
at B=256 and 2x faster at B=16, and ``parallel`` 35-52x the sequential LSTM
at T=1024-4096 (docs/gpu.md).

A call the rule's pick cannot run exactly as asked runs the next best impl
that can: per-example ``lengths`` (oneDNN has none), parameters that are not
float32 (oneDNN keeps float32 master weights) or a ``compute_dtype`` other
than float32/bfloat16 go to ``manual``. Every pick computes what ``scan``
computes (outputs, final carry and gradients; ``tests/test_impls.py``). The
fused and hand-derived impls define first-order reverse-mode gradients only:
for ``jax.jvp``, ``jax.jacfwd`` or second derivatives pass ``impl="scan"``.

Example::

    >>> from lstm_jax.impls import default_impl
    >>> default_impl("lstm", backend="gpu")
    'manual'
    >>> default_impl("min_gru", backend="gpu")
    'parallel'
    >>> default_impl("lstm", backend="cpu", onednn=True)
    'onednn'
    >>> default_impl("gru", backend="cpu", precision="bf16", onednn=True, bf16_dots=True)
    'manual'
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..cells import Cell, get_cell
from ..precision import get_precision
from .onednn import cpu_has_bf16
from .onednn import supports as onednn_supports
from .onednn import unavailable_reason as onednn_unavailable

#: Cells whose bf16 run oneDNN has a fast kernel for (its bf16 linear-before-reset GRU runs a reference path).
ONEDNN_BF16_FAST = ("lstm", "rnn")


def default_impl(
    cell: str | Cell,
    *,
    backend: str | None = None,
    precision: str | None = None,
    onednn: bool | None = None,
    bf16_dots: bool | None = None,
) -> str:
    """The name of the impl ``impl=None`` runs for ``cell`` (the table in the module docstring): nothing timed.

    Args:
        cell: a cell name or :class:`~lstm_jax.cells.Cell`.
        backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; default ``jax.default_backend()``.
        precision: the policy asked for (``"fp32"``, the default, or ``"bf16"``); never changed.
        onednn: whether ``impl="onednn"`` runs here; default: it is installed, built and loaded
            (the first call builds its C++ library, once per machine).
        bf16_dots: whether the CPU has bfloat16 dot products; default: its ``/proc/cpuinfo`` flags.
            ``backend``, ``onednn`` and ``bf16_dots`` let the rule be read for another machine.

    Returns:
        a key of :data:`lstm_jax.impls.IMPLS`.
    """
    cell = get_cell(cell)
    backend = jax.default_backend() if backend is None else backend
    policy = get_precision(precision).name
    if cell.backward_step is None and cell.linear_recurrence is None:
        return "scan"  # your own cell without a hand backward: only the autodiff impls run it
    if backend != "cpu":
        return "parallel" if cell.linear_recurrence is not None else "manual"
    if onednn_supports(cell) and _onednn_here(onednn):
        if policy == "fp32":
            return "onednn"
        if cell.name in ONEDNN_BF16_FAST and (cpu_has_bf16() if bf16_dots is None else bf16_dots):
            return "onednn"
    return "manual" if cell.backward_step is not None else "scan"


def _onednn_here(onednn: bool | None) -> bool:
    return onednn_unavailable() is None if onednn is None else onednn


def default_for_call(cell: Cell, dtype, compute_dtype, *, lengths: bool) -> str:
    """:func:`default_impl` for one call: its params' ``dtype``, its ``compute_dtype`` and whether it has ``lengths``.

    The pick for the call's precision, unless it cannot run this call exactly (module docstring): then ``manual``.
    """
    compute = None if compute_dtype is None else np.dtype(compute_dtype)
    if compute is None or compute == np.dtype(dtype):
        precision = "fp32"
    elif compute == np.dtype(jnp.bfloat16):
        precision = "bf16"
    else:
        precision = None  # a dtype no policy names (float16, ...): manual runs any
    name = default_impl(cell, precision=precision or "fp32")
    if name == "onednn" and (lengths or precision is None or np.dtype(dtype) != np.float32):
        return "manual"
    return name
