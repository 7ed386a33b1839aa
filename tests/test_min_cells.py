"""minGRU and minLSTM (Feng et al. 2024) and the ``"parallel"`` layer impl (associative scan over time).

The sequential step is the reference: the parallel impl, in log and linear
space, must match ``impl="scan"`` in outputs, final carry and gradients
(params, inputs, initial carry) with padding lengths (0 and full included),
reverse, stacks and T=1; the hand-derived backward must match autodiff.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstm_jax import bptt
from lstm_jax.cells import MIN_GRU, MIN_LSTM, get_cell, init_lstm, min_gru_step, min_lstm_step
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

MIN_CELLS = ["min_gru", "min_lstm"]


def impls_running(cell) -> list:
    """The registered impls that run ``cell`` on this machine (``"cudnn"``: LSTM on a GPU only;
    ``tests/test_impls.py`` checks every refusal)."""
    cell = get_cell(cell)
    return [name for name, impl in IMPLS.items() if impl.supports(cell) and impl.unavailable() is None]
SPACES = ["log", "linear"]
LN3 = math.log(3.0)


def _leaves_close(got, ref, tol, what):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref), what
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isfinite(np.asarray(a)).all(), what
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=what)


# --------------------------------------------------------------------------- one step, by hand


def test_min_gru_one_step_by_hand():
    # x = [1], b = 0, so a = w_x = [a_z | a_h] = [0, ln 3 | 1, -ln 3]:
    #   z  = σ(0), σ(ln 3)          = 1/2, 3/4
    #   h̃  = g(1), g(-ln 3)          = 1 + 0.5, σ(-ln 3) = 1/(1 + 3) = 1/4
    #   h  = (1 - z) h_prev + z h̃ with h_prev = [2, -4]
    #      = [0.5 * 2 + 0.5 * 1.5, 0.25 * (-4) + 0.75 * 0.25] = [1.75, -0.8125]
    params = {"w_x": jnp.array([[0.0, LN3, 1.0, -LN3]]), "b": jnp.zeros(4)}
    h_prev, x = jnp.array([2.0, -4.0]), jnp.array([1.0])
    h, y = min_gru_step(params, h_prev, x)
    np.testing.assert_allclose(h, [1.75, -0.8125], rtol=1e-6)
    np.testing.assert_allclose(y, h)
    # The same step as coefficients: a = 1 - z = [1/2, 1/4], b = z h̃ = [3/4, 3/16].
    log_a, log_b = MIN_GRU.linear_recurrence(params, params["w_x"][0])
    np.testing.assert_allclose(jnp.exp(log_a), [0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(log_b), [0.75, 0.1875], rtol=1e-6)
    # T = 1 through every impl (the parallel scan of a single pair).
    for impl in impls_running(MIN_GRU):
        ys, final = layer_impl(impl)(MIN_GRU, params, x[None, None], h_prev[None])
        np.testing.assert_allclose(ys[0, 0], [1.75, -0.8125], rtol=1e-6, err_msg=impl)
        np.testing.assert_allclose(final[0], [1.75, -0.8125], rtol=1e-6, err_msg=impl)


def test_min_lstm_one_step_by_hand():
    # x = [1], b = 0, so a = w_x = [a_f | a_i | a_h] = [0, ln 3 | 0, -ln 3 | 0.5, 0]:
    #   f  = 1/2, 3/4;   i = 1/2, 1/4
    #   f' = f / (f + i) = 1/2, 3/4;   i' = 1/2, 1/4
    #   h̃  = g(0.5), g(0)             = 1, 0.5
    #   h  = f' h_prev + i' h̃ with h_prev = [2, -4]
    #      = [0.5 * 2 + 0.5 * 1, 0.75 * (-4) + 0.25 * 0.5] = [1.5, -2.875]
    params = {"w_x": jnp.array([[0.0, LN3, 0.0, -LN3, 0.5, 0.0]]), "b": jnp.zeros(6)}
    h_prev, x = jnp.array([2.0, -4.0]), jnp.array([1.0])
    h, _ = min_lstm_step(params, h_prev, x)
    np.testing.assert_allclose(h, [1.5, -2.875], rtol=1e-6)
    log_a, log_b = MIN_LSTM.linear_recurrence(params, params["w_x"][0])
    np.testing.assert_allclose(jnp.exp(log_a), [0.5, 0.75], rtol=1e-6)
    np.testing.assert_allclose(jnp.exp(log_b), [0.5, 0.125], rtol=1e-6)
    for impl in impls_running(MIN_LSTM):
        ys, final = layer_impl(impl)(MIN_LSTM, params, x[None, None], h_prev[None])
        np.testing.assert_allclose(final[0], [1.5, -2.875], rtol=1e-6, err_msg=impl)


def test_normalised_gates_survive_underflowing_sigmoids():
    # a_f = a_i = -200: σ underflows to 0 in float32, yet f' = i' = 1/2 exactly.
    params = {"w_x": jnp.full((1, 3), -200.0).at[0, 2].set(1.0), "b": jnp.zeros(3)}
    h, _ = min_lstm_step(params, jnp.array([3.0]), jnp.array([1.0]))
    np.testing.assert_allclose(h, [0.5 * 3.0 + 0.5 * 1.5], rtol=1e-6)


# --------------------------------------------------------------------------- parallel == sequential


def _setup(cell, T=7, B=4, I=3, H=5, dtype=jnp.float32, seed=0, scale=1.5):
    """Random params of the cell's shapes, inputs and an initial carry (numpy: no per-op compiles)."""
    rng = np.random.default_rng(seed)
    c = get_cell(cell)
    shapes = jax.eval_shape(functools.partial(c.init, input_size=I, hidden_size=H, dtype=dtype), jax.random.PRNGKey(0))
    # Weights ~ Glorot scale; a random bias moves the gates off 1/2 and a_h across both branches of g.
    params = {k: jnp.asarray(rng.normal(size=v.shape) * (I**-0.5 if v.ndim == 2 else 0.5), dtype) for k, v in shapes.items()}
    xs = jnp.asarray(scale * rng.normal(size=(B, T, I)), dtype)
    h0 = jnp.asarray(rng.normal(size=(B, H)), dtype)  # negative entries too: h_0 never goes through a log
    return c, params, xs, h0


