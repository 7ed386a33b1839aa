"""Hand-derived backpropagation through time (BPTT) for the RNN, LSTM and GRU cells.

Nothing in this module calls ``jax.grad``, ``jax.vjp`` or ``jax.jvp``: every
derivative is written out by hand, so that the equations can be read (each
function's docstring gives them) and checked against autodiff (see
``tests/test_bptt.py`` and ``experiments/grad_check.py``).

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
* :func:`manual_layer`: the same derivations wrapped in ``jax.custom_vjp``,
  registered as ``layer_impl("manual")`` so that
  ``apply_stack(..., impl="manual")`` makes ``jax.grad`` use this backward.

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

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .cells import Cell, LSTMCarry, get_cell
from .cells import _matmul as _mm  # x @ w in compute_dtype, accumulated in out_dtype
from .layers import DIRECTIONS, _check_lengths, _flip_within_lengths, _is_bidirectional, with_batch_axis

Array = jax.Array

#: Parameter names per cell (the dicts of :mod:`lstm_jax.cells`).
PARAM_KEYS = {
    "rnn": ("w_x", "w_h", "b"),
    "lstm": ("w_x", "w_h", "b"),
    "gru": ("w_x", "w_h", "b_x", "b_h"),
}
#: Number of gate blocks along the ``G*H`` axis.
NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: What the forward keeps per time step for each cell's backward (all time-major ``(T, B, ...)``).
RESIDUALS = {
    "rnn": ("h_prev", "h"),
    "lstm": ("h_prev", "c_prev", "gates", "tanh_c"),
    "gru": ("h_prev", "r", "z", "n", "u_n"),
}


class Grads(NamedTuple):
    """Gradients returned by the backward passes.

    params: same structure as the params (dict per layer, list for a stack).
    xs:     ``(B, T, I)``, dL/dxs.
    carry:  same structure as the initial carry, dL/d(initial carry).
    """

    params: Any
    xs: Array
    carry: Any


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "xs", "lengths", "residuals"],
    meta_fields=["cell", "reverse", "compute_dtype", "unroll"],
)
@dataclasses.dataclass(frozen=True)
class LayerCache:
    """What :func:`forward` keeps for :func:`backward` (a pytree, usable as a custom_vjp residual).

    cell:       ``"rnn" | "lstm" | "gru"``.
    reverse:    whether the layer ran in reverse.
    compute_dtype: matmul dtype used in the forward (``None`` = params dtype).
    unroll:     ``jax.lax.scan`` unroll factor, reused by the backward scan.
    params:     the layer's params (the backward needs ``W_x``, ``W_h``).
    xs:         ``(T, B, I)`` time-major inputs *in processing order* (flipped
                within lengths if ``reverse`` with ``lengths``).
    lengths:    ``(B,)`` int or ``None``.
    residuals:  dict name -> ``(T, B, ...)``, names :data:`RESIDUALS` [cell].
    """

    cell: str
    reverse: bool
    compute_dtype: Any
    unroll: int
    params: Any
    xs: Array
    lengths: Any
    residuals: dict


@functools.partial(jax.tree_util.register_dataclass, data_fields=["layers"], meta_fields=["cell"])
@dataclasses.dataclass(frozen=True)
class StackCache:
    """What :func:`stack_forward` keeps: one :class:`LayerCache` per layer
    (``{"forward": cache, "backward": cache}`` for a bidirectional layer)."""

    cell: str
    layers: list


# ---------------------------------------------------------------------------
# Small helpers


def _mm_sum(a: Array, b: Array, compute_dtype, out_dtype) -> Array:
    """``Σ_{t,b} a[t,b,:]ᵀ b[t,b,:]``: ``(T,B,M), (T,B,N) -> (M,N)``, one matmul over all steps."""
    a2 = a.reshape(-1, a.shape[-1])
    b2 = b.reshape(-1, b.shape[-1])
    return _mm(a2.T, b2, compute_dtype, out_dtype)


def _normalize_compute_dtype(compute_dtype):
    if compute_dtype is None:
        return None
    try:
        dt = np.dtype(compute_dtype)
    except TypeError:
        raise TypeError(f"compute_dtype must be None or a floating dtype, got {compute_dtype!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"compute_dtype must be None or a floating dtype (e.g. jnp.bfloat16), got {dt}; "
            "the manual BPTT only supports floating-point matmuls"
        )
    return dt


def _cell_name(cell) -> str:
    if isinstance(cell, Cell):
        name = cell.name
    else:
        name = get_cell(cell).name
    if name not in PARAM_KEYS:
        raise ValueError(f"no hand-derived backward for cell {name!r}; have {sorted(PARAM_KEYS)}")
    return name


def _check_params(name: str, params) -> int:
    if not isinstance(params, dict):
        raise TypeError(f"{name}: params must be a dict, got {type(params).__name__}")
    missing = [k for k in PARAM_KEYS[name] if k not in params]
    if missing:
        raise ValueError(f"{name}: params missing {missing}; expected keys {PARAM_KEYS[name]}")
    hidden = params["w_h"].shape[0]
    g = NUM_GATES[name]
    if params["w_h"].shape != (hidden, g * hidden) or params["w_x"].shape[-1] != g * hidden:
        raise ValueError(
            f"{name}: w_h {params['w_h'].shape} / w_x {params['w_x'].shape} do not match "
            f"{g} gate block(s) of hidden size {hidden}"
        )
    return hidden


def _carry_leaves(name: str, carry):
    if name == "lstm":
        if not isinstance(carry, LSTMCarry):
            raise TypeError(f"lstm: carry must be an LSTMCarry(hidden, cell), got {type(carry).__name__}")
        return [carry.hidden, carry.cell]
    return [carry]


def _check_carry(name: str, carry, batch: int, hidden: int, what: str) -> None:
    for leaf in _carry_leaves(name, carry):
        if not hasattr(leaf, "shape") or leaf.shape != (batch, hidden):
            raise ValueError(
                f"{name}: {what} must have shape (batch, hidden) = ({batch}, {hidden}) per leaf; "
                f"got {getattr(leaf, 'shape', type(leaf).__name__)}"
            )


def _where(mask, a, b):
    """Elementwise select on pytrees; ``mask`` is ``(B, 1)``."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(mask, x, y), a, b)


