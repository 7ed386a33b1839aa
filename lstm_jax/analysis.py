"""Looking inside recurrent networks: gradient flow through time and LSTM gate activity.

Gradient flow
-------------
:func:`carry_gradients` measures how much the loss depends on the recurrent
state at each step, with one clean trick: the stack is run with a zero-valued
offset ``d_t`` added to the carry right after every step,

    carry_t = step(carry_{t-1}, x_t) + d_t,     y_t = carry_t.hidden,

and ``jax.grad`` is taken with respect to the offsets. Because ``d_t = 0`` the
forward pass is unchanged, and ``dL/dd_t`` is exactly the gradient of the loss
with respect to the state at step ``t``, the quantity backpropagation through
time carries backwards:

* ``dL/dh_t`` (every cell): the *total* derivative with respect to the hidden
  state -- through the output ``y_t`` and through every later step.
* for the LSTM, the offset on ``c_t`` gives the derivative with respect to the
  cell carry as it is passed on to step ``t + 1`` (``h_t`` already computed,
  held fixed): ``f_{t+1} * delta_c_{t+1}``. The *total* derivative, the
  ``delta_c_t`` of the BPTT recursion ::

      delta_c_t = dL/dh_t * o_t * (1 - tanh(c_t)^2) + f_{t+1} * delta_c_{t+1}

  adds the route through ``h_t = o_t tanh(c_t)``;
  :func:`lstm_total_cell_gradient` assembles it from the offset gradients and
  the gate trace, and the plotted ``dL/dc`` curves are this total derivative
  (the carry part is 0 at the last step, where ``c_T`` feeds nothing further).

:func:`gradient_norm_by_distance` turns those into the curve the plots show:
the batch-mean of ``||dL/dstate_t||_2`` indexed by the distance ``T - 1 - t``
from the last step (0 = last step). For the linear RNN ``h_t = h_{t-1} W + x_t
U`` (:data:`LINEAR_RNN`) with a loss reading only ``h_T``,
``dL/dh_{T-k} = W^k dL/dh_T``, so the curve is ``||W^k g||``: geometric decay
or growth at rate ``a`` for ``W = a Q`` (Q orthogonal). The tests check exactly
that, which is why the plotted quantity can be trusted.

Gate activity
-------------
:func:`lstm_gate_trace` runs an LSTM stack and returns, per layer and per
step, the gates ``i, f, g, o`` and the states ``c, h`` -- the raw material of
Karpathy-style heatmaps.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from .cells import LSTM_GATES, Cell, LSTMCarry, get_cell, glorot_uniform, lstm_step, zeros_carry
from .cells.base import matmul
from .layers import zeros_stack_carry

Array = jax.Array


# ---------------------------------------------------------------------------
# A linear RNN: the analytically tractable reference cell


def linear_rnn_recurrence(params: dict, h_prev: Array, xw_t: Array, compute_dtype=None):
    """Linear RNN ``h_t = x_t @ w_x + h_{t-1} @ w_h`` (no bias, no nonlinearity); keeps ``h_prev``.

    Not a model anyone trains; it is the cell whose gradient flow is known in
    closed form (``dL/dh_{T-k} = w_h^k dL/dh_T``), used to validate
    :func:`carry_gradients`.
    """
    h = xw_t + matmul(h_prev, params["w_h"], compute_dtype, h_prev.dtype)
    return h, h, {"h_prev": h_prev}


def linear_rnn_backward_step(params: dict, res: dict, dh_next: Array, dy: Array, compute_dtype=None):
    """``dz_t = dh_next + dy`` (no nonlinearity), ``dh_{t-1} = dz_t @ w_hᵀ``."""
    dz = dh_next + dy
    return dz, None, matmul(dz, params["w_h"].T, compute_dtype, dz.dtype)


def init_linear_rnn(key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> dict:
    """``w_x`` Glorot-uniform (I, H), ``w_h`` orthogonal (H, H); scale ``w_h`` yourself."""
    k_x, k_h = jax.random.split(key)
    return {
        "w_x": glorot_uniform(k_x, input_size, hidden_size, dtype),
        "w_h": jax.nn.initializers.orthogonal()(k_h, (hidden_size, hidden_size), dtype),
    }


LINEAR_RNN = Cell(
    name="linear_rnn", init=init_linear_rnn, zeros_carry=zeros_carry, recurrence=linear_rnn_recurrence,
    num_gates=1, param_keys=("w_x", "w_h"), input_bias=None, backward_step=linear_rnn_backward_step,
)
linear_rnn_step = LINEAR_RNN.step


def _as_cell(cell) -> Cell:
    return cell if isinstance(cell, Cell) else get_cell(cell)


# ---------------------------------------------------------------------------
# Gradient flow through time


def _run_with_offsets(cell: Cell, params: Sequence, xs: Array, carry: Sequence, offsets: Sequence):
    """The stack of :func:`~lstm_jax.layers.apply_stack` (unidirectional, no
    dropout), with ``offsets[k]`` (carry pytree, leaves ``(T, B, H)``) added to
    layer ``k``'s carry after every step. Returns ``(ys (B, T, H), finals)``."""
    h = jnp.swapaxes(xs, 0, 1)  # (T, B, F)
    finals = []
    for layer_params, layer_carry, layer_offsets in zip(params, carry, offsets):
        step = functools.partial(cell.step, layer_params)

        def body(c, inputs, step=step):
            x_t, d_t = inputs
            c, _ = step(c, x_t)
            c = jax.tree_util.tree_map(jnp.add, c, d_t)
            return c, cell.hidden(c)

        final, h = jax.lax.scan(body, layer_carry, (h, layer_offsets))
        finals.append(final)
    return jnp.swapaxes(h, 0, 1), finals


