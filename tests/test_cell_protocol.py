"""Adding a cell touches no library file, and every implementation answers the same mistake the same way.

The leaky RNN below is defined here, in the test, from the protocol of
``lstm_jax/cells/base.py`` only (a recurrence and its backward step); it must
then run through every registered implementation, stacks, bidirectional
padded batches and the hand-derived BPTT, agreeing with a plain Python loop
and with ``jax.grad``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import bptt
from lstm_jax.cells import Cell, LSTMCarry, get_cell, init_lstm, zeros_carry
from lstm_jax.cells.base import glorot_uniform, matmul, orthogonal_blocks
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

LEAK = 0.5


def leaky_recurrence(params, h_prev, xw_t, compute_dtype=None):
    """``s_t = tanh(xw_t + h_{t-1} @ w_h)``, ``h_t = (1 - a) h_{t-1} + a s_t``, ``a = LEAK``."""
    s = jnp.tanh(xw_t + matmul(h_prev, params["w_h"], compute_dtype, h_prev.dtype))
    h = (1.0 - LEAK) * h_prev + LEAK * s
    return h, h, {"h_prev": h_prev, "s": s}


def leaky_backward_step(params, res, dh_next, dy, compute_dtype=None):
    """``dz = dh a (1 - s²)``, ``dh_{t-1} = dh (1 - a) + dz @ w_hᵀ`` with ``dh = dh_next + dy``."""
    dh = dh_next + dy
    dz = dh * LEAK * (1.0 - res["s"] ** 2)
    return dz, None, dh * (1.0 - LEAK) + matmul(dz, params["w_h"].T, compute_dtype, dh.dtype)


def init_leaky(key, input_size, hidden_size, dtype=jnp.float32):
    k_x, k_h, k_b = jax.random.split(key, 3)
    return {
        "w_x": glorot_uniform(k_x, input_size, hidden_size, dtype),
        "w_h": orthogonal_blocks(k_h, hidden_size, 1, dtype),
        "b": 0.1 * jax.random.normal(k_b, (hidden_size,), dtype),
    }


LEAKY = Cell(
    name="leaky_rnn", init=init_leaky, zeros_carry=zeros_carry, recurrence=leaky_recurrence, num_gates=1,
    backward_step=leaky_backward_step,
)


def python_loop(params, xs, h0):
    """The equations written out directly, one example and one step at a time (no library code)."""
    ys = np.zeros(xs.shape[:2] + (h0.shape[-1],))
    h = np.array(h0, dtype=np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    for t in range(xs.shape[1]):
        s = np.tanh(np.asarray(xs[:, t], np.float64) @ p["w_x"] + p["b"] + h @ p["w_h"])
        h = (1 - LEAK) * h + LEAK * s
        ys[:, t] = h
    return ys, h


def skip_unless_runs(impl: str, cell) -> None:
    """An impl that does not run ``cell`` (``"parallel"``: linear recurrences only) or cannot run on
    this machine is skipped visibly; ``tests/test_impls.py`` checks that it refuses the cell with one clear error."""
    cell = cell if isinstance(cell, Cell) else get_cell(cell)
    if not IMPLS[impl].supports(cell):
        pytest.skip(f"impl {impl!r} does not run cell {cell.name!r}")
    if IMPLS[impl].unavailable() is not None:  # e.g. "cudnn" without a GPU; tests/test_cudnn.py checks the refusal
        pytest.skip(IMPLS[impl].unavailable())


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_toy_cell_runs_through_every_impl(impl):
    skip_unless_runs(impl, LEAKY)
    params = init_leaky(jax.random.PRNGKey(0), 3, 5)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 3))
    h0 = 0.3 * jax.random.normal(jax.random.PRNGKey(2), (2, 5))
    ys, final = layer_impl(impl)(LEAKY, params, xs, h0)
    ys_ref, final_ref = python_loop(params, xs, h0)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final, final_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", sorted(set(IMPLS) - {"scan"}))
def test_toy_cell_stack_gradients_match_reference(impl):
    skip_unless_runs(impl, LEAKY)
    params = init_stack(jax.random.PRNGKey(3), LEAKY, 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(4), (3, 6, 3))
    carry = jax.tree_util.tree_map(lambda z: z + 0.2, zeros_stack_carry(LEAKY, params, (3,)))
    lengths = jnp.array([6, 2, 0])

    def loss(name, params, xs, carry):
        ys, finals = apply_stack(LEAKY, params, xs, carry, lengths=lengths, impl=name)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(finals))

    ref = jax.value_and_grad(functools.partial(loss, "scan"), argnums=(0, 1, 2))(params, xs, carry)
    got = jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2))(params, xs, carry)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_toy_cell_hand_bptt_matches_autodiff_float64():
    with jax.enable_x64(True):
        params = init_stack(jax.random.PRNGKey(5), LEAKY, 2, 3, num_layers=2, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(6), (2, 5, 2), jnp.float64)
        dys = jax.random.normal(jax.random.PRNGKey(7), (2, 5, 3), jnp.float64)
        _, _, cache = bptt.stack_forward(LEAKY, params, xs)
        manual = bptt.stack_backward(cache, dys)

        def loss(params, xs):
            return jnp.sum(apply_stack(LEAKY, params, xs, impl="scan")[0] * dys)

        auto_params, auto_xs = jax.grad(loss, argnums=(0, 1))(params, xs)
        np.testing.assert_allclose(manual.xs, auto_xs, rtol=1e-10, atol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(manual.params), jax.tree_util.tree_leaves(auto_params)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_cell_without_backward_step_runs_with_autodiff_impls_and_is_refused_by_manual():
    import dataclasses

    no_bwd = dataclasses.replace(LEAKY, name="leaky_autodiff_only", backward_step=None)
    params = init_leaky(jax.random.PRNGKey(0), 3, 4)
    xs, h0 = jnp.ones((2, 4, 3)), jnp.zeros((2, 4))
    for name in ("scan", "hoisted"):
        layer_impl(name)(no_bwd, params, xs, h0)
    for name in ("manual", "remat"):
        with pytest.raises(ValueError, match="backward_step"):
            layer_impl(name)(no_bwd, params, xs, h0)


# ---------------------------------------------------------------------------
# One message per mistake, whatever the implementation


def _messages(call) -> set:
    """The (type, message) each implementation raises for ``call(impl)``."""
    seen = set()
    for name in sorted(IMPLS):
        with pytest.raises((TypeError, ValueError)) as err:
            call(layer_impl(name))
        seen.add((err.type, str(err.value)))
    return seen


LSTM_P = init_lstm(jax.random.PRNGKey(0), 3, 4)
XS = jnp.ones((2, 5, 3))
CARRY = LSTMCarry(jnp.zeros((2, 4)), jnp.zeros((2, 4)))


def test_params_of_another_cell_same_error_everywhere():
    (kind, msg), = _messages(lambda f: f("gru", LSTM_P, XS, jnp.zeros((2, 4))))
    assert kind is ValueError and "params missing ['b_x', 'b_h']" in msg and "another cell" in msg


def test_unroll_zero_same_error_everywhere():
    (kind, msg), = _messages(lambda f: f("lstm", LSTM_P, XS, CARRY, unroll=0))
    assert kind is ValueError and "unroll must be a positive int, got 0" in msg


def test_tuple_carry_same_error_everywhere():
    (kind, msg), = _messages(lambda f: f("lstm", LSTM_P, XS, (CARRY.hidden, CARRY.cell)))
    assert kind is TypeError and "LSTMCarry(hidden, cell)" in msg and "tuple" in msg


def test_float16_carry_names_both_dtypes():
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), CARRY)
    (kind, msg), = _messages(lambda f: f("lstm", LSTM_P, XS, half))
    assert kind is TypeError and "float16" in msg and "float32" in msg


def test_wrong_features_and_lengths_same_error_everywhere():
    (_, msg), = _messages(lambda f: f("lstm", LSTM_P, jnp.ones((2, 5, 6)), CARRY))
    assert "x_t has 6 features" in msg and "input_size=3" in msg
    (_, msg), = _messages(lambda f: f("lstm", LSTM_P, XS, CARRY, lengths=jnp.array([9, 1])))
    assert "lengths must lie in [0, seq_len=5]" in msg


def test_bidirectional_params_with_unidirectional_carry():
    params = init_stack(jax.random.PRNGKey(0), "lstm", 3, 4, bidirectional=True)
    with pytest.raises(TypeError, match=r"layer 0 is bidirectional.*'forward'.*got LSTMCarry"):
        apply_stack("lstm", params, XS, [CARRY])


def test_impl_options_by_name():
    remat = layer_impl("remat", segment=2, inner="scan")
    assert dict(remat.options) == {"segment": 2, "inner": "scan"}
    ys, _ = apply_stack("lstm", [LSTM_P], XS, impl=remat)
    ys_ref, _ = apply_stack("lstm", [LSTM_P], XS, impl="scan")
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="segment must be a positive int"):
        layer_impl("remat", segment=0)
    with pytest.raises(ValueError, match="layer impl 'scan'.*segment"):
        layer_impl("scan", segment=4)
    with pytest.raises(ValueError, match="inner must be one of"):
        layer_impl("remat", inner="fused")


# ---------------------------------------------------------------------------
# Padding and lengths under jit: never NaN, the same rule in every implementation


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_nan_padding_changes_nothing(impl):
    skip_unless_runs(impl, "lstm")
    params = init_stack(jax.random.PRNGKey(0), "lstm", 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 3))
    lengths = jnp.array([6, 2, 0])
    pad = jnp.arange(6)[None, :, None] >= lengths[:, None, None]
    poisoned = jnp.where(pad, jnp.nan, xs)

    def loss(params, xs):
        ys, finals = apply_stack("lstm", params, xs, lengths=lengths, impl=impl)
        return jnp.sum(ys**2) + sum(jnp.sum(f) for f in jax.tree_util.tree_leaves(finals))

    clean = jax.value_and_grad(loss, argnums=(0, 1))(params, jnp.where(pad, 0.0, xs))
    dirty = jax.value_and_grad(loss, argnums=(0, 1))(params, poisoned)
    for a, b in zip(jax.tree_util.tree_leaves(dirty), jax.tree_util.tree_leaves(clean)):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_traced_lengths_are_clipped_like_eager(impl):
    skip_unless_runs(impl, "gru")
    params = init_stack(jax.random.PRNGKey(2), "gru", 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 3))
    run = jax.jit(lambda xs, lengths: apply_stack("gru", params, xs, lengths=lengths, impl=impl))
    ys, finals = run(xs, jnp.array([9, -1, 3]))
    ys_ref, finals_ref = apply_stack("gru", params, xs, lengths=jnp.array([5, 0, 3]), impl=impl)
    for a, b in zip(jax.tree_util.tree_leaves((ys, finals)), jax.tree_util.tree_leaves((ys_ref, finals_ref))):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["scan", "manual"])
def test_with_length_checks_reports_traced_out_of_range_lengths(impl):
    """The opt-in debug mode: under jit, lengths outside [0, T] raise (naming them) instead of being clipped."""
    from jax.experimental import checkify

    from lstm_jax.sequence import with_length_checks

    params = init_stack(jax.random.PRNGKey(2), "lstm", 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(3), (3, 5, 3))

    def total(xs, lengths, checked=False):
        return jnp.sum(apply_stack("lstm", params, xs, lengths=lengths, impl=impl, checked_lengths=checked)[0])

    checked = with_length_checks(jax.jit(functools.partial(total, checked=True)))
    good = jnp.array([5, 0, 3])
    np.testing.assert_allclose(checked(xs, good), jax.jit(total)(xs, good), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(total)(xs, jnp.array([9, -1, 3])), jax.jit(total)(xs, jnp.array([5, 0, 3])))
    with pytest.raises(checkify.JaxRuntimeError, match=r"lengths must lie in \[0, seq_len=5\]; got min -1, max 9"):
        checked(xs, jnp.array([9, -1, 3]))