# ---------------------------------------------------------------------------
# Per-step forward (with residuals) and backward, one pair per cell.
# ``xw_t`` is the precomputed input projection ``x_t @ W_x + b`` (``+ b_x`` for gru).


def _rnn_step_fwd(params, h_prev, xw_t, cd):
    """Elman forward step::

        h_t = tanh(x_t @ W_x + b + h_{t-1} @ W_h)

    keeps ``h_prev = h_{t-1}`` and ``h = h_t``.
    """
    h = jnp.tanh(xw_t + _mm(h_prev, params["w_h"], cd, h_prev.dtype))
    return h, h, {"h_prev": h_prev, "h": h}


def _rnn_step_bwd(params, res, dh, cd):
    """Elman backward step, given ``dh = dL/dh_t`` (total: from y_t and from step t+1)::

        dz_t      = dh ⊙ (1 - h_t²)           # through tanh
        dh_{t-1}  = dz_t @ W_hᵀ
        (dW_x += x_tᵀ dz_t, dW_h += h_{t-1}ᵀ dz_t, db += Σ_b dz_t, dx_t = dz_t W_xᵀ: after the scan)

    Returns ``(dz_input, dz_recurrent, dcarry_prev)`` (the two ``dz`` coincide here).
    """
    dz = dh * (1.0 - res["h"] ** 2)
    return dz, dz, _mm(dz, params["w_h"].T, cd, dh.dtype)


def _lstm_gate_activations(z):
    """``[σ(z_i) | σ(z_f) | tanh(z_g) | σ(z_o)]`` as one ``tanh`` over the whole ``(B, 4H)`` block.

    Uses ``σ(x) = (1 + tanh(x/2)) / 2``: with ``s = [½|½|1|½]`` per block,
    ``gates = s ⊙ tanh(s ⊙ z) + (1 - s)``. Same values to float rounding, but
    XLA:CPU evaluates one transcendental over a contiguous array several times
    faster than four over column slices (a scan of just the LSTM gate maths at
    B=64, H=256: 31 µs vs 157 µs per step; 2-4% of a whole training step).
    """
    hidden = z.shape[-1] // 4
    half = jnp.asarray(0.5, z.dtype)
    one = jnp.asarray(1.0, z.dtype)
    scale = jnp.concatenate([jnp.full((2 * hidden,), half), jnp.full((hidden,), one), jnp.full((hidden,), half)])
    return jnp.tanh(z * scale) * scale + (one - scale)


def _lstm_gate_derivatives(gates):
    """``[i(1-i) | f(1-f) | 1-g² | o(1-o)]``: each activation's derivative, from its output.

    ``σ' = σ(1-σ)`` and ``tanh' = 1 - tanh²`` are both ``a ⊙ (p - a) + q`` with
    ``(p, q) = (1, 0)`` on the sigmoid blocks and ``(0, 1)`` on the tanh block,
    so all four are one elementwise pass over the contiguous ``(B, 4H)`` block.
    """
    hidden = gates.shape[-1] // 4
    zero = jnp.zeros((hidden,), gates.dtype)
    one = jnp.ones((hidden,), gates.dtype)
    p = jnp.concatenate([one, one, zero, one])
    q = jnp.concatenate([zero, zero, one, zero])
    return gates * (p - gates) + q


