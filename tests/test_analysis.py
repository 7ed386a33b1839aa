"""Gradient-flow and gate-activity tools: checked against closed forms and the core layer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common.figures import matplotlib_installed
from lstm_jax.analysis import (
    LINEAR_RNN,
    carry_gradients,
    gradient_norm_by_distance,
    lstm_gate_trace,
    recurrent_grad_norms,
    state_gradient_profile,
)
from lstm_jax.analysis import _run_with_offsets
from lstm_jax.cells import get_cell
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _linear_params(w_h, input_size=3, seed=0):
    H = w_h.shape[0]
    p = LINEAR_RNN.init(jax.random.key(seed), input_size, H, jnp.float64)
    p["w_h"] = jnp.asarray(w_h, jnp.float64)
    return [p]


@pytest.mark.parametrize("a", [0.8, 1.0, 1.15])
def test_linear_rnn_scaled_orthogonal_matches_a_to_the_k(x64, a):
    """W = a Q: dL/dh_{T-k} = W^k v, so ||.|| = a^k ||v|| exactly, for every example."""
    H, T, B = 6, 25, 4
    Q = np.linalg.qr(np.random.default_rng(0).normal(size=(H, H)))[0]
    params = _linear_params(a * Q)
    xs = jax.random.normal(jax.random.key(1), (B, T, 3), jnp.float64)
    v = jnp.arange(1.0, H + 1.0, dtype=jnp.float64)

    loss, grads = carry_gradients(LINEAR_RNN, params, xs, lambda ys: jnp.sum(ys[:, -1] @ v))
    curve = np.asarray(gradient_norm_by_distance(grads[0]))
    expected = a ** np.arange(T) * np.linalg.norm(v)
    np.testing.assert_allclose(curve, expected, rtol=1e-10)
    # and the loss is the plain forward pass's loss (zero offsets change nothing)
    ys, _ = apply_stack(LINEAR_RNN, params, xs, impl="scan")
    np.testing.assert_allclose(loss, jnp.sum(ys[:, -1] @ v), rtol=1e-12)


def test_linear_rnn_general_matrix_matches_matrix_power(x64):
    """For a general W (here diagonal, then dense) every per-step gradient equals W^k v."""
    H, T, B = 5, 12, 3
    rng = np.random.default_rng(1)
    for W in (np.diag([0.5, 0.9, 1.0, 1.05, -0.7]), rng.normal(size=(H, H)) / np.sqrt(H)):
        params = _linear_params(W)
        xs = jax.random.normal(jax.random.key(2), (B, T, 3), jnp.float64)
        v = rng.normal(size=H)
        _, grads = carry_gradients(LINEAR_RNN, params, xs, lambda ys: jnp.sum(ys[:, -1] @ v))
        g = np.asarray(grads[0])  # (B, T, H)
        for k in range(T):
            expected = np.linalg.matrix_power(W, k) @ v
            np.testing.assert_allclose(g[:, T - 1 - k], np.broadcast_to(expected, (B, H)), rtol=1e-9, atol=1e-12)
        if W[0, 1] == 0:  # diagonal: slowest mode dominates, ||W^k v|| -> |1.05|^k |v_4|
            curve = np.asarray(gradient_norm_by_distance(grads[0]))
            np.testing.assert_allclose(curve[-1], np.linalg.norm(np.diag(W) ** (T - 1) * v), rtol=1e-10)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_carry_gradients_match_finite_differences_and_forward(x64, cell):
    """Two-layer stack: the zero offsets leave the forward pass intact, and the offset
    gradient equals a central finite difference of a real state perturbation."""
    B, T, F, H = 2, 7, 3, 4
    params = init_stack(jax.random.key(0), cell, F, H, num_layers=2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(1), (B, T, F), jnp.float64)
    w = jax.random.normal(jax.random.key(2), (T, H), jnp.float64)
    loss_fn = lambda ys: jnp.sum(jnp.tanh(ys) * w)  # noqa: E731  reads every step
    loss, grads = carry_gradients(cell, params, xs, loss_fn)
    ys, _ = apply_stack(cell, params, xs, impl="scan")
    np.testing.assert_allclose(loss, loss_fn(ys), rtol=1e-12)

    # perturb layer 0's state (hidden, or the LSTM cell) at step t=2, example 0, unit 1
    carry = zeros_stack_carry(cell, params, (B,), jnp.float64)
    zero = [jax.tree_util.tree_map(lambda c: jnp.zeros((T,) + c.shape, c.dtype), c) for c in carry]

    @functools.partial(jax.jit, static_argnums=1)
    def loss_at(eps, field_index):
        leaves, treedef = jax.tree_util.tree_flatten(zero[0])
        leaves[field_index] = leaves[field_index].at[2, 0, 1].set(eps)
        offsets = [jax.tree_util.tree_unflatten(treedef, leaves)] + zero[1:]
        return loss_fn(_run_with_offsets(get_cell(cell), params, xs, carry, offsets)[0])

    g0 = jax.tree_util.tree_leaves(grads[0])  # [dL/dh] or [dL/dh, dL/dc]
    for field_index, g in enumerate(g0):
        eps = 1e-6
        fd = (loss_at(eps, field_index) - loss_at(-eps, field_index)) / (2 * eps)
        np.testing.assert_allclose(g[0, 2, 1], fd, rtol=1e-6, atol=1e-10)
    assert len(g0) == (2 if cell == "lstm" else 1)


def test_state_gradient_profile_and_weight_norms():
    params = init_stack(jax.random.key(0), "lstm", 2, 8)
    xs = jax.random.normal(jax.random.key(1), (3, 20, 2))
    prof = state_gradient_profile("lstm", params, xs, lambda ys: jnp.sum(ys[:, -1]))
    assert set(prof) == {"h", "c"} and prof["h"].shape == prof["c"].shape == (20,)
    assert np.all(np.isfinite(prof["h"])) and prof["h"][0] > 0
    prof = state_gradient_profile("rnn", init_stack(jax.random.key(0), "rnn", 2, 8), xs, lambda ys: jnp.sum(ys[:, -1]))
    assert set(prof) == {"h"}
    grads = jax.grad(lambda p: jnp.sum(apply_stack("lstm", p, xs)[0][:, -1]))(params)
    norms = recurrent_grad_norms(grads)
    np.testing.assert_allclose(norms[0], jnp.linalg.norm(grads[0]["w_h"]))


def test_carry_gradients_errors():
    params = init_stack(jax.random.key(0), "lstm", 2, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        carry_gradients("lstm", params, jnp.zeros((1, 3, 2)), jnp.sum)
    with pytest.raises(ValueError, match="batch, time, features"):
        carry_gradients("lstm", init_stack(jax.random.key(0), "lstm", 2, 4), jnp.zeros((3, 2)), jnp.sum)


def test_lstm_gate_trace_consistent_with_apply_stack():
    params = init_stack(jax.random.key(0), "lstm", 5, 6, num_layers=2)
    xs = jax.random.normal(jax.random.key(1), (3, 9, 5))
    trace = lstm_gate_trace(params, xs)
    assert len(trace) == 2
    for layer in trace:
        assert set(layer) == {"input", "forget", "candidate", "output", "cell", "hidden"}
        for k, v in layer.items():
            assert v.shape == (3, 9, 6)
        for k in ("input", "forget", "output"):
            assert np.all((layer[k] > 0) & (layer[k] < 1))
        # the recorded gates reproduce the recorded states: c_t = f c_{t-1} + i g, h = o tanh(c)
        c_prev = jnp.concatenate([jnp.zeros((3, 1, 6)), layer["cell"][:, :-1]], axis=1)
        np.testing.assert_allclose(layer["cell"], layer["forget"] * c_prev + layer["input"] * layer["candidate"], atol=1e-5)
        np.testing.assert_allclose(layer["hidden"], layer["output"] * jnp.tanh(layer["cell"]), atol=1e-5)
    ys, _ = apply_stack("lstm", params, xs, impl="scan")
    np.testing.assert_allclose(trace[-1]["hidden"], ys, atol=1e-6)
    single = lstm_gate_trace(params, xs[0])
    np.testing.assert_allclose(single[0]["forget"], trace[0]["forget"][0], atol=1e-6)
    with pytest.raises(ValueError, match="LSTM"):
        lstm_gate_trace(init_stack(jax.random.key(0), "gru", 5, 6), xs)


def test_lstm_total_cell_gradient_identity(x64):
    """c_{t-1} enters step t only through c_t = f_t c_{t-1} + i_t g_t, so the carry
    gradient of c_{t-1} must equal f_t * (total dL/dc_t): checks the assembled total."""
    from lstm_jax.analysis import lstm_total_cell_gradient

    B, T, F, H = 2, 8, 3, 4
    params = init_stack(jax.random.key(3), "lstm", F, H, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.key(4), (B, T, F), jnp.float64)
    w = jax.random.normal(jax.random.key(5), (T, H), jnp.float64)
    _, grads = carry_gradients("lstm", params, xs, lambda ys: jnp.sum(jnp.sin(ys) * w))
    trace = lstm_gate_trace(params, xs)[0]
    total = lstm_total_cell_gradient(grads[0], trace)
    np.testing.assert_allclose(grads[0].cell[:, :-1], trace["forget"][:, 1:] * total[:, 1:], rtol=1e-10, atol=1e-14)
    # at the last step nothing follows: the total is just the route through h_T
    assert np.all(grads[0].cell[:, -1] == 0)
    prof = state_gradient_profile("lstm", params, xs, lambda ys: jnp.sum(jnp.sin(ys) * w))
    np.testing.assert_allclose(prof["c"], gradient_norm_by_distance(total), rtol=1e-12)


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_gradient_flow_script_smoke(tmp_path):
    """experiments/analysis/gradient_flow.py end to end, tiny: profiles at init/trained and per-step ||dL/dw_h||."""
    import importlib
    import json

    mod = importlib.import_module("experiments.analysis.gradient_flow")
    mod.main(["--T", "6", "--cells", "lstm", "--hidden", "4", "--batch-size", "8", "--probe", "8", "--steps", "5",
              "--out", str(tmp_path)])
    r = json.loads((tmp_path / "gradient_flow.json").read_text())["results"]["lstm"]
    assert len(r["init"]["h"]) == len(r["init"]["c"]) == len(r["trained"]["h"]) == 6
    assert r["steps"] == [1, 2, 3, 4, 5] and len(r["w_h_grad_norm"]) == 5
    assert all(g > 0 for g in r["w_h_grad_norm"])
    if matplotlib_installed():  # plots are conveniences: without matplotlib the script skips them, saying so
        assert (tmp_path / "gradient_flow.png").exists() and (tmp_path / "recurrent_grad_norm.png").exists()
