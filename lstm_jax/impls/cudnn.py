"""``"cudnn"``: cuDNN's fused LSTM (``jax.experimental.rnn.lstm``) behind the library's layer interface.

cuDNN's ``CUDNN_LSTM`` computes the library's LSTM equations
(:mod:`lstm_jax.cells.lstm`) with the gates in the same order, but with two
biases and PyTorch-style ``(out, in)`` weight matrices packed into one flat
vector. For one layer, one direction::

    z   = x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh    # (B, 4H), blocks [i|f|g|o]
    weights = [W_ih (4H, I) | W_hh (4H, H) | b_ih (4H,) | b_hh (4H,)], each flattened row-major

so the library's params map onto it as ``W_ih = w_x.T``, ``W_hh = w_h.T``,
``b_ih = b``, ``b_hh = 0`` (:func:`to_cudnn_weights`; the inverse
:func:`from_cudnn_weights` folds ``b_ih + b_hh`` into ``b``). That conversion
is pure JAX, so ``jax.grad`` carries cuDNN's weight gradient back to ``w_x``,
``w_h`` and ``b``. cuDNN orders the gates ``[i|f|g|o]`` like the library and
PyTorch; ``jax.experimental.rnn.swap_lstm_gates`` (which swaps ``g`` and ``o``)
is for ROCm's MIOpen, whose order differs, and is not used: this impl refuses
ROCm rather than run it untested.

Shapes, per layer: ``xs_tm (T, B, I)`` arrives time-major from
:func:`lstm_jax.sequence.run_layer`; cuDNN takes ``(B, T, I)``, ``h_0, c_0
(1, B, H)`` and ``seq_lengths (B,)`` int32, and returns ``ys (B, T, H)`` and
``h_n, c_n (1, B, H)`` taken at each sequence's last real step.

Semantics the library's other impls have, arranged around the kernel:

* ``lengths`` (the mask) become ``seq_lengths``. cuDNN fails on zero lengths
  (jax issue #17966), so they are clamped to 1 and, for zero-length rows, the
  initial carry is returned as the final carry and the outputs are zeroed
  (outputs are masked for every row anyway).
* ``reverse``: this runs a single forward direction; a reverse layer flips
  each sequence within its length, runs forwards and flips the outputs back.
  (The front already does this when there are lengths.)
* a reversed layer with ``lengths`` is refused under differentiation (``jax.grad``
  and friends; the forward alone runs), with one line naming ``"manual"``: on
  the one GPU run so far (docs/gpu.md) its gradients disagreed with ``scan``,
  cause not established. The refusal is decided at trace time, before any
  kernel runs (:func:`gradient_refusal`); the backward direction of a
  bidirectional stack with ``lengths`` is such a layer.
* bidirectional stacks run each direction as its own single-direction layer
  through :func:`lstm_jax.stack.run_stack`, never cuDNN's own bidirectional
  mode, whose outputs once disagreed with its reference (jax issue #15183).
* ``unroll`` has no meaning for a fused kernel and is ignored.

Precision: float32 params only (jax's cuDNN lowering has no bfloat16 path),
so only the ``fp32`` policy; an explicit reduced ``compute_dtype`` is refused.
On NVIDIA GPUs cuDNN may use TF32 for the float32 matmuls unless
``jax.default_matmul_precision("highest")`` is in effect when the function is
traced (jax passes ``cudnn_allow_tf32=False`` then).

Runs only where ``jax.default_backend() == "gpu"`` (CUDA); elsewhere the
impl is refused with :func:`unavailable_reason`. :func:`reference_kernel`
runs the same flat weights through ``jax.experimental.rnn.lstm_ref`` (pure
JAX, any backend), which is how the conversion is tested on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..cells.lstm import LSTMCarry, lstm_recurrence
from ..sequence import flip_within_lengths

Array = jax.Array

REQUIREMENT = "the LSTM equations (cuDNN's CUDNN_LSTM)"


def supports(cell) -> bool:
    """Only the library's LSTM: cuDNN computes exactly :func:`lstm_jax.cells.lstm.lstm_recurrence`."""
    return cell.recurrence is lstm_recurrence


def unavailable_reason() -> str | None:
    """``None`` on a CUDA GPU backend; otherwise why the impl cannot run here."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"needs a GPU backend (jax.default_backend() is {backend!r}); use 'manual' on CPU"
    from jax.extend import backend as jax_backend

    version = str(getattr(jax_backend.get_backend(), "platform_version", "")).lower()
    if "rocm" in version:
        return "runs on CUDA only: ROCm's MIOpen orders the LSTM gates differently and is untested here"
    return None


GRADIENT_REFUSAL = (
    "layer impl 'cudnn' does not differentiate a reversed layer with lengths (its gradients disagreed with "
    "'scan' on a GPU; docs/gpu.md): use impl='manual' for it"
)


def gradient_refusal(reverse: bool, lengths) -> str | None:
    """Why a call with this ``reverse`` and ``lengths`` must not be differentiated, or ``None``."""
    return GRADIENT_REFUSAL if reverse and lengths is not None else None


def refuse_under_differentiation(message: str, tree):
    """``tree`` unchanged; differentiating through it raises ``ValueError(message)`` while the gradient is
    traced (a ``jax.custom_vjp`` whose forward rule refuses), so no kernel ever runs for it.

    Example::

        >>> x = refuse_under_differentiation("no", jnp.ones(2))   # the forward alone runs
        >>> jax.grad(lambda x: refuse_under_differentiation("no", x).sum())(jnp.ones(2))
        Traceback (most recent call last):
        ValueError: no
    """

    @jax.custom_vjp
    def guard(t):
        return t

    def forward(t):
        raise ValueError(message)

    def backward(residual, cotangent):  # never reached: forward() refuses first
        raise ValueError(message)

    guard.defvjp(forward, backward)
    return guard(tree)


def num_weights(input_size: int, hidden_size: int) -> int:
    """Length of cuDNN's flat weight vector for one layer, one direction: ``4H*I + 4H*H + 2*4H``."""
    return 4 * hidden_size * (input_size + hidden_size + 2)