def carry_gradients(
    cell: str | Cell,
    params: Sequence,
    xs: Array,
    loss_fn: Callable[[Array], Array],
    *,
    carry: Sequence | None = None,
):
    """Gradient of a loss with respect to every layer's state at every step.

    Args:
        cell: ``"rnn" | "gru" | "lstm"``, or any :class:`~lstm_jax.cells.Cell`
            (e.g. :data:`LINEAR_RNN`).
        params: list of per-layer params (unidirectional, as from ``init_stack``).
        xs: ``(B, T, F)`` inputs.
        loss_fn: ``loss_fn(ys) -> scalar`` where ``ys`` is the top layer's
            output ``(B, T, H)`` (close over targets and the head).
        carry: initial carry per layer; zeros if ``None``.

    Returns:
        ``(loss, grads)``: ``grads[k]`` is structured like layer ``k``'s carry
        with leaves ``(B, T, H)``: ``grads[k][:, t]`` = dL/d(state after step t),
        an array for rnn/gru, an :class:`~lstm_jax.cells.LSTMCarry` of
        (dL/dh, dL/dc) for the LSTM. See the module docstring for exactly which
        derivative ``dL/dc`` is.
    """
    cell = _as_cell(cell)
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must be (batch, time, features), got shape {xs.shape}")
    if any(isinstance(p, dict) and set(p) == {"forward", "backward"} for p in params):
        raise ValueError("carry_gradients supports unidirectional stacks only")
    batch, T, _ = xs.shape
    if carry is None:
        carry = zeros_stack_carry(cell, params, (batch,), xs.dtype)
    offsets = [
        jax.tree_util.tree_map(lambda c: jnp.zeros((T,) + c.shape, c.dtype), c) for c in carry
    ]

    def loss_of_offsets(offsets):
        ys, _ = _run_with_offsets(cell, params, xs, carry, offsets)
        return loss_fn(ys)

    loss, grads = jax.value_and_grad(loss_of_offsets)(offsets)
    grads = [jax.tree_util.tree_map(lambda g: jnp.swapaxes(g, 0, 1), g) for g in grads]
    return loss, grads


def gradient_norm_by_distance(grad: Array) -> Array:
    """``(B, T, H)`` per-step gradients -> ``(T,)``: entry ``k`` is the batch-mean of
    ``||grad[:, T - 1 - k]||_2``, i.e. indexed by distance from the last step."""
    norms = jnp.linalg.norm(grad, axis=-1)  # (B, T)
    return jnp.mean(norms, axis=0)[::-1]


