"""The scan layer and stacks: padding, reverse, loop equivalence, jit, gradients, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import CELLS, LSTMCarry, get_cell
from lstm_jax.layers import apply_stack, init_stack, layer_impl, scan_layer, zeros_stack_carry

leaves = jax.tree_util.tree_leaves


def random_carry(cell, hidden, batch_shape, key):
    zeros = cell.zeros_carry(hidden, batch_shape)
    keys = iter(jax.random.split(key, 4))
    return jax.tree_util.tree_map(lambda z: 0.5 * jax.random.normal(next(keys), z.shape), zeros)


def random_stack_carry(cell, params, batch_shape, key):
    zeros = zeros_stack_carry(cell, params, batch_shape)
    flat, tree = jax.tree_util.tree_flatten(zeros)
    keys = jax.random.split(key, len(flat))
    return jax.tree_util.tree_unflatten(
        tree, [0.5 * jax.random.normal(k, z.shape) for k, z in zip(keys, flat)]
    )


def assert_trees_close(a, b, **tol):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_equals_python_loop(name, reverse):
    cell = get_cell(name)
    B, T, I, H = 3, 6, 4, 5
    params = cell.init(jax.random.PRNGKey(0), I, H)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    carry0 = random_carry(cell, H, (B,), jax.random.PRNGKey(2))
    ys, final = scan_layer(cell.step, params, xs, carry0, reverse=reverse)

    carry, outs = carry0, [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        carry, outs[t] = cell.step(params, carry, xs[:, t])
    assert ys.shape == (B, T, H)
    np.testing.assert_allclose(ys, jnp.stack(outs, axis=1), rtol=1e-5, atol=1e-6)
    assert_trees_close(final, carry, rtol=1e-5, atol=1e-6)


# Two representative cases in the default run (every cell and impl with lengths and bidirectional
# stacks: tests/test_impls.py, tests/test_cell_protocol.py); all six with -m slow.
_PADDED_FAST = {("lstm", True), ("gru", False)}


@pytest.mark.parametrize(
    "name, bidirectional",
    [pytest.param(n, b, marks=() if (n, b) in _PADDED_FAST else pytest.mark.slow)
     for n in ("gru", "lstm", "rnn") for b in (False, True)],
)
def test_padded_batch_equals_each_sequence_alone(name, bidirectional):
    cell = get_cell(name)
    B, T, I, H = 4, 7, 3, 5
    params = init_stack(jax.random.PRNGKey(0), cell, I, H, num_layers=2, bidirectional=bidirectional)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    lengths = jnp.array([7, 3, 1, 5])
    # Garbage in the padding must not matter.
    pad = jnp.arange(T)[None, :, None] >= lengths[:, None, None]
    xs = jnp.where(pad, 1e3, xs)
    carry0 = random_stack_carry(cell, params, (B,), jax.random.PRNGKey(2))
    ys, finals = apply_stack(cell, params, xs, carry0, lengths=lengths)
    width = H * (2 if bidirectional else 1)
    assert ys.shape == (B, T, width)
    for b in range(B):
        L = int(lengths[b])
        carry_b = jax.tree_util.tree_map(lambda c: c[b], carry0)
        ys_b, finals_b = apply_stack(cell, params, xs[b, :L], carry_b)  # unbatched (time, features)
        np.testing.assert_allclose(ys[b, :L], ys_b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, L:], 0.0)
        assert_trees_close(jax.tree_util.tree_map(lambda c: c[b], finals), finals_b, rtol=1e-5, atol=1e-6)


def test_zero_length_keeps_initial_carry():
    cell = get_cell("lstm")
    params = init_stack(jax.random.PRNGKey(0), cell, 2, 3)
    carry0 = random_stack_carry(cell, params, (2,), jax.random.PRNGKey(1))
    ys, finals = apply_stack(cell, params, jnp.ones((2, 4, 2)), carry0, lengths=jnp.array([0, 4]))
    np.testing.assert_array_equal(ys[0], 0.0)
    assert_trees_close(jax.tree_util.tree_map(lambda c: c[0], finals), jax.tree_util.tree_map(lambda c: c[0], carry0))


def test_lengths_equal_to_full_length_match_unpadded():
    cell = get_cell("gru")
    params = init_stack(jax.random.PRNGKey(0), cell, 3, 4, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    a = apply_stack(cell, params, xs)
    b = apply_stack(cell, params, xs, lengths=jnp.array([5, 5]))
    assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


def test_stack_feeds_layer_outputs_forward():
    """Layer k+1's input is layer k's output sequence."""
    cell = get_cell("rnn")
    params = init_stack(jax.random.PRNGKey(0), cell, 3, 4, num_layers=3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    ys, finals = apply_stack(cell, params, xs)
    h = xs
    for layer, fin in zip(params, finals):
        h, f = scan_layer(cell.step, layer, h, cell.zeros_carry(4, (2,)))
        np.testing.assert_allclose(f, fin, rtol=1e-6)
    np.testing.assert_allclose(ys, h, rtol=1e-6)
    assert [p["w_x"].shape[0] for p in params] == [3, 4, 4]


def test_bidirectional_concatenates_forward_and_reverse():
    cell = get_cell("lstm")
    params = init_stack(jax.random.PRNGKey(0), cell, 3, 4, bidirectional=True, num_layers=2)
    assert params[1]["forward"]["w_x"].shape[0] == 8
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    ys, finals = apply_stack(cell, params[:1], xs)
    zero = cell.zeros_carry(4, (2,))
    fwd, fin_f = scan_layer(cell.step, params[0]["forward"], xs, zero)
    bwd, fin_b = scan_layer(cell.step, params[0]["backward"], xs, zero, reverse=True)
    np.testing.assert_allclose(ys, jnp.concatenate([fwd, bwd], -1), rtol=1e-6)
    # The reverse direction ends having read x_0.
    assert_trees_close(finals[0]["backward"], fin_b)
    assert_trees_close(finals[0]["forward"], fin_f)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_jit_equals_no_jit(name):
    params = init_stack(jax.random.PRNGKey(0), name, 3, 4, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 3))
    lengths = jnp.array([6, 2])
    run = functools.partial(apply_stack, name)
    eager = run(params, xs, lengths=lengths)
    jitted = jax.jit(lambda p, x, l: run(p, x, lengths=l))(params, xs, lengths)
    assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 4])
def test_unroll_is_exposed_and_exact(unroll):
    params = init_stack(jax.random.PRNGKey(0), "lstm", 3, 4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 3))
    assert_trees_close(apply_stack("lstm", params, xs), apply_stack("lstm", params, xs, unroll=unroll), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_gradients_flow_to_every_parameter_and_initial_carry(name):
    cell = get_cell(name)
    B, T, I, H = 3, 6, 4, 5
    params = init_stack(jax.random.PRNGKey(0), cell, I, H, num_layers=2, bidirectional=True)
    # Non-zero biases so their gradients are generic.
    params = jax.tree_util.tree_map(lambda p: p + 0.05, params)
    carry0 = random_stack_carry(cell, params, (B,), jax.random.PRNGKey(1))  # learnable initial state
    xs = jax.random.normal(jax.random.PRNGKey(2), (B, T, I))
    target = jax.random.normal(jax.random.PRNGKey(3), (B, T, 2 * H))

    def loss(params, carry0):
        ys, finals = apply_stack(cell, params, xs, carry0, lengths=jnp.array([6, 4, 2]))
        return jnp.mean((ys - target) ** 2) + sum(jnp.sum(f**2) for f in leaves(finals))

    g_params, g_carry = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, carry0)
    for path, g in jax.tree_util.tree_leaves_with_path((g_params, g_carry)):
        assert np.isfinite(np.asarray(g)).all(), path
        assert float(jnp.abs(g).max()) > 0, f"zero gradient at {jax.tree_util.keystr(path)}"


def test_dropout_between_layers_only_in_training():
    params = init_stack(jax.random.PRNGKey(0), "lstm", 3, 8, num_layers=2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 5, 3))
    clean, _ = apply_stack("lstm", params, xs)
    a, _ = apply_stack("lstm", params, xs, dropout=0.5, key=jax.random.PRNGKey(2))
    b, _ = apply_stack("lstm", params, xs, dropout=0.5, key=jax.random.PRNGKey(2))
    c, _ = apply_stack("lstm", params, xs, dropout=0.5, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, clean) and not np.allclose(a, c)
    with pytest.raises(ValueError, match="needs a jax.random key"):
        apply_stack("lstm", params, xs, dropout=0.5)


@pytest.mark.slow  # in the default run: superseded by tests/test_precision.py
def test_bfloat16_compute_option_through_stack():
    params = init_stack(jax.random.PRNGKey(0), "lstm", 8, 16, num_layers=2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 8))
    ref, _ = apply_stack("lstm", params, xs)
    low, fin = apply_stack("lstm", params, xs, compute_dtype=jnp.bfloat16)
    assert low.dtype == jnp.float32 and fin[0].cell.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, atol=5e-2)


def test_float64_stack_under_x64():
    with jax.enable_x64(True):
        params = init_stack(jax.random.PRNGKey(0), "gru", 3, 4, num_layers=2, dtype=jnp.float64)
        ys, finals = jax.jit(functools.partial(apply_stack, "gru"))(params, jnp.ones((2, 5, 3), jnp.float64))
        assert ys.dtype == jnp.float64 and finals[1].dtype == jnp.float64


# --- bad input ---------------------------------------------------------------


@pytest.fixture
def lstm_params():
    return init_stack(jax.random.PRNGKey(0), "lstm", 3, 4, num_layers=2)


def test_mismatched_feature_size(lstm_params):
    with pytest.raises(ValueError, match=r"x_t has 5 features .* input_size=3"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 5)))


def test_rank_errors_name_shape(lstm_params):
    with pytest.raises(ValueError, match=r"\(batch, time, features\).*\(2, 3, 6, 3\)"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 3, 6, 3)))
    with pytest.raises(ValueError, match=r"got shape \(3,\)"):
        apply_stack("lstm", lstm_params, jnp.ones((3,)))


def test_wrong_carry_shape(lstm_params):
    carry = zeros_stack_carry("lstm", lstm_params, (5,))
    with pytest.raises(ValueError, match=r"leading batch dimension 2.*\(5, 4\)"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3)), carry)
    bad = [LSTMCarry(jnp.zeros((2, 4)), jnp.zeros((2, 7))), zeros_stack_carry("lstm", lstm_params, (2,))[1]]
    with pytest.raises(ValueError, match=r"carry cell has shape \(2, 7\), expected \(2, 4\)"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3)), bad)
    with pytest.raises(ValueError, match="carry has 1 layers but params has 2"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3)), bad[:1])


@pytest.mark.parametrize(
    "lengths,match",
    [
        ([7, 2], r"lengths must lie in \[0, seq_len=6\]; got min 2, max 7"),
        ([-1, 2], r"lengths must lie in \[0, seq_len=6\]; got min -1"),
        ([2, 2, 2], r"lengths must have shape \(batch,\) = \(2,\), got \(3,\)"),
    ],
)
def test_bad_lengths(lstm_params, lengths, match):
    with pytest.raises(ValueError, match=match):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3)), lengths=jnp.array(lengths))


def test_float_lengths_rejected(lstm_params):
    with pytest.raises(TypeError, match="lengths must be integers"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3)), lengths=jnp.array([1.0, 2.0]))


def test_errors_are_raised_at_trace_time(lstm_params):
    fn = jax.jit(functools.partial(apply_stack, "lstm"))
    with pytest.raises(ValueError, match="input_size=3"):
        fn.lower(lstm_params, jnp.ones((2, 6, 5)))


def test_dtype_mismatch_and_empty_time(lstm_params):
    with pytest.raises(TypeError, match="xs dtype int32 differs from the params dtype float32"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 6, 3), jnp.int32))
    with pytest.raises(ValueError, match="empty time axis"):
        apply_stack("lstm", lstm_params, jnp.ones((2, 0, 3)))


def test_unknown_impl_and_bad_params(lstm_params):
    with pytest.raises(ValueError, match="unknown layer impl 'nope'"):
        layer_impl("nope")
    with pytest.raises(TypeError, match="non-empty list of per-layer params"):
        apply_stack("lstm", lstm_params[0], jnp.ones((2, 6, 3)))


def test_hidden_for_params_matches_parameter_counts():
    from lstm_jax.layers import count_params, hidden_for_params

    key = jax.random.PRNGKey(0)
    lstm = count_params(init_stack(key, "lstm", 16, 32, num_layers=2))
    assert lstm == 4 * 32 * (16 + 32 + 1) + 4 * 32 * (32 + 32 + 1)
    assert hidden_for_params(lambda h: init_stack(key, "lstm", 16, h, num_layers=2), lstm) == 32
    for cell in ("min_gru", "gru", "rnn"):
        h = hidden_for_params(lambda h: init_stack(key, cell, 16, h, num_layers=2), lstm)
        assert count_params(init_stack(key, cell, 16, h, num_layers=2)) <= lstm
        assert count_params(init_stack(key, cell, 16, h + 1, num_layers=2)) > lstm
    with pytest.raises(ValueError, match="hidden size 1 has"):
        hidden_for_params(lambda h: init_stack(key, "lstm", 16, h), 10)