def _cases(impl, cell, params, xs, h0, lengths):
    """Both paths through a core at once: a mask, and reverse without one (the front turns reverse
    with lengths into a mask on flipped sequences; no mask at all: the T=1 tests). {case: (ys, final)}."""
    run = layer_impl(impl) if isinstance(impl, str) else impl
    return {
        "lengths": run(cell, params, xs, h0, lengths=lengths),
        "reverse": run(cell, params, xs, h0, reverse=True),
    }


def _weighted(tree):
    """A loss in which every output position and final-carry entry counts differently."""
    total = 0.0
    for k, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        total = total + jnp.sum(jnp.cos(jnp.arange(leaf.size, dtype=leaf.dtype) + k).reshape(leaf.shape) * leaf)
    return total


def _value_and_grads(impl, cell, params, xs, h0, lengths):
    def loss(params, xs, h0):
        out = _cases(impl, cell, params, xs, h0, lengths)
        return _weighted(out), out

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, h0)


@pytest.mark.parametrize(
    "cell,dtype,tol,spaces",
    [
        ("min_gru", jnp.float32, 1e-5, SPACES),
        ("min_lstm", jnp.float32, 1e-5, SPACES),
        ("min_lstm", jnp.float64, 1e-10, ["log"]),
        pytest.param("min_gru", jnp.float64, 1e-10, ["log"], marks=pytest.mark.slow),
    ],
    ids=["min_gru-f32", "min_lstm-f32", "min_lstm-f64", "min_gru-f64"],
)
def test_parallel_matches_scan(cell, dtype, tol, spaces):
    with jax.enable_x64(dtype == jnp.float64):
        c, params, xs, h0 = _setup(cell, dtype=dtype)
        lengths = jnp.array([7, 0, 3, 1])  # full, empty, partial, one step
        (_, ref), g_ref = _value_and_grads("scan", c, params, xs, h0, lengths)
        for space in spaces:
            (_, got), g_got = _value_and_grads(layer_impl("parallel", space=space), c, params, xs, h0, lengths)
            _leaves_close(got, ref, tol, f"{space} outputs")
            _leaves_close(g_got, g_ref, tol, f"{space} gradients")
        # Padding past each length: zero outputs, final carry = carry at the last real step (h_0 if none).
        np.testing.assert_array_equal(got["lengths"][0][1], 0.0)
        np.testing.assert_allclose(got["lengths"][1][1], h0[1], rtol=tol)