def to_cudnn_weights(params: dict) -> Array:
    """Library LSTM params ``{"w_x" (I, 4H), "w_h" (H, 4H), "b" (4H,)}`` -> cuDNN's flat ``(num_weights,)``.

    ``[w_x.T | w_h.T | b | 0]`` flattened: ``b`` is cuDNN's ``b_ih``, ``b_hh`` is zero.
    """
    w_x, w_h, b = params["w_x"], params["w_h"], params["b"]
    return jnp.concatenate([w_x.T.reshape(-1), w_h.T.reshape(-1), b, jnp.zeros_like(b)])


def from_cudnn_weights(weights: Array, input_size: int, hidden_size: int) -> dict:
    """cuDNN's flat weights (one layer, one direction) -> library params; ``b = b_ih + b_hh``."""
    n = num_weights(input_size, hidden_size)
    if weights.shape != (n,):
        raise ValueError(
            f"cuDNN LSTM weights for input_size={input_size}, hidden_size={hidden_size} must have shape "
            f"({n},); got {weights.shape}"
        )
    g = 4 * hidden_size
    cuts = np.cumsum([g * input_size, g * hidden_size, g])
    w_ih, w_hh, b_ih, b_hh = jnp.split(weights, cuts)
    return {"w_x": w_ih.reshape(g, input_size).T, "w_h": w_hh.reshape(g, hidden_size).T, "b": b_ih + b_hh}


def cudnn_kernel(xs, h0, c0, weights, seq_lengths, input_size: int, hidden_size: int):
    """``jax.experimental.rnn.lstm``, one layer, one direction, no dropout (float32 only).

    ``xs (B, T, I)``, ``h0, c0 (1, B, H)``, ``weights (num_weights,)``,
    ``seq_lengths (B,)`` int32 >= 1 -> ``(ys (B, T, H), h_n (1, B, H), c_n (1, B, H))``.
    """
    from jax.experimental import rnn

    if xs.dtype != jnp.float32:
        raise TypeError(
            f"layer impl 'cudnn' runs float32 only (jax.experimental.rnn's cuDNN LSTM has no other dtype); "
            f"got params dtype {xs.dtype}"
        )
    return rnn.lstm(xs, h0, c0, weights, seq_lengths, input_size, hidden_size, 1, 0.0, False)


def reference_kernel(xs, h0, c0, weights, seq_lengths, input_size: int, hidden_size: int):
    """:func:`cudnn_kernel`'s contract on any backend: the same flat weights through
    ``jax.experimental.rnn.unpack_lstm_weights`` and ``lstm_ref`` (pure JAX, any float dtype)."""
    from jax.experimental import rnn

    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    return rnn.lstm_ref(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, seq_lengths, input_size, hidden_size, 1, 0.0, False)


def check_compute_dtype(compute_dtype, params_dtype) -> None:
    """cuDNN's LSTM (as jax exposes it) has no reduced-precision matmuls: only ``None`` or the params' dtype."""
    if compute_dtype is not None and np.dtype(compute_dtype) != np.dtype(params_dtype):
        raise ValueError(
            f"layer impl 'cudnn' has no reduced-precision matmuls (jax.experimental.rnn's cuDNN LSTM is "
            f"float32 only); got compute_dtype {np.dtype(compute_dtype)}; use 'manual' for the bf16 policy"
        )


def cudnn_core(cell, params, xs_tm, carry: LSTMCarry, mask, reverse, *, unroll, compute_dtype, kernel=cudnn_kernel):
    """The ``"cudnn"`` time-major core (see the module docstring); ``kernel`` is :func:`cudnn_kernel`
    or, to check the weight layout on any backend, :func:`reference_kernel`.

    ``xs_tm (T, B, I)``, ``carry`` :class:`LSTMCarry` of ``(B, H)``, ``mask (T, B)``
    bool or ``None`` -> ``(ys_tm (T, B, H), final LSTMCarry)``.
    """
    del unroll  # one fused kernel: nothing to unroll
    check_compute_dtype(compute_dtype, params["w_x"].dtype)
    seq_len, batch, input_size = xs_tm.shape
    hidden_size = params["w_h"].shape[0]
    if mask is None:
        lengths = jnp.full((batch,), seq_len, jnp.int32)
    else:
        lengths = jnp.sum(mask, axis=0, dtype=jnp.int32)
    xs = jnp.swapaxes(xs_tm, 0, 1)
    flip = (lambda a: a[:, ::-1]) if mask is None else (lambda a: flip_within_lengths(a, lengths))
    if reverse:
        xs = flip(xs)
    ys, h_n, c_n = kernel(
        xs, carry.hidden[None], carry.cell[None], to_cudnn_weights(params), jnp.maximum(lengths, 1),
        input_size, hidden_size,
    )
    if reverse:
        ys = flip(ys)
    ys_tm = jnp.swapaxes(ys, 0, 1)
    final = LSTMCarry(hidden=h_n[0], cell=c_n[0])
    if mask is not None:  # zero-length rows ran one (zeroed) step: restore their carry, zero every padded output
        ys_tm = jnp.where(mask[..., None], ys_tm, jnp.zeros_like(ys_tm))
        empty = (lengths == 0)[:, None]
        final = LSTMCarry(
            hidden=jnp.where(empty, carry.hidden, final.hidden), cell=jnp.where(empty, carry.cell, final.cell)
        )
    return ys_tm, final