def _lstm_step_fwd(params, carry, xw_t, cd):
    """LSTM forward step (gate order i|f|g|o)::

        z_t = x_t @ W_x + b + h_{t-1} @ W_h
        i = σ(z_i), f = σ(z_f), g = tanh(z_g), o = σ(z_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    (the four activations computed together, see :func:`_lstm_gate_activations`);
    keeps ``h_prev``, ``c_prev``, the activated ``gates = [i|f|g|o]`` and
    ``tanh_c = tanh(c_t)``. Storing ``tanh(c_t)`` costs one more ``(T, B, H)``
    array but halves the backward scan's elementwise time: recomputing it there
    (one tanh per step) took as long as all the other backward maths together
    (XLA:CPU, B=64, H=256: 158 vs 83 µs per step).
    """
    h_prev, c_prev = carry.hidden, carry.cell
    z = xw_t + _mm(h_prev, params["w_h"], cd, h_prev.dtype)
    gates = _lstm_gate_activations(z)
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = f * c_prev + i * g
    tanh_c = jnp.tanh(c)
    h = o * tanh_c
    res = {"h_prev": h_prev, "c_prev": c_prev, "gates": gates, "tanh_c": tanh_c}
    return LSTMCarry(hidden=h, cell=c), h, res


def _lstm_step_bwd(params, res, dh, dc, cd):
    """LSTM backward step, given ``dh = dL/dh_t`` (total) and ``dc = dL/dc_t`` from step t+1::

        do      = dh ⊙ tanh(c_t)                      # tanh(c_t) saved by the forward
        dc_t'   = dc + dh ⊙ o ⊙ (1 - tanh²(c_t))     # total gradient on c_t
        di      = dc_t' ⊙ g,   df = dc_t' ⊙ c_{t-1},   dg = dc_t' ⊙ i
        dc_{t-1} = dc_t' ⊙ f
        dz_i = di ⊙ i(1-i),  dz_f = df ⊙ f(1-f),  dz_g = dg ⊙ (1-g²),  dz_o = do ⊙ o(1-o)
        dh_{t-1} = dz_t @ W_hᵀ                        # dz_t = [dz_i|dz_f|dz_g|dz_o]

    The four ``dz`` blocks are computed as ``[di|df|dg|do] ⊙ gate derivatives``
    over the whole ``(B, 4H)`` block (:func:`_lstm_gate_derivatives`).

    Returns ``(dz_t, dz_t, LSTMCarry(dh_{t-1}, dc_{t-1}))``.
    """
    i, f, g, o = jnp.split(res["gates"], 4, axis=-1)
    tanh_c = res["tanh_c"]
    do = dh * tanh_c
    dct = dc + dh * o * (1.0 - tanh_c**2)
    di = dct * g
    df = dct * res["c_prev"]
    dg = dct * i
    dc_prev = dct * f
    dz = jnp.concatenate([di, df, dg, do], axis=-1) * _lstm_gate_derivatives(res["gates"])
    dh_prev = _mm(dz, params["w_h"].T, cd, dh.dtype)
    return dz, dz, LSTMCarry(hidden=dh_prev, cell=dc_prev)


def _gru_step_fwd(params, h_prev, xw_t, cd):
    """GRU forward step (torch.nn.GRU convention, blocks r|z|n)::

        a = x_t @ W_x + b_x,   u = h_{t-1} @ W_h + b_h
        r = σ(a_r + u_r),  z = σ(a_z + u_z)
        n = tanh(a_n + r ⊙ u_n)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    keeps ``h_prev``, ``r``, ``z``, ``n`` and ``u_n`` (the reset gate's multiplicand).
    """
    u = _mm(h_prev, params["w_h"], cd, h_prev.dtype) + params["b_h"]
    a_r, a_z, a_n = jnp.split(xw_t, 3, axis=-1)
    u_r, u_z, u_n = jnp.split(u, 3, axis=-1)
    r = jax.nn.sigmoid(a_r + u_r)
    z = jax.nn.sigmoid(a_z + u_z)
    n = jnp.tanh(a_n + r * u_n)
    h = (1.0 - z) * n + z * h_prev
    return h, h, {"h_prev": h_prev, "r": r, "z": z, "n": n, "u_n": u_n}


def _gru_step_bwd(params, res, dh, cd):
    """GRU backward step, given ``dh = dL/dh_t`` (total)::

        dn   = dh ⊙ (1 - z),         dz = dh ⊙ (h_{t-1} - n)
        ds_n = dn ⊙ (1 - n²)                     # s_n = a_n + r ⊙ u_n
        dr   = ds_n ⊙ u_n
        ds_r = dr ⊙ r(1-r),          ds_z = dz ⊙ z(1-z)
        da   = [ds_r | ds_z | ds_n]              # dL/d(x_t W_x + b_x)
        du   = [ds_r | ds_z | ds_n ⊙ r]          # dL/d(h_{t-1} W_h + b_h)
        dh_{t-1} = dh ⊙ z + du @ W_hᵀ
        (dW_x += x_tᵀ da, db_x += Σ_b da, dW_h += h_{t-1}ᵀ du, db_h += Σ_b du: after the scan)

    Returns ``(da, du, dh_{t-1})``.
    """
    r, z, n = res["r"], res["z"], res["n"]
    dn = dh * (1.0 - z)
    dz = dh * (res["h_prev"] - n)
    ds_n = dn * (1.0 - n**2)
    dr = ds_n * res["u_n"]
    ds_r = dr * r * (1.0 - r)
    ds_z = dz * z * (1.0 - z)
    da = jnp.concatenate([ds_r, ds_z, ds_n], axis=-1)
    du = jnp.concatenate([ds_r, ds_z, ds_n * r], axis=-1)
    dh_prev = dh * z + _mm(du, params["w_h"].T, cd, dh.dtype)
    return da, du, dh_prev