@pytest.mark.parametrize("space", SPACES)
def test_parallel_long_saturated_sequence_is_exact_and_finite(space):
    """Gates near 0 and 1 and large candidates over 100 steps, from h_0 = 0 and h_0 < 0: no NaN, no drift."""
    c, params, xs, _ = _setup("min_lstm", T=100, B=2, H=4, seed=3, scale=12.0)
    scan = jax.jit(functools.partial(layer_impl("scan"), c))
    parallel = jax.jit(functools.partial(layer_impl("parallel", space=space), c))
    for h0 in (jnp.zeros((2, 4)), -3.0 * jnp.ones((2, 4))):
        ys_ref, fin_ref = scan(params, xs, h0)
        ys, fin = parallel(params, xs, h0)
        assert np.isfinite(ys).all()
        np.testing.assert_allclose(ys, ys_ref, rtol=2e-5, atol=2e-5 * float(jnp.abs(ys_ref).max()))
        np.testing.assert_allclose(fin, fin_ref, rtol=2e-5, atol=1e-5)


# --------------------------------------------------------------------------- every impl, stacks, hand BPTT


@pytest.mark.parametrize("cell", ["min_lstm", pytest.param("min_gru", marks=pytest.mark.slow)])
def test_every_impl_matches_scan_in_bidirectional_stacks(cell):
    """2-layer bidirectional stacks with lengths (so reverse too) through every impl."""
    B, T, I, H = 3, 4, 2, 3
    params = init_stack(jax.random.PRNGKey(1), cell, I, H, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, I))
    carry = jax.tree_util.tree_map(lambda z: z - 0.4, zeros_stack_carry(cell, params, (B,)))
    lengths = jnp.array([4, 0, 2])

    def loss(impl, params, xs, carry):
        out = apply_stack(cell, params, xs, carry, lengths=lengths, impl=impl)
        return _weighted(out), out

    def run(impl):
        return jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2), has_aux=True))(
            params, xs, carry
        )

    (_, ref), g_ref = run("scan")
    for impl in sorted(set(impls_running(cell)) - {"scan"}):
        (_, got), g_got = run(impl)
        _leaves_close(got, ref, 2e-5, f"{impl} outputs")
        _leaves_close(g_got, g_ref, 1e-4, f"{impl} gradients")


@pytest.mark.parametrize("cell", MIN_CELLS)
def test_hand_backward_matches_autodiff_float64(cell):
    with jax.enable_x64(True):
        c, params, xs, h0 = _setup(cell, T=5, B=3, dtype=jnp.float64, seed=4)
        lengths = jnp.array([5, 2, 0])
        dys = jax.random.normal(jax.random.PRNGKey(5), (3, 5, 5), jnp.float64)
        dfinal = jax.random.normal(jax.random.PRNGKey(6), (3, 5), jnp.float64)
        _, _, cache = bptt.forward(c, params, xs, h0, lengths=lengths)
        manual = bptt.backward(cache, dys, dfinal)

        def loss(params, xs, h0):
            ys, fin = layer_impl("scan")(c, params, xs, h0, lengths=lengths)
            return jnp.sum(ys * dys) + jnp.sum(fin * dfinal)

        auto = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, xs, h0)
        _leaves_close(tuple(manual), auto, 1e-10, "hand BPTT")


