"""``"onednn"``: oneDNN's fused RNN primitives on the CPU, through XLA's FFI, behind the library's layer interface.

oneDNN (the library ``torch.nn.LSTM`` runs on a CPU) keeps each step's gate
maths with its recurrent matmul while the data is in cache; XLA:CPU runs them
as separate kernels. This impl calls oneDNN's forward-training and backward
primitives as two XLA FFI custom calls (C++ in ``_onednn/ffi_rnn.cc``, built on
first use: :mod:`lstm_jax.impls._onednn.build`), wrapped in a ``jax.custom_vjp``:
the forward keeps oneDNN's workspace as the residual, the backward returns
gradients for the inputs, the initial carry and every parameter.

Cells, and how the library's params map onto oneDNN's (``ldigo`` weights are
the library's ``(I, G*H)`` matrices unchanged; the C++ side reorders them into
the layouts oneDNN chooses, :func:`weight_layout`):

* ``lstm``: ``vanilla_lstm``, gates ``[i|f|g|o]`` in both (oneDNN: i, f, c~, o):
  ``w_x``, ``w_h``, ``b`` as they are.
* ``gru``: ``lbr_gru`` (linear-before-reset), which is the library's
  torch/cuDNN GRU: ``n = tanh(a_n + r ⊙ (h w_hn + b_hn))``. oneDNN orders the
  gates ``[u|r|o]`` = the library's ``[z|r|n]`` and has four biases
  ``[b_u|b_r|b_o|b_u']``; so ``b = [b_x[z]+b_h[z] | b_x[r]+b_h[r] | b_x[n] | b_h[n]]``
  (oneDNN's plain ``vanilla_gru`` puts the reset gate before the matmul, a
  different cell). The conversion is JAX, so autodiff maps the gradients back.
* ``rnn``: ``vanilla_rnn`` with ``eltwise_tanh``: ``w_x``, ``w_h``, ``b`` as they are.
* any other cell is refused by :func:`supports`.

Semantics, as every impl: the initial carry is an input and the final carry an
output (both differentiable); ``reverse`` is oneDNN's ``unidirectional_right2left``
(outputs in input order, final carry after step 0); bidirectional stacks are two
single-direction layers (:mod:`lstm_jax.stack`); ``unroll`` means nothing to a
fused kernel and is ignored. oneDNN has no per-example sequence lengths, so a
call with ``lengths`` runs the ``"manual"`` core instead (the same equations
with the hand BPTT; exact, not fused) and warns (once per calling line, Python's default).

Precision: float32 params. ``fp32``: every product in float32. ``bf16``
(``layer_impl("onednn", precision="bf16")``): oneDNN's bf16 RNN, i.e. inputs,
hidden states and weights in bfloat16 as matmul operands, float32 accumulation,
float32 gates, cell state and bias; the layer's outputs and final ``h`` come back
as float32 holding bfloat16-rounded values (oneDNN stores ``h_t`` in bf16: it is
the next step's matmul operand); gradients are float32 (master weights). bf16
needs a CPU with AVX512-BF16 or AMX (:func:`cpu_has_bf16`); elsewhere the
policy is absent from the impl's ``precisions`` and a bf16 call is refused.
With this oneDNN (3.2) the LSTM and the RNN have brgemm bf16 kernels; the bf16
(linear-before-reset) GRU runs its reference bf16 path, whose backward can be
slower than fp32's.

Threads: the oneDNN wheel (``onednn-cpu-gomp``) threads with GNU OpenMP, so
``OMP_NUM_THREADS`` (set before the process starts) sets the count, as it does
for ``torch`` (whose ``torch.set_num_threads`` is per-library); the default is
every core the process may use. Every primitive runs on one thread owned by
the library (not on the XLA thread that made the call: OpenMP pools per calling
thread made its per-step barriers sleep; docs/onednn.md#threads), so calls are
serialised. Primitives are created once per (cell, direction, dtype, T, B, I, H),
on that thread, and reused (the 64 most recently used; :func:`clear` frees them). A
process forked after a call gets a fresh thread on its first call.

Input contract (docs/onednn.md#contract): weights, bias and carry are cast to the
kernel's float32 (the outputs and final carry back to the carry's dtype), so any
dtype mix ``scan`` accepts gives its answer; ``B = 0`` returns without calling
oneDNN; the C++ handlers refuse any buffer whose dtype or shape differs from the
plan's with XLA's ``INVALID_ARGUMENT`` error naming it.

Example (``lengths`` omitted: the fused path)::

    import jax, jax.numpy as jnp
    from lstm_jax.cells import get_cell
    from lstm_jax.impls import layer_impl
    cell = get_cell("lstm")
    params = cell.init(jax.random.PRNGKey(0), 8, 16)
    ys, final = layer_impl("onednn")(cell, params, jnp.ones((4, 10, 8)), cell.zeros_carry(16, (4,)))
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..cells.gru import gru_recurrence
from ..cells.lstm import LSTMCarry, lstm_recurrence
from ..cells.rnn import rnn_recurrence
from ._onednn.build import BACKWARD_TARGET, FORWARD_TARGET, OnednnUnavailable, find_onednn, load
from .manual import manual_core

Array = jax.Array

REQUIREMENT = "cells oneDNN has a primitive for (LSTM, linear-before-reset GRU, tanh RNN)"


class Kind(NamedTuple):
    """How one cell maps onto oneDNN: its code in ``ffi_rnn.cc``, params and carry conversions."""

    code: int
    weights: Callable  # params -> (w_layer (I, G*H), w_iter (H, G*H), bias (Gb*H,)) in oneDNN's layout
    split: Callable  # carry -> (h (B, H), c (B, H) or None)
    join: Callable  # (h, c) -> carry


def _plain_weights(params):
    return params["w_x"], params["w_h"], params["b"]


def _to_lbr_gru_order(w: Array) -> Array:
    """The library's GRU blocks ``[r|z|n]`` -> oneDNN's ``[u|r|o]`` = ``[z|r|n]`` along the last axis."""
    r, z, n = jnp.split(w, 3, axis=-1)
    return jnp.concatenate([z, r, n], axis=-1)


def gru_weights(params):
    """Library GRU params -> oneDNN ``lbr_gru``: weights reordered, four biases (module docstring)."""
    bx_r, bx_z, bx_n = jnp.split(params["b_x"], 3)
    bh_r, bh_z, bh_n = jnp.split(params["b_h"], 3)
    bias = jnp.concatenate([bx_z + bh_z, bx_r + bh_r, bx_n, bh_n])
    return _to_lbr_gru_order(params["w_x"]), _to_lbr_gru_order(params["w_h"]), bias


KINDS = {
    lstm_recurrence: Kind(0, _plain_weights, lambda c: (c.hidden, c.cell), lambda h, c: LSTMCarry(hidden=h, cell=c)),
    gru_recurrence: Kind(1, gru_weights, lambda h: (h, None), lambda h, c: h),
    rnn_recurrence: Kind(2, _plain_weights, lambda h: (h, None), lambda h, c: h),
}


def supports(cell) -> bool:
    """The library's LSTM, GRU and Elman RNN: the cells whose equations oneDNN's primitives compute."""
    return cell.recurrence in KINDS


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 dot products (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precisions() -> tuple:
    """``("fp32", "bf16")`` on a CPU with bf16 dot products where oneDNN is installed, else ``("fp32",)``
    (without oneDNN the impl is refused anyway; this keeps precision sweeps from choosing it)."""
    try:
        find_onednn()
    except Exception:  # noqa: BLE001 - never fail the import: unavailable_reason() gives the reason
        return ("fp32",)
    return ("fp32", "bf16") if cpu_has_bf16() else ("fp32",)


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str | None:
    """``None`` where oneDNN runs (a CPU backend, x86-64 Linux, the library built and loaded); else why not."""
    backend = jax.default_backend()
    if backend != "cpu":
        return f"runs on the CPU backend only (jax.default_backend() is {backend!r}); use 'cudnn' or 'manual'"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"needs x86-64 Linux (oneDNN's PyPI wheel); this is {platform.system()} {platform.machine()}"
    try:
        load()
    except OnednnUnavailable as err:
        return str(err)
    return None


def weight_layout() -> str:
    """``"blocked"`` (the default: oneDNN picks the weight layouts, as torch lets it, reordered into before
    each call: brgemm kernels for the bf16 LSTM, padded rows against cache aliasing in fp32) or ``"plain"``
    (ldigo as given). Measured on a 2-core Zen 4 (docs/onednn.md): blocked ran the bf16 LSTM ~1.6-1.9x
    and the fp32 GRU at H=512 ~2x faster than plain, the fp32 LSTM within noise of it.
    ``$LSTM_JAX_ONEDNN_WEIGHTS`` (``plain`` or ``blocked``, read when a function is traced) overrides it."""
    choice = os.environ.get("LSTM_JAX_ONEDNN_WEIGHTS", "")
    if choice not in ("", "plain", "blocked"):
        raise ValueError(f"LSTM_JAX_ONEDNN_WEIGHTS must be 'plain' or 'blocked'; got {choice!r}")
    return choice or "blocked"


def clear() -> None:
    """Free oneDNN's cached plans (primitives and their kernels, at most 64, least recently used evicted
    first) and the pooled scratch memory; the next call of each shape plans it again. Nothing to free
    where the library was never loaded."""
    from ._onednn import build

    if isinstance(build._LOADED.get("result"), build.Library):
        build._LOADED["result"].clear()


def _data_dtype(bf16: bool):
    return jnp.bfloat16 if bf16 else jnp.float32


def _forward_call(code, reverse, bf16, blocked, training, xs_tm, h0, c0, w_layer, w_iter, bias):
    """One FFI call of the forward primitive; returns ``(y, hT, cT, workspace)`` (``y``, ``hT`` in the data dtype)."""
    seq_len, batch, features = xs_tm.shape
    hidden = h0.shape[-1]
    ws_bytes = load().workspace_bytes(code, reverse, bf16, blocked, seq_len, batch, features, hidden)
    data = _data_dtype(bf16)
    out = (
        jax.ShapeDtypeStruct((seq_len, batch, hidden), data),
        jax.ShapeDtypeStruct((batch, hidden), data),
        jax.ShapeDtypeStruct((batch, hidden), jnp.float32),
        jax.ShapeDtypeStruct((ws_bytes if training else 1,), jnp.uint8),
    )
    call = jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")
    return call(
        xs_tm.astype(data), h0.astype(data), c0, w_layer.astype(data), w_iter.astype(data), bias,
        cell=np.int32(code), reverse=bool(reverse), training=bool(training), blocked=blocked,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def fused(code, reverse, bf16, blocked, xs_tm, h0, c0, w_layer, w_iter, bias):
    """oneDNN's layer, one direction, float32 in and out: ``xs_tm (T, B, I)``, ``h0, c0 (B, H)``,
    oneDNN-layout weights -> ``(ys (T, B, H), hT, cT)``; ``bf16`` runs the matmul operands in bfloat16,
    ``blocked`` lets oneDNN choose its weight layouts (:func:`weight_layout`)."""
    y, h_t, c_t, _ = _forward_call(code, reverse, bf16, blocked, False, xs_tm, h0, c0, w_layer, w_iter, bias)
    return y.astype(jnp.float32), h_t.astype(jnp.float32), c_t


def _fused_fwd(code, reverse, bf16, blocked, xs_tm, h0, c0, w_layer, w_iter, bias):
    y, h_t, c_t, ws = _forward_call(code, reverse, bf16, blocked, True, xs_tm, h0, c0, w_layer, w_iter, bias)
    data = _data_dtype(bf16)
    saved = (xs_tm.astype(data), h0.astype(data), c0, w_layer.astype(data), w_iter.astype(data), bias, y, h_t, c_t, ws)
    return (y.astype(jnp.float32), h_t.astype(jnp.float32), c_t), saved


def _fused_bwd(code, reverse, bf16, blocked, saved, cotangents):
    xs, h0, c0, w_layer, w_iter, bias, y, h_t, c_t, ws = saved
    dy, dh_t, dc_t = (ct.astype(jnp.float32) for ct in cotangents)
    f32 = jnp.float32
    out = (
        jax.ShapeDtypeStruct(xs.shape, f32), jax.ShapeDtypeStruct(h0.shape, f32), jax.ShapeDtypeStruct(c0.shape, f32),
        jax.ShapeDtypeStruct(w_layer.shape, f32), jax.ShapeDtypeStruct(w_iter.shape, f32),
        jax.ShapeDtypeStruct(bias.shape, f32),
    )
    call = jax.ffi.ffi_call(BACKWARD_TARGET, out, vmap_method="sequential")
    return call(xs, h0, c0, w_layer, w_iter, bias, y, h_t, c_t, ws, dy, dh_t, dc_t, cell=np.int32(code),
                reverse=bool(reverse), blocked=blocked)


fused.defvjp(_fused_fwd, _fused_bwd)

def _check_dtypes(params, compute_dtype) -> bool:
    """Whether to run bf16: float32 params, ``compute_dtype`` None/float32 (fp32) or bfloat16 (bf16 CPUs only)."""
    dtype = params["w_x"].dtype
    if dtype != jnp.float32:
        raise TypeError(
            f"layer impl 'onednn' runs float32 params (oneDNN's fp32 and bf16 RNNs keep float32 master weights); "
            f"got {dtype}; use the 'bf16' precision policy for bfloat16 matmuls"
        )
    if compute_dtype is None or np.dtype(compute_dtype) == np.float32:
        return False
    if np.dtype(compute_dtype) != jnp.bfloat16:
        raise ValueError(f"layer impl 'onednn' computes in float32 or bfloat16; got compute_dtype {np.dtype(compute_dtype)}")
    if not cpu_has_bf16():
        raise ValueError(
            "layer impl 'onednn' has no bf16 on this CPU (no avx512_bf16/amx_bf16 in /proc/cpuinfo); "
            "use precision 'fp32', or 'manual' for bf16"
        )
    return True


def onednn_core(cell, params, xs_tm, carry, mask, reverse, *, unroll, compute_dtype):
    """The ``"onednn"`` time-major core (see the module docstring).

    ``xs_tm (T, B, I)``, ``carry`` the cell's carry of ``(B, H)`` leaves, ``mask (T, B)`` or ``None``
    -> ``(ys_tm (T, B, H), final carry)``. The kernel's input contract: weights and bias are cast to
    float32, the carry to float32 (the final carry and the outputs come back in the carry's dtype), so
    any dtype mix ``scan`` accepts gives ``scan``'s answer; an empty batch returns empty outputs and the
    initial carry without calling oneDNN, and an empty input or hidden size runs ``manual``.
    """
    del unroll  # one fused kernel: nothing to unroll
    bf16 = _check_dtypes(params, compute_dtype)
    if mask is not None:  # oneDNN has no per-example lengths: the same equations, unfused, exactly
        # Python's default warning filter shows this once per calling location.
        warnings.warn("layer impl 'onednn': oneDNN has no per-example lengths; calls with lengths run 'manual'",
                      stacklevel=2)
        return manual_core(cell, params, xs_tm, carry, mask, reverse, unroll=1, compute_dtype=compute_dtype)
    kind = KINDS[cell.recurrence]
    h0, c0 = kind.split(carry)
    seq_len, batch, features = xs_tm.shape
    if batch == 0:  # nothing to compute (oneDNN divides by B): scan's answer, without calling it
        ys_tm = jnp.zeros((seq_len, 0, h0.shape[-1]), h0.dtype)
        return ys_tm, carry
    if features == 0 or h0.shape[-1] == 0:  # oneDNN has no empty matmul: the same equations, unfused
        return manual_core(cell, params, xs_tm, carry, None, reverse, unroll=1, compute_dtype=compute_dtype)
    f32 = jnp.float32
    c0_in = jnp.zeros(h0.shape, f32) if c0 is None else c0.astype(f32)
    w_layer, w_iter, bias = (w.astype(f32) for w in kind.weights(params))
    blocked = weight_layout() == "blocked"
    ys_tm, h_t, c_t = fused(kind.code, bool(reverse), bf16, blocked, xs_tm.astype(f32), h0.astype(f32), c0_in,
                            w_layer, w_iter, bias)
    out = jnp.result_type(*jax.tree_util.tree_leaves(carry))  # scan's output dtype: the carry's, promoted
    return ys_tm.astype(out), kind.join(h_t.astype(h0.dtype), None if c0 is None else c_t.astype(c0.dtype))