_STEP_FWD = {"rnn": _rnn_step_fwd, "lstm": _lstm_step_fwd, "gru": _gru_step_fwd}


def _input_bias(name: str, params) -> Array:
    return params["b_x"] if name == "gru" else params["b"]


# ---------------------------------------------------------------------------
# One layer over a whole sequence


def _forward_scan(name, params, xs_tm, carry, mask, *, scan_reverse, cd, unroll, with_cache):
    """Time-major forward: ``xs_tm (T,B,I)``, ``mask (T,B)`` or None -> ``(ys_tm, final, residuals)``."""
    dtype = _carry_leaves(name, carry)[0].dtype
    step = _STEP_FWD[name]
    # Input projection for every step at once: (T, B, G*H).
    xw = _mm(xs_tm, params["w_x"], cd, dtype) + _input_bias(name, params)

    def body(c, inp):
        xw_t, m_t = inp
        new_c, y, res = step(params, c, xw_t, cd)
        if m_t is not None:
            valid = m_t[:, None]
            new_c = _where(valid, new_c, c)
            y = jnp.where(valid, y, jnp.zeros_like(y))
        # With a cache, y_t is not emitted: it is already stored as the next step's h_prev.
        return new_c, (res if with_cache else y)

    final, out = jax.lax.scan(body, carry, (xw, mask), reverse=scan_reverse, unroll=unroll)
    if not with_cache:
        return out, final, {}
    final_h = final.hidden if name == "lstm" else final
    return _outputs_from_h_prev(out["h_prev"], final_h, mask, scan_reverse), final, out


def _outputs_from_h_prev(h_prev, final_h, mask, scan_reverse):
    """The outputs, rebuilt from the residuals instead of being stored a second time.

    The hidden carry after step t is the ``h_prev`` of the next processed step
    (t+1, or t-1 when the scan runs in reverse), and the final carry after the
    last one; the output is that carry on real steps and 0 past the length::

        y_t = m_t ⊙ h_t,    h_t = h_prev_{t+1}  (h_T = final hidden)
    """
    if scan_reverse:
        hs = jnp.concatenate([final_h[None], h_prev[:-1]], axis=0)
    else:
        hs = jnp.concatenate([h_prev[1:], final_h[None]], axis=0)
    return hs if mask is None else jnp.where(mask[..., None], hs, jnp.zeros_like(hs))


def _backward_scan(name, params, residuals, dys_tm, dfinal, mask, *, scan_reverse, cd, unroll):
    """Time-major backward over the residuals of :func:`_forward_scan`.

    Runs ``jax.lax.scan`` in the direction opposite to the forward, over all T
    steps (down to the first processed step). Carry: ``dL/dcarry_t``. Emits
    the pre-activation gradients; returns ``(dz_in (T,B,G*H), dz_rec (T,B,G*H) or None, dcarry_0)``.
    """

    def body(dcarry, inp):
        dy_t, res_t, m_t = inp
        if name == "lstm":
            dh = dcarry.hidden + dy_t
            dc = dcarry.cell
            if m_t is not None:
                valid = m_t[:, None]
                dh = jnp.where(valid, dh, 0.0)
                dc = jnp.where(valid, dc, 0.0)
            dz_in, dz_rec, dprev = _lstm_step_bwd(params, res_t, dh, dc, cd)
        else:
            dh = dcarry + dy_t
            if m_t is not None:
                valid = m_t[:, None]
                dh = jnp.where(valid, dh, 0.0)
            step_bwd = _rnn_step_bwd if name == "rnn" else _gru_step_bwd
            dz_in, dz_rec, dprev = step_bwd(params, res_t, dh, cd)
        if m_t is not None:
            # Frozen step: carry_t = carry_{t-1}, so the gradient passes straight through.
            dprev = _where(m_t[:, None], dprev, dcarry)
        out = (dz_in, dz_rec) if name == "gru" else (dz_in, None)
        return dprev, out

    dcarry0, (dz_in, dz_rec) = jax.lax.scan(
        body, dfinal, (dys_tm, residuals, mask), reverse=not scan_reverse, unroll=unroll
    )
    return dz_in, dz_rec, dcarry0


