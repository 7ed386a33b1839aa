"""Single-step behaviour of the cells: the hand-worked example, shapes, init, dtypes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import (
    CELLS,
    LSTMCarry,
    get_cell,
    gru_step,
    init_gru,
    init_lstm,
    init_rnn,
    lstm_step,
    lstm_zeros_carry,
    rnn_step,
    zeros_carry,
)


def test_hand_worked_lstm_example():
    """Seed 002: one step from long memory 2, short memory 1, input 1.

    Its twelve numbers, per gate (weight on short memory h, weight on input x, bias):
    forget (2.7, 2.2, 2.3), input (1.1, 0.8, 0.8), candidate (0.4, 1.2, 0.9),
    output (0.3, 2.9, 2.1). The seed's own arithmetic adds the candidate instead
    of multiplying it by the input gate; the correct LSTM gives c = 2.92299.
    """
    # Fused blocks in gate order input | forget | candidate | output.
    params = {
        "w_h": jnp.array([[1.1, 2.7, 0.4, 0.3]]),
        "w_x": jnp.array([[0.8, 2.2, 1.2, 2.9]]),
        "b": jnp.array([0.8, 2.3, 0.9, 2.1]),
    }
    carry = LSTMCarry(hidden=jnp.array([1.0]), cell=jnp.array([2.0]))
    new, y = lstm_step(params, carry, jnp.array([1.0]))
    np.testing.assert_allclose(new.cell, [2.92299], atol=5e-5)
    np.testing.assert_allclose(new.hidden, [0.98930], atol=5e-5)
    np.testing.assert_array_equal(y, new.hidden)
    # Cross-check the arithmetic independently of lstm_step.
    sig = lambda v: 1 / (1 + np.exp(-v))
    c = sig(2.7 + 2.2 + 2.3) * 2.0 + sig(1.1 + 0.8 + 0.8) * np.tanh(0.4 + 1.2 + 0.9)
    assert abs(float(new.cell[0]) - c) < 1e-5


@pytest.mark.parametrize("name", sorted(CELLS))
def test_single_example_equals_batch_row(name):
    cell = get_cell(name)
    params = cell.init(jax.random.PRNGKey(0), 5, 7)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params
    )
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 5))
    carry = jax.tree_util.tree_map(
        lambda z: z + 0.3 * jax.random.normal(jax.random.PRNGKey(3), z.shape),
        cell.zeros_carry(7, (3,)),
    )
    batch_carry, batch_y = cell.step(params, carry, xs)
    assert batch_y.shape == (3, 7)
    for b in range(3):
        one_carry, one_y = cell.step(params, jax.tree_util.tree_map(lambda c: c[b], carry), xs[b])
        assert one_y.shape == (7,)
        np.testing.assert_allclose(one_y, batch_y[b], rtol=1e-6, atol=1e-6)
        for a, c in zip(jax.tree_util.tree_leaves(one_carry), jax.tree_util.tree_leaves(batch_carry)):
            np.testing.assert_allclose(a, c[b], rtol=1e-6, atol=1e-6)


def test_gru_reset_gate_multiplies_hidden_bias():
    """torch.nn.GRU convention: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).

    With zero weights, r = sigmoid(0) = 0.5, so b_hn enters n halved, while
    b_in enters in full: the two biases are not interchangeable.
    """
    H = 2
    params = init_gru(jax.random.PRNGKey(0), 1, H)
    params = jax.tree_util.tree_map(jnp.zeros_like, params)
    params["b_h"] = params["b_h"].at[2 * H :].set(1.0)
    h, _ = gru_step(params, jnp.zeros(H), jnp.zeros(1))
    # z = 0.5, n = tanh(0.5 * 1.0), h = 0.5 * n
    np.testing.assert_allclose(h, 0.5 * np.tanh(0.5), rtol=1e-6)
    params["b_h"] = jnp.zeros(3 * H)
    params["b_x"] = params["b_x"].at[2 * H :].set(1.0)
    h2, _ = gru_step(params, jnp.zeros(H), jnp.zeros(1))
    np.testing.assert_allclose(h2, 0.5 * np.tanh(1.0), rtol=1e-6)


def test_rnn_equation():
    params = init_rnn(jax.random.PRNGKey(0), 3, 4)
    params["b"] = jnp.arange(4.0) / 10
    x, h = jnp.array([0.1, -0.2, 0.3]), jnp.array([0.5, -0.5, 0.25, 0.0])
    new, y = rnn_step(params, h, x)
    expected = np.tanh(np.asarray(x) @ np.asarray(params["w_x"]) + np.asarray(h) @ np.asarray(params["w_h"]) + np.asarray(params["b"]))
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    np.testing.assert_array_equal(new, y)


@pytest.mark.parametrize("name,blocks", [("rnn", 1), ("lstm", 4), ("gru", 3)])
def test_init_shapes_and_defaults(name, blocks):
    I, H = 6, 8
    params = get_cell(name).init(jax.random.PRNGKey(0), I, H)
    assert params["w_x"].shape == (I, blocks * H)
    assert params["w_h"].shape == (H, blocks * H)
    limit = (6.0 / (I + H)) ** 0.5  # Glorot-uniform per block: fan_in=I, fan_out=H
    assert float(jnp.abs(params["w_x"]).max()) <= limit
    assert float(jnp.abs(params["w_x"]).max()) > 0.5 * limit
    # Every recurrent gate block is orthogonal on its own.
    for k in range(blocks):
        block = np.asarray(params["w_h"][:, k * H : (k + 1) * H])
        np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
    # Distinct blocks are independent draws.
    if blocks > 1:
        assert not np.allclose(params["w_h"][:, :H], params["w_h"][:, H : 2 * H])


def test_lstm_forget_bias_lives_in_params():
    H = 5
    params = init_lstm(jax.random.PRNGKey(0), 3, H)
    b = np.asarray(params["b"])
    np.testing.assert_array_equal(b[H : 2 * H], 1.0)
    np.testing.assert_array_equal(np.delete(b, np.s_[H : 2 * H]), 0.0)
    # With zero weights and zero state, the forget gate is exactly sigmoid(1).
    zero_w = {**params, "w_x": jnp.zeros_like(params["w_x"]), "w_h": jnp.zeros_like(params["w_h"])}
    carry = LSTMCarry(hidden=jnp.zeros(H), cell=jnp.ones(H))
    new, _ = lstm_step(zero_w, carry, jnp.zeros(3))
    # c = sigmoid(1) * 1 + sigmoid(0) * tanh(0)
    np.testing.assert_allclose(new.cell, 1 / (1 + np.exp(-1.0)), rtol=1e-6)


def test_init_is_deterministic_per_key():
    a = init_lstm(jax.random.PRNGKey(7), 3, 4)
    b = init_lstm(jax.random.PRNGKey(7), 3, 4)
    c = init_lstm(jax.random.PRNGKey(8), 3, 4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["w_x"], c["w_x"])


@pytest.mark.parametrize("name", sorted(CELLS))
def test_float64_under_x64(name):
    with jax.enable_x64(True):
        cell = get_cell(name)
        params = cell.init(jax.random.PRNGKey(0), 3, 4, jnp.float64)
        carry = cell.zeros_carry(4, (2,), jnp.float64)
        new, y = cell.step(params, carry, jnp.ones((2, 3), jnp.float64))
        assert y.dtype == jnp.float64
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(new))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_bfloat16_compute_keeps_float32_state(name):
    cell = get_cell(name)
    params = cell.init(jax.random.PRNGKey(0), 16, 32)
    carry = cell.zeros_carry(32, (4,))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    new32, y32 = cell.step(params, carry, x)
    new16, y16 = cell.step(params, carry, x, compute_dtype=jnp.bfloat16)
    assert y16.dtype == jnp.float32
    # bf16 has an 8-bit mantissa: close to, but not identical with, float32.
    np.testing.assert_allclose(y16, y32, atol=3e-2)
    assert not np.array_equal(np.asarray(y16), np.asarray(y32))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_jits(name):
    cell = get_cell(name)
    params = cell.init(jax.random.PRNGKey(0), 3, 4)
    carry = cell.zeros_carry(4, (2,))
    x = jnp.ones((2, 3))
    eager = cell.step(params, carry, x)
    jitted = jax.jit(cell.step)(params, carry, x)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


# --- bad input ---------------------------------------------------------------


def test_wrong_feature_size_names_shapes():
    params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"x_t has 5 features.*input_size=3"):
        lstm_step(params, lstm_zeros_carry(4, (2,)), jnp.ones((2, 5)))


def test_wrong_carry_shape_names_shapes():
    params = init_rnn(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"carry h has shape \(2, 5\), expected \(2, 4\)"):
        rnn_step(params, jnp.zeros((2, 5)), jnp.ones((2, 3)))
    params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    bad = LSTMCarry(hidden=jnp.zeros((2, 4)), cell=jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"carry cell has shape \(3, 4\), expected \(2, 4\)"):
        lstm_step(params, bad, jnp.ones((2, 3)))


def test_lstm_carry_must_be_named():
    params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(TypeError, match="LSTMCarry"):
        lstm_step(params, (jnp.zeros(4), jnp.zeros(4)), jnp.ones(3))


def test_rank_errors():
    params = init_gru(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"rank 3 with shape \(1, 2, 3\)"):
        gru_step(params, zeros_carry(4, (1, 2)), jnp.ones((1, 2, 3)))


def test_integer_input_rejected():
    params = init_rnn(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(TypeError, match="floating"):
        rnn_step(params, zeros_carry(4), jnp.ones(3, jnp.int32))


def test_errors_raise_at_trace_time():
    params = init_lstm(jax.random.PRNGKey(0), 3, 4)
    traced = jax.jit(lstm_step)
    with pytest.raises(ValueError, match="input_size=3"):
        traced.lower(params, lstm_zeros_carry(4, (2,)), jnp.ones((2, 5)))


def test_unknown_cell_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown cell 'lstmm'"):
        get_cell("lstmm")
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        init_lstm(jax.random.PRNGKey(0), 3, 0)


def _keep_gate_timescales(name, params, H):
    """``1 / (1 - keep gate)`` per unit at zero weights, input and state: the memory range in steps."""
    zero_w = {**params, "w_x": jnp.zeros_like(params["w_x"]), "w_h": jnp.zeros_like(params["w_h"])}
    if name == "lstm":
        carry = LSTMCarry(hidden=jnp.zeros(H), cell=jnp.ones(H))
        new, _ = lstm_step(zero_w, carry, jnp.zeros(3))
        return 1 / (1 - np.asarray(new.cell))  # c = f * 1 + i * tanh(0) = f
    new, _ = gru_step(zero_w, jnp.ones(H), jnp.zeros(3))  # h = (1 - z) tanh(b_n) + z * 1, b_n = 0
    return 1 / (1 - np.asarray(new))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_chrono_init_spreads_memory_ranges_over_the_sequence(name):
    """Tallec & Ollivier's chrono init: keep-gate bias log u, u ~ U(1, T-1), so each unit remembers ~1+u steps."""
    H, T = 256, 100
    cell = get_cell(name)
    params = cell.init(jax.random.PRNGKey(0), 3, H, jnp.float32)
    chrono = cell.chrono_init(jax.random.PRNGKey(1), params, T)
    for k in ("w_x", "w_h"):  # only the gate biases move
        np.testing.assert_array_equal(chrono[k], params[k])
    timescales = _keep_gate_timescales(name, chrono, H)
    assert timescales.min() >= 2 - 1e-3 and timescales.max() <= T + 1e-2
    assert np.median(timescales) > 30  # spread over [2, T], not a few steps per unit
    assert _keep_gate_timescales(name, params, H).max() < 3.72  # 1 + e (LSTM forget bias 1), 2 (GRU)
    if name == "lstm":  # the input gate writes what the forget gate lets go: b_i = -b_f
        b = np.asarray(chrono["b"])
        np.testing.assert_array_equal(b[:H], -b[H : 2 * H])
        np.testing.assert_array_equal(b[2 * H :], 0.0)
    else:
        np.testing.assert_array_equal(np.delete(np.asarray(chrono["b_x"]), np.s_[H : 2 * H]), 0.0)
        np.testing.assert_array_equal(chrono["b_h"], 0.0)
    other = cell.chrono_init(jax.random.PRNGKey(2), params, T)
    assert not np.array_equal(other["b" if name == "lstm" else "b_x"], chrono["b" if name == "lstm" else "b_x"])


def test_chrono_init_stack_and_its_errors():
    from lstm_jax.stack import chrono_init_stack, init_stack

    layers = init_stack(jax.random.PRNGKey(0), "lstm", 3, 8, num_layers=2, bidirectional=True)
    chrono = chrono_init_stack(jax.random.PRNGKey(1), "lstm", layers, 50)
    forget = [np.asarray(p[d]["b"][8:16]) for p in chrono for d in ("forward", "backward")]
    assert all(0 <= f.min() and f.max() <= np.log(49) for f in forget)
    assert len({f.tobytes() for f in forget}) == 4  # every layer and direction draws its own ranges
    with pytest.raises(ValueError, match=r"cell 'rnn' has no keep gate.*\['lstm', 'gru'\]"):
        chrono_init_stack(jax.random.PRNGKey(1), "rnn", init_stack(jax.random.PRNGKey(0), "rnn", 3, 8), 50)
    with pytest.raises(ValueError, match="max_timescale must be >= 3"):
        chrono_init_stack(jax.random.PRNGKey(1), "lstm", layers, 2)