@pytest.mark.parametrize("impl", ["parallel", "manual"])
def test_nan_padding_changes_nothing(impl):
    params = init_stack(jax.random.PRNGKey(0), "min_lstm", 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 3))
    lengths = jnp.array([6, 2, 0])
    pad = jnp.arange(6)[None, :, None] >= lengths[:, None, None]

    def loss(params, xs):
        ys, finals = apply_stack("min_lstm", params, xs, lengths=lengths, impl=impl)
        return _weighted((ys, finals))

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    clean = run(params, jnp.where(pad, 0.0, xs))
    dirty = run(params, jnp.where(pad, jnp.nan, xs))
    _leaves_close(dirty, clean, 1e-6, "NaN padding")


# --------------------------------------------------------------------------- bad input


def test_parallel_refuses_nonlinear_cells_in_one_line():
    params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    carry = get_cell("lstm").zeros_carry(4, (2,))
    with pytest.raises(ValueError) as err:
        layer_impl("parallel")("lstm", params, jnp.ones((2, 5, 3)), carry)
    msg = str(err.value)
    assert "\n" not in msg and "'lstm'" in msg and "linear in the state" in msg
    assert "min_gru, min_lstm" in msg and "scan, hoisted, manual, remat" in msg
    with pytest.raises(ValueError, match=r"space must be one of \['log', 'linear'\]"):
        layer_impl("parallel", space="cumsum")


def test_wrong_params_for_min_cells():
    xs, h0 = jnp.ones((2, 5, 3)), jnp.zeros((2, 4))
    lstm_params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"min_gru: params have unexpected keys \['w_h'\].*another cell"):
        layer_impl("parallel")("min_gru", lstm_params, xs, h0)
    odd = {"w_x": jnp.ones((3, 7)), "b": jnp.zeros(7)}  # 7 is not 2 * H
    with pytest.raises(ValueError, match=r"min_gru: w_x \(3, 7\).*2 gate block"):
        layer_impl("scan")("min_gru", odd, xs, h0)
    params = MIN_LSTM.init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match="x_t has 2 features"):
        layer_impl("parallel")(MIN_LSTM, params, jnp.ones((2, 5, 2)), h0)
    with pytest.raises(ValueError, match=r"h has shape \(2, 3\), expected \(2, 4\)"):
        layer_impl("parallel")(MIN_LSTM, params, xs, jnp.zeros((2, 3)))


# --------------------------------------------------------------------------- models and scripts


def test_char_model_with_min_lstm_trains_and_is_recorded():
    from lstm_jax.models import char_model as cm
    from lstm_jax.models.spec import RecurrentSpec

    vocab, hidden = 7, 16
    spec = RecurrentSpec(cell="min_lstm", hidden=hidden, impl="parallel")
    params = cm.init_char_model(jax.random.PRNGKey(0), vocab, spec)
    assert cm.spec_from_config(cm.model_config(params, spec)) == spec
    ids = jnp.tile(jnp.arange(vocab), 2)[None]  # a cyclic text: each next character is predictable
    inputs, targets = ids[:, :-1], ids[:, 1:]

    opt = optax.adam(0.05)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(
            lambda p: cm.char_loss(p, inputs, targets, spec)[0]
        )(params)
        updates, opt_state = opt.update(grads, opt_state)
        return loss, optax.apply_updates(params, updates), opt_state

    losses, opt_state = [], opt.init(params)
    for _ in range(20):
        loss, params, opt_state = step(params, opt_state)
        losses.append(float(loss))
    assert losses[0] > 1.5 and losses[-1] < 0.5 * losses[0], losses  # ln 7 = 1.95 at the start


def test_experiment_scripts_accept_the_min_cells():
    import importlib

    for name in ("char_lm.char_lstm", "long_range.long_range"):
        parser = importlib.import_module(f"experiments.{name}").build_parser()
        for cell in MIN_CELLS:
            flag = "--cell" if any("--cell" in a.option_strings for a in parser._actions) else "--cells"
            assert getattr(parser.parse_args([flag, cell]), flag[2:]) in (cell, [cell])