def _prepare(cell, params, xs, carry, lengths, reverse, compute_dtype):
    name = _cell_name(cell)
    hidden = _check_params(name, params)
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"{name}: xs must have shape (batch, time, features); got shape {xs.shape}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"{name}: xs must be a floating dtype, got {xs.dtype}")
    batch, seq_len, feats = xs.shape
    if seq_len == 0:
        raise ValueError(f"{name}: xs has an empty time axis (shape {xs.shape})")
    if feats != params["w_x"].shape[0]:
        raise ValueError(f"{name}: xs has {feats} features but w_x expects {params['w_x'].shape[0]}")
    _check_carry(name, carry, batch, hidden, "carry")
    if lengths is not None:
        lengths = _check_lengths(lengths, batch, seq_len)
    return name, hidden, xs, lengths, _normalize_compute_dtype(compute_dtype), bool(reverse)


def _mask(lengths, seq_len):
    if lengths is None:
        return None
    return jnp.arange(seq_len)[:, None] < lengths[None, :]  # (T, B)


def _run_forward(name, params, xs, carry, lengths, reverse, cd, unroll, with_cache):
    """Shared by :func:`forward` and the custom_vjp primal. Returns ``(ys, final, xs_tm, residuals)``."""
    if reverse and lengths is not None:
        xs = _flip_within_lengths(xs, lengths)
    xs_tm = jnp.swapaxes(xs, 0, 1)
    scan_reverse = reverse and lengths is None
    ys_tm, final, residuals = _forward_scan(
        name, params, xs_tm, carry, _mask(lengths, xs.shape[1]),
        scan_reverse=scan_reverse, cd=cd, unroll=unroll, with_cache=with_cache,
    )
    ys = jnp.swapaxes(ys_tm, 0, 1)
    if reverse and lengths is not None:
        ys = _flip_within_lengths(ys, lengths)
    return ys, final, xs_tm, residuals


def forward(
    cell: str | Cell,
    params: dict,
    xs: Array,
    carry: Any,
    *,
    lengths: Array | None = None,
    reverse: bool = False,
    compute_dtype=None,
    unroll: int = 1,
):
    """Run one layer of ``cell`` over ``xs`` and keep what :func:`backward` needs.

    Same semantics (and outputs, up to float rounding) as
    :func:`lstm_jax.layers.scan_layer` with the cell's step function; the
    per-step equations are those of ``_rnn_step_fwd`` / ``_lstm_step_fwd`` /
    ``_gru_step_fwd`` (see the module docstring and :mod:`lstm_jax.cells`).

    Args:
        cell: ``"rnn" | "lstm" | "gru"`` or a :class:`~lstm_jax.cells.Cell`.
        params: the cell's params dict.
        xs: ``(B, T, I)``.
        carry: initial carry, ``(B, H)`` (``LSTMCarry`` of two for lstm).
        lengths: optional ``(B,)`` int real lengths (carry frozen, outputs 0 past them).
        reverse: read each sequence from its end (outputs stay in input order).
        compute_dtype: optional matmul dtype (e.g. ``jnp.bfloat16``), used in
            the backward's matmuls too; accumulation stays in the params dtype.
        unroll: ``jax.lax.scan`` unroll, for both scans.

    Returns:
        ``(ys (B,T,H), final_carry, cache)`` with ``cache`` a :class:`LayerCache`.
    """
    name, _, xs, lengths, cd, reverse = _prepare(cell, params, xs, carry, lengths, reverse, compute_dtype)
    ys, final, xs_tm, residuals = _run_forward(name, params, xs, carry, lengths, reverse, cd, unroll, True)
    cache = LayerCache(
        cell=name, reverse=reverse, compute_dtype=cd, unroll=int(unroll),
        params=params, xs=xs_tm, lengths=lengths, residuals=residuals,
    )
    return ys, final, cache


def _check_cache(cache, what="backward") -> None:
    if cache is None:
        raise TypeError(f"{what}: missing cache; pass the cache returned by forward(...) (got None)")
    if not isinstance(cache, LayerCache):
        raise TypeError(
            f"{what}: cache must be the LayerCache returned by forward(...), got {type(cache).__name__}"
        )
    name = cache.cell
    if name not in RESIDUALS:
        raise ValueError(f"{what}: cache has unknown cell {name!r}")
    if not isinstance(cache.residuals, dict):
        raise TypeError(f"{what}: cache.residuals must be a dict, got {type(cache.residuals).__name__}")
    missing = [k for k in RESIDUALS[name] if k not in cache.residuals]
    if missing:
        raise ValueError(
            f"{what}: incomplete cache for {name}: missing residuals {missing} "
            f"(needs {RESIDUALS[name]}); was it built by forward(..., cell={name!r})?"
        )
    if cache.params is None or cache.xs is None:
        raise ValueError(f"{what}: incomplete cache: params and xs must be kept")
    _check_params(name, cache.params)
    seq_len, batch = cache.xs.shape[:2]
    hidden = cache.params["w_h"].shape[0]
    for k in RESIDUALS[name]:
        r = cache.residuals[k]
        width = NUM_GATES[name] * hidden if k == "gates" else hidden
        if getattr(r, "shape", None) != (seq_len, batch, width):
            raise ValueError(
                f"{what}: cache residual {k!r} has shape {getattr(r, 'shape', None)}, "
                f"expected {(seq_len, batch, width)}"
            )


