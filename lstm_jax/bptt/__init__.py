"""Hand-derived backpropagation through time (BPTT) for the RNN, LSTM and GRU cells.

Nothing in this module calls ``jax.grad``, ``jax.vjp`` or ``jax.jvp``: every
derivative is written out by hand, so that the equations can be read (each
function's docstring gives them) and checked against autodiff (see
``tests/test_bptt.py`` and ``experiments/analysis/grad_check.py``).

Three levels:

* One layer, one direction: :func:`forward` runs a cell over a whole sequence
  and returns a :class:`LayerCache` holding exactly what the backward needs;
  :func:`backward` takes that cache, ``dL/dys`` and ``dL/d(final carry)`` and
  returns :class:`Grads` for every parameter, the inputs and the initial
  carry. Per-cell entry points: :func:`rnn_forward` / :func:`rnn_backward`,
  :func:`lstm_forward` / :func:`lstm_backward`, :func:`gru_forward` /
  :func:`gru_backward`.
* A stack (from :func:`lstm_jax.layers.init_stack`, multi-layer and/or
  bidirectional): :func:`stack_forward` / :func:`stack_backward`. The backward
  walks the layers in reverse order, feeding each layer's input gradient to the
  layer below as its output gradient.
* The same derivations wrapped in ``jax.custom_vjp`` are the layer
  implementation ``"manual"`` (:mod:`lstm_jax.impls.manual`), so that
  ``apply_stack(..., impl="manual")`` makes ``jax.grad`` use this backward.

Where things live: the per-step forward and backward equations of each cell
are on the cell (``lstm_jax/cells/rnn.py``, ``lstm.py``, ``gru.py``: its
``recurrence`` and ``backward_step``); the cell-agnostic time-major scans are
in :mod:`lstm_jax.bptt.scans`; one layer with its cache in
:mod:`lstm_jax.bptt.layer`; stacks in :mod:`lstm_jax.bptt.stacks`.

Notation (per time step ``t``, batch-major user layout ``(B, T, F)``)::

    x_t   (B, I)   input              h_t (B, H)  hidden state (= output y_t)
    W_x   (I, G*H) input weights      W_h (H, G*H) recurrent weights
    G = 1 (rnn), 4 (lstm), 3 (gru)    σ = logistic sigmoid, ⊙ = elementwise
    σ'(s) = σ(s)(1 - σ(s)),  tanh'(s) = 1 - tanh(s)^2

How the work is organised (the usual cuDNN-style split): the input projection
``x_t @ W_x + b`` for all steps is one big matmul before the forward scan; the
scan only does the recurrent matmul. The backward scan (``jax.lax.scan`` with
the opposite direction, running all the way to the first step) only
propagates ``dL/dh_{t-1}`` and emits the pre-activation gradients ``dz_t``;
then ``dW_x = Σ_t x_tᵀ dz_t``, ``dW_h = Σ_t h_{t-1}ᵀ dz_t``, ``db = Σ_t dz_t`` and
``dx_t = dz_t W_xᵀ`` are each one big matmul/sum over all steps.

Padded batches (``lengths``), matching :func:`lstm_jax.layers.scan_layer`:
for step ``t >= lengths[b]`` the carry is frozen and the output is zero::

    carry_t = m_t ? cell(carry_{t-1}, x_t) : carry_{t-1}      m_t = (t < lengths)
    y_t     = m_t ? h_t : 0

so the backward masks the incoming gradient, ``dh_t = m_t ⊙ (dL/dcarry_t + dL/dy_t)``,
and on frozen steps passes ``dL/dcarry_t`` straight through to
``dL/dcarry_{t-1}``. ``reverse=True`` with lengths reads each sequence from its
own last real step (flip within length, run forward, flip back), so the
backward flips ``dys`` the same way and flips ``dxs`` back.
"""

from .layer import (
    Grads,
    LayerCache,
    backward,
    check_cache,
    forward,
    gru_backward,
    gru_forward,
    lstm_backward,
    lstm_forward,
    rnn_backward,
    rnn_forward,
)
from .scans import backward_scan, backward_time_major, forward_scan, layer_grads, require_backward
from .stacks import StackCache, stack_backward, stack_forward

__all__ = [
    "Grads", "LayerCache", "StackCache", "forward", "backward", "check_cache",
    "stack_forward", "stack_backward",
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
    "forward_scan", "backward_scan", "backward_time_major", "layer_grads", "require_backward",
]