def state_gradient_profile(cell, params, xs, loss_fn, *, layer: int = -1) -> dict:
    """Norm-vs-distance curves for one layer: ``{"h": (T,)}`` plus ``{"c": (T,)}`` for the LSTM
    (the total derivative, :func:`lstm_total_cell_gradient`).

    A thin composition of :func:`carry_gradients` and :func:`gradient_norm_by_distance`.
    """
    _, grads = carry_gradients(cell, params, xs, loss_fn)
    g = grads[layer]
    if isinstance(g, LSTMCarry):
        trace = lstm_gate_trace(params, xs)[layer]
        total_c = lstm_total_cell_gradient(g, trace)
        return {"h": gradient_norm_by_distance(g.hidden), "c": gradient_norm_by_distance(total_c)}
    return {"h": gradient_norm_by_distance(g)}


def lstm_total_cell_gradient(grads: LSTMCarry, trace: dict) -> Array:
    """Total ``dL/dc_t`` (BPTT's ``delta_c_t``), ``(B, T, H)``, for one LSTM layer.

    ``grads`` is that layer's entry of :func:`carry_gradients` (offset
    gradients: total ``dL/dh_t`` and the carry part of ``dL/dc_t``), ``trace``
    its entry of :func:`lstm_gate_trace` on the same inputs. Adds the route
    through ``h_t = o_t * tanh(c_t)``: ``dL/dh_t * o_t * (1 - tanh(c_t)^2)``.
    """
    tanh_c = jnp.tanh(trace["cell"])
    return grads.cell + grads.hidden * trace["output"] * (1.0 - tanh_c**2)


def recurrent_grad_norms(grads_stack: Sequence) -> list:
    """``||dL/dw_h||_F`` per layer from a gradient pytree shaped like ``init_stack`` params."""
    out = []
    for layer in grads_stack:
        if isinstance(layer, dict) and set(layer) == {"forward", "backward"}:
            out.append({d: jnp.linalg.norm(layer[d]["w_h"]) for d in layer})
        else:
            out.append(jnp.linalg.norm(layer["w_h"]))
    return out


# ---------------------------------------------------------------------------
# LSTM gate activity


def lstm_gate_trace(params: Sequence, xs: Array, carry: Sequence | None = None) -> list:
    """Per-step gates and states of a (unidirectional) LSTM stack.

    Args:
        params: list of per-layer LSTM params (``init_stack(key, "lstm", ...)``).
        xs: ``(B, T, F)`` or ``(T, F)`` inputs.
        carry: initial carry per layer; zeros if ``None``.

    Returns:
        one dict per layer with keys ``"input", "forget", "candidate",
        "output"`` (gate activations, in :data:`~lstm_jax.cells.LSTM_GATES`
        order) and ``"cell", "hidden"`` (states after the step), each
        ``(B, T, H)`` (or ``(T, H)`` for a single sequence). The states are
        those :func:`~lstm_jax.cells.lstm_step` produces, so ``hidden`` of the
        last layer equals ``apply_stack``'s output.
    """
    xs = jnp.asarray(xs)
    if xs.ndim == 2:
        single = [jax.tree_util.tree_map(lambda c: c[None], c) for c in carry] if carry is not None else None
        out = lstm_gate_trace(params, xs[None], single)
        return [{k: v[0] for k, v in layer.items()} for layer in out]
    if xs.ndim != 3:
        raise ValueError(f"xs must be (batch, time, features) or (time, features), got {xs.shape}")
    for p in params:
        if not (isinstance(p, dict) and set(p) == {"w_x", "w_h", "b"} and p["w_h"].shape[1] == 4 * p["w_h"].shape[0]):
            raise ValueError("lstm_gate_trace needs a list of unidirectional LSTM layer params")
    if carry is None:
        carry = zeros_stack_carry("lstm", params, xs.shape[:1], xs.dtype)

    h = jnp.swapaxes(xs, 0, 1)
    layers = []
    for layer_params, layer_carry in zip(params, carry):

        def body(c, x_t, p=layer_params):
            z = x_t @ p["w_x"] + c.hidden @ p["w_h"] + p["b"]
            z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
            gates = (jax.nn.sigmoid(z_i), jax.nn.sigmoid(z_f), jnp.tanh(z_g), jax.nn.sigmoid(z_o))
            new_c, y = lstm_step(p, c, x_t)
            record = dict(zip(LSTM_GATES, gates))
            record.update(cell=new_c.cell, hidden=new_c.hidden)
            return new_c, record

        _, rec = jax.lax.scan(body, layer_carry, h)
        h = rec["hidden"]
        layers.append({k: jnp.swapaxes(v, 0, 1) for k, v in rec.items()})
    return layers