def _zeros_carry(name, batch, hidden, dtype):
    z = jnp.zeros((batch, hidden), dtype)
    return LSTMCarry(hidden=z, cell=z) if name == "lstm" else z


def backward(cache: LayerCache, dys: Array | None, dfinal: Any = None) -> Grads:
    """Hand-derived BPTT for one layer: gradients of every parameter, the inputs and the initial carry.

    Given ``dys = dL/dys`` ``(B, T, H)`` and ``dfinal = dL/d(final carry)``
    (either may be ``None`` for zero), walks time in reverse through all
    steps. Per step (details in ``_rnn_step_bwd`` / ``_lstm_step_bwd`` /
    ``_gru_step_bwd``)::

        dh_t        = m_t ⊙ (dL/dcarry_t[h] + dys_t)        # m_t = 1 without lengths
        dz_t, dcarry_{t-1}' = cell_backward(dh_t, dL/dcarry_t[c])
        dL/dcarry_{t-1} = m_t ? dcarry_{t-1}' : dL/dcarry_t  # frozen steps pass through

    then, over all steps at once::

        dW_x = Σ_t x_tᵀ dz_t        dW_h = Σ_t h_{t-1}ᵀ dz_t     db = Σ_{t,b} dz_t
        dx_t = dz_t W_xᵀ            (gru: dz for W_h/b_h uses r ⊙ ds_n in the n block)

    Returns:
        :class:`Grads` ``(params dict, xs (B,T,I), carry like the initial carry)``.

    Raises:
        TypeError / ValueError on a missing or incomplete cache, or on
        ``dys`` / ``dfinal`` of the wrong shape.
    """
    _check_cache(cache)
    name, params = cache.cell, cache.params
    seq_len, batch, _ = cache.xs.shape
    hidden = params["w_h"].shape[0]
    dtype = cache.residuals["h_prev"].dtype
    cd = cache.compute_dtype
    if dys is None:
        dys = jnp.zeros((batch, seq_len, hidden), dtype)
    dys = jnp.asarray(dys)
    if dys.shape != (batch, seq_len, hidden):
        raise ValueError(
            f"backward ({name}): dys must have the shape of ys, (batch, time, hidden) = "
            f"{(batch, seq_len, hidden)}; got {dys.shape}"
        )
    if dfinal is None:
        dfinal = _zeros_carry(name, batch, hidden, dtype)
    if name == "lstm" and isinstance(dfinal, tuple) and not isinstance(dfinal, LSTMCarry) and len(dfinal) == 2:
        dfinal = LSTMCarry(*dfinal)
    _check_carry(name, dfinal, batch, hidden, "dfinal (gradient of the final carry)")
    dys = dys.astype(dtype)
    dfinal = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), dfinal)

    lengths = cache.lengths
    flipped = cache.reverse and lengths is not None
    if flipped:
        dys = _flip_within_lengths(dys, lengths)
    dys_tm = jnp.swapaxes(dys, 0, 1)
    scan_reverse = cache.reverse and lengths is None
    dz_in, dz_rec, dcarry0 = _backward_scan(
        name, params, cache.residuals, dys_tm, dfinal, _mask(lengths, seq_len),
        scan_reverse=scan_reverse, cd=cd, unroll=cache.unroll,
    )
    if dz_rec is None:
        dz_rec = dz_in
    pdtype = params["w_x"].dtype
    grads = {
        "w_x": _mm_sum(cache.xs, dz_in, cd, pdtype),
        "w_h": _mm_sum(cache.residuals["h_prev"], dz_rec, cd, pdtype),
    }
    if name == "gru":
        grads["b_x"] = dz_in.sum(axis=(0, 1)).astype(params["b_x"].dtype)
        grads["b_h"] = dz_rec.sum(axis=(0, 1)).astype(params["b_h"].dtype)
    else:
        grads["b"] = dz_in.sum(axis=(0, 1)).astype(params["b"].dtype)
    dxs = jnp.swapaxes(_mm(dz_in, params["w_x"].T, cd, dtype), 0, 1).astype(cache.xs.dtype)
    if flipped:
        dxs = _flip_within_lengths(dxs, lengths)
    return Grads(params=grads, xs=dxs, carry=dcarry0)


# Per-cell entry points (thin, so each cell's pair can be called and documented on its own).


def rnn_forward(params, xs, h0, *, lengths=None, reverse=False, compute_dtype=None, unroll=1):
    """Elman RNN over a sequence with cache: ``h_t = tanh(x_t W_x + h_{t-1} W_h + b)``.
    Returns ``(ys, h_T, cache)``; see :func:`forward`."""
    return forward("rnn", params, xs, h0, lengths=lengths, reverse=reverse, compute_dtype=compute_dtype, unroll=unroll)


def rnn_backward(cache, dys, dh_final=None) -> Grads:
    """Elman BPTT: ``dz_t = (dys_t + dh_t) ⊙ (1 - h_t²)``, ``dh_{t-1} = dz_t W_hᵀ``,
    ``dW_x = Σ x_tᵀ dz_t``, ``dW_h = Σ h_{t-1}ᵀ dz_t``, ``db = Σ dz_t``, ``dx_t = dz_t W_xᵀ``.
    See :func:`backward`."""
    _check_cell(cache, "rnn")
    return backward(cache, dys, dh_final)


def lstm_forward(params, xs, carry0, *, lengths=None, reverse=False, compute_dtype=None, unroll=1):
    """LSTM over a sequence with cache: ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``,
    gates from ``z_t = x_t W_x + h_{t-1} W_h + b`` (i|f|g|o). Returns ``(ys, LSTMCarry, cache)``."""
    return forward("lstm", params, xs, carry0, lengths=lengths, reverse=reverse, compute_dtype=compute_dtype, unroll=unroll)


def lstm_backward(cache, dys, dcarry_final=None) -> Grads:
    """LSTM BPTT (per step)::

        dc_t' = dc_t + dh_t ⊙ o ⊙ (1 - tanh²c_t);  dc_{t-1} = dc_t' ⊙ f
        dz = [dc_t' g ⊙ i(1-i) | dc_t' c_{t-1} ⊙ f(1-f) | dc_t' i ⊙ (1-g²) | dh_t tanh c_t ⊙ o(1-o)]
        dh_{t-1} = dz W_hᵀ

    with ``dh_t = dys_t + (dL/dh_t from step t+1)``. See :func:`backward`."""
    _check_cell(cache, "lstm")
    return backward(cache, dys, dcarry_final)


def gru_forward(params, xs, h0, *, lengths=None, reverse=False, compute_dtype=None, unroll=1):
    """GRU over a sequence with cache: ``h_t = (1-z) ⊙ n + z ⊙ h_{t-1}``,
    ``n = tanh(a_n + r ⊙ (h_{t-1} W_hn + b_hn))``. Returns ``(ys, h_T, cache)``."""
    return forward("gru", params, xs, h0, lengths=lengths, reverse=reverse, compute_dtype=compute_dtype, unroll=unroll)


def gru_backward(cache, dys, dh_final=None) -> Grads:
    """GRU BPTT (per step)::

        dn = dh (1-z);  dz = dh (h_{t-1} - n);  ds_n = dn (1-n²);  dr = ds_n u_n
        da = [dr r(1-r) | dz z(1-z) | ds_n],  du = [dr r(1-r) | dz z(1-z) | ds_n r]
        dh_{t-1} = dh z + du W_hᵀ

    See :func:`backward`."""
    _check_cell(cache, "gru")
    return backward(cache, dys, dh_final)


def _check_cell(cache, name):
    _check_cache(cache, f"{name}_backward")
    if cache.cell != name:
        raise ValueError(f"{name}_backward got a cache built for cell {cache.cell!r}")


# ---------------------------------------------------------------------------
# Stacks (multi-layer, bidirectional)


def stack_forward(
    cell: str | Cell,
    params: list,
    xs: Array,
    carry: list | None = None,
    *,
    lengths: Array | None = None,
    compute_dtype=None,
    unroll: int = 1,
):
    """:func:`lstm_jax.layers.apply_stack` (without dropout) with a cache for :func:`stack_backward`.

    Layer k's output sequence is layer k+1's input; a bidirectional layer
    concatenates ``[forward ys | backward ys]`` on the feature axis::

        h^0 = xs;   h^k = layer_k(h^{k-1})   (or [fwd_k(h^{k-1}) | bwd_k(h^{k-1})])

    Returns ``(ys, finals, StackCache)``.
    """
    name = _cell_name(cell)
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError("params must be a non-empty list of per-layer params (see init_stack)")
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (batch, time, features); got shape {xs.shape}")
    if carry is None:
        from .layers import zeros_stack_carry

        carry = zeros_stack_carry(name, params, xs.shape[:1])
    elif len(carry) != len(params):
        raise ValueError(f"carry has {len(carry)} layers but params has {len(params)}")
    kw = dict(lengths=lengths, compute_dtype=compute_dtype, unroll=unroll)
    h, finals, caches = xs, [], []
    for p, c in zip(params, carry):
        if _is_bidirectional(p):
            ys_f, fin_f, cache_f = forward(name, p["forward"], h, c["forward"], **kw)
            ys_b, fin_b, cache_b = forward(name, p["backward"], h, c["backward"], reverse=True, **kw)
            h = jnp.concatenate([ys_f, ys_b], axis=-1)
            finals.append({"forward": fin_f, "backward": fin_b})
            caches.append({"forward": cache_f, "backward": cache_b})
        else:
            h, fin, cache = forward(name, p, h, c, **kw)
            finals.append(fin)
            caches.append(cache)
    return h, finals, StackCache(cell=name, layers=caches)


def stack_backward(cache: StackCache, dys: Array | None, dfinals: list | None = None) -> Grads:
    """BPTT through a stack: layers in reverse order, each layer's ``dxs`` is the ``dys`` of the one below::

        g^K = dys
        for k = K..1:   (dparams_k, g^{k-1}, dcarry0_k) = backward_k(g^k, dfinal_k)
        bidirectional:  g^k = [g_fwd | g_bwd] split on features; g^{k-1} = dxs_fwd + dxs_bwd

    Returns :class:`Grads` with ``params`` and ``carry`` as lists per layer.
    """
    if cache is None:
        raise TypeError("stack_backward: missing cache; pass the cache returned by stack_forward(...)")
    if not isinstance(cache, StackCache):
        raise TypeError(f"stack_backward: cache must be a StackCache from stack_forward, got {type(cache).__name__}")
    layers = cache.layers
    if dfinals is None:
        dfinals = [None] * len(layers)
    if len(dfinals) != len(layers):
        raise ValueError(f"dfinals has {len(dfinals)} layers but the stack has {len(layers)}")
    g = dys
    dparams = [None] * len(layers)
    dcarry = [None] * len(layers)
    for k in reversed(range(len(layers))):
        lc, df = layers[k], dfinals[k]
        if isinstance(lc, dict):
            _check_cache(lc.get("forward"), f"stack_backward (layer {k}, forward)")
            _check_cache(lc.get("backward"), f"stack_backward (layer {k}, backward)")
            hid = lc["forward"].params["w_h"].shape[0]
            if g is not None:
                g = jnp.asarray(g)
                if g.shape[-1] != 2 * hid:
                    raise ValueError(
                        f"stack_backward: gradient into bidirectional layer {k} has {g.shape[-1]} "
                        f"features, expected 2 * hidden = {2 * hid}"
                    )
            df = df or {}
            gf = backward(lc["forward"], None if g is None else g[..., :hid], df.get("forward"))
            gb = backward(lc["backward"], None if g is None else g[..., hid:], df.get("backward"))
            dparams[k] = {"forward": gf.params, "backward": gb.params}
            dcarry[k] = {"forward": gf.carry, "backward": gb.carry}
            g = gf.xs + gb.xs
        else:
            _check_cache(lc, f"stack_backward (layer {k})")
            gl = backward(lc, g, df)
            dparams[k], dcarry[k] = gl.params, gl.carry
            g = gl.xs
    return Grads(params=dparams, xs=g, carry=dcarry)


# ---------------------------------------------------------------------------
# custom_vjp layer: jax.grad of a model uses the hand-written backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _manual_vjp(name, reverse, unroll, cd, params, xs, carry, lengths):
    ys, final, _, _ = _run_forward(name, params, xs, carry, lengths, reverse, cd, unroll, False)
    return ys, final


def _manual_vjp_fwd(name, reverse, unroll, cd, params, xs, carry, lengths):
    ys, final, xs_tm, residuals = _run_forward(name, params, xs, carry, lengths, reverse, cd, unroll, True)
    cache = LayerCache(
        cell=name, reverse=reverse, compute_dtype=cd, unroll=unroll,
        params=params, xs=xs_tm, lengths=lengths, residuals=residuals,
    )
    return (ys, final), cache


def _manual_vjp_bwd(name, reverse, unroll, cd, cache, cotangents):
    dys, dfinal = cotangents
    g = backward(cache, dys, dfinal)
    # Cotangents must carry the primal dtypes.
    dparams = {k: g.params[k].astype(cache.params[k].dtype) for k in cache.params}
    return dparams, g.xs.astype(cache.xs.dtype), g.carry, None


_manual_vjp.defvjp(_manual_vjp_fwd, _manual_vjp_bwd)


def manual_layer(cell, params, xs, carry, *, reverse=False, lengths=None, unroll=1, compute_dtype=None):
    """Layer implementation ``"manual"`` (see :func:`lstm_jax.layers.layer_impl`).

    Same forward as the reference scan layer; under ``jax.grad`` its backward
    is :func:`backward` (hand-derived), installed with ``jax.custom_vjp``.
    Gradients flow to ``params``, ``xs`` and ``carry``; ``lengths`` is
    integer data (zero cotangent). Forward-mode (``jax.jvp``) is not defined
    for a custom_vjp function, so use impl ``"scan"`` for that.
    """
    name = _cell_name(cell)
    cd = _normalize_compute_dtype(compute_dtype)
    if not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1:
        raise ValueError(f"unroll must be a positive int, got {unroll!r}")
    xs = jnp.asarray(xs)
    if xs.ndim == 2:  # one unbatched sequence, as scan_layer accepts
        return with_batch_axis(
            functools.partial(manual_layer, name, params), xs, carry, lengths=lengths,
            reverse=reverse, unroll=unroll, compute_dtype=compute_dtype,
        )
    _prepare(name, params, xs, carry, lengths, reverse, cd)  # validate eagerly, with clear messages
    if lengths is not None:
        lengths = _check_lengths(lengths, xs.shape[0], xs.shape[1])
    return _manual_vjp(name, bool(reverse), int(unroll), cd, params, xs, carry, lengths)
