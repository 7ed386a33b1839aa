"""``impl="deer"``: Newton over the whole trajectory gives the sequential scan's answer, or says it cannot.

* float64: outputs, final carries and gradients (params, inputs, initial
  carry) equal ``"scan"``'s to 1e-9 for every cell and both methods, on a
  bidirectional layer with padded lengths including 0 and the full length;
* the theory: after ``k`` iterations the first ``k`` steps are exact, so
  Newton ends in at most ``T + 1``; a warm start at the answer ends in one;
* a chaotic RNN where Newton does not settle in ``max_iters``: the default
  falls back to the scan's answer (values and gradients), ``on_fail="error"``
  raises, eagerly and under ``jit``;
* bad options: one-line ``ValueError``; the parallel linear recurrence
  against a plain loop. (NaN in padding: ``tests/test_cell_protocol.py`` runs
  every registered impl, this one included.)
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common.figures import matplotlib_installed
from lstm_jax.cells import get_cell
from lstm_jax.impls import layer_impl
from lstm_jax.impls.deer import DeerNotConverged, deer_solve, deer_time_major
from lstm_jax.impls.linear_scan import linear_recurrence
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

CELLS = ["lstm", "gru", "rnn"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _stack_problem(cell, dtype, *, T=9, B=3, I=2, H=3, seed=0, bidirectional=True):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_stack(k1, cell, I, H, bidirectional=bidirectional, dtype=dtype)
    xs = jax.random.normal(k2, (B, T, I), dtype)
    carry = jax.tree_util.tree_map(
        lambda z: 0.3 * jax.random.normal(k3, z.shape, dtype), zeros_stack_carry(cell, params, (B,))
    )
    return params, xs, carry


def _loss(cell, impl, lengths, params, xs, carry):
    ys, finals = apply_stack(cell, params, xs, carry, lengths=lengths, impl=impl)
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(finals)), (ys, finals)


def _value_and_grads(cell, impl, lengths, params, xs, carry):
    f = jax.value_and_grad(functools.partial(_loss, cell, impl, lengths), argnums=(0, 1, 2), has_aux=True)
    return jax.jit(f)(params, xs, carry)


def _assert_trees_close(got, ref, tol, what):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        assert np.isfinite(a).all(), what
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=what)


@pytest.mark.parametrize(
    "cell,methods",
    [
        ("lstm", ("full",)),
        pytest.param("lstm", ("diagonal",), marks=pytest.mark.slow),  # quasi-DEER: gru, rnn and the reverse test
        ("gru", ("full", "diagonal")),
        ("rnn", ("full", "diagonal")),
    ],
)
def test_matches_scan_float64_with_lengths(x64, cell, methods):
    params, xs, carry = _stack_problem(cell, jnp.float64, bidirectional=cell == "lstm")  # one bidirectional
    lengths = jnp.array([9, 0, 4])  # full, empty, padded
    ref = _value_and_grads(cell, "scan", lengths, params, xs, carry)
    for method in methods:
        got = _value_and_grads(cell, layer_impl("deer", method=method), lengths, params, xs, carry)
        _assert_trees_close(got, ref, 1e-9, f"{cell} {method}")


def test_reverse_without_lengths_and_single_sequence(x64):
    cell = get_cell("gru")
    params, xs, carry = _stack_problem("gru", jnp.float64, seed=1)
    p, h0 = params[0]["backward"], carry[0]["backward"]

    def loss(impl, p, xs, h0):
        ys, final = impl(cell, p, xs, h0, reverse=True)  # no lengths: the core gets reverse=True
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

    def run(impl):
        return jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1, 2)))(p, xs, h0)

    ref, got = run(layer_impl("scan")), run(layer_impl("deer", method="diagonal"))
    _assert_trees_close(got, ref, 1e-9, "reverse")
    ys, final = layer_impl("deer")(cell, p, xs[0], h0[0])  # (T, I): no batch axis
    ys_ref, final_ref = layer_impl("scan")(cell, p, xs[0], h0[0])
    _assert_trees_close((ys, final), (ys_ref, final_ref), 1e-9, "single sequence")


def _layer_problem(cell_name, T, B=2, I=2, H=4, scale=1.0, seed=0, dtype=jnp.float64):
    cell = get_cell(cell_name)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = cell.init(k1, I, H, dtype)
    params = {**params, "w_h": scale * params["w_h"]}
    xs_tm = jax.random.normal(k2, (T, B, I), dtype)
    return cell, params, xs_tm, cell.zeros_carry(H, (B,), dtype)


def _scan_states(cell, params, xs_tm, carry):
    """The flattened carry after every step, by the reference scan."""
    def step(c, x):
        c, _ = cell.step(params, c, x)
        return c, jnp.concatenate(jax.tree_util.tree_leaves(c), axis=-1)

    return jax.lax.scan(step, carry, xs_tm)[1]


@pytest.mark.parametrize("method", ["full", "diagonal"])
def test_first_k_steps_exact_after_k_iterations_and_warm_start(x64, method):
    cell, params, xs_tm, carry = _layer_problem("lstm", T=12)
    ref = _scan_states(cell, params, xs_tm, carry)
    solve = jax.jit(functools.partial(deer_solve, cell, method=method), static_argnames=("max_iters", "tol"))
    for k in (1, 4):
        states, iters, converged = solve(params, xs_tm, carry, max_iters=k, tol=1e-300)
        assert int(iters) == k and not bool(converged)
        np.testing.assert_allclose(states[:k], ref[:k], rtol=1e-12, atol=1e-12)
        if k == 1:  # the rest is not exact yet (full Newton may be done by k = 4)
            assert np.abs(np.asarray(states[k:]) - np.asarray(ref[k:])).max() > 1e-9
    cold = jnp.broadcast_to(jnp.concatenate(carry, axis=-1), ref.shape)  # the default initial guess
    states, iters, converged = solve(params, xs_tm, carry, init=cold)
    assert bool(converged) and 1 < int(iters) <= 13  # at most T + 1
    np.testing.assert_allclose(states, ref, rtol=1e-9, atol=1e-9)
    _, warm, converged = solve(params, xs_tm, carry, init=states)  # warm start at the answer
    assert bool(converged) and int(warm) == 1


def _chaotic():
    """An Elman RNN with recurrent weights x5 (orthogonal init): expanding Jacobians, T = 64.

    float64, because its gradients (~1e6) amplify float32 rounding differences
    between any two evaluation orders to ~1e-4 relative.
    """
    return _layer_problem("rnn", T=64, B=2, I=2, H=8, scale=5.0, seed=3, dtype=jnp.float64)


def test_chaotic_rnn_falls_back_to_the_scan_or_raises(x64):
    cell, params, xs_tm, carry = _chaotic()
    _, iters, converged = deer_solve(cell, params, xs_tm, carry, max_iters=3)
    assert int(iters) == 3 and not bool(converged)  # so the fallback below is really taken
    xs = jnp.swapaxes(xs_tm, 0, 1)

    def loss(impl, params, xs):
        ys, final = impl(cell, params, xs, carry)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final), (ys, final)

    def run(impl):
        return jax.jit(jax.value_and_grad(functools.partial(loss, impl), argnums=(0, 1), has_aux=True))(params, xs)

    ref = run(layer_impl("scan"))
    got = run(layer_impl("deer", max_iters=3))  # on_fail="fallback" is the default
    _assert_trees_close(got, ref, 1e-8, "fallback")

    strict = layer_impl("deer", max_iters=3, on_fail="error")
    with pytest.raises(DeerNotConverged, match=r"Newton did not converge.*max_iters=3"):
        strict(cell, params, xs, carry)  # eager: the Python exception itself
    with pytest.raises(Exception, match=r"did not converge to tol=.* in max_iters=3"):
        jax.block_until_ready(jax.jit(lambda p: strict(cell, p, xs, carry)[0])(params))


def test_error_mode_is_silent_when_newton_converges():
    cell, params, xs_tm, carry = _layer_problem("lstm", T=8, dtype=jnp.float32)
    ys, final, states = jax.jit(functools.partial(deer_time_major, cell, on_fail="error"))(params, xs_tm, carry)
    np.testing.assert_allclose(final.hidden, states[-1, :, :4])
    ref, _ = layer_impl("scan")(cell, params, jnp.swapaxes(xs_tm, 0, 1), carry)
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"method": "newton"}, "method must be one of"),
        ({"tol": 0.0}, "tol must be a positive number"),
        ({"max_iters": 0}, "max_iters must be a positive int"),
        ({"max_iters": 2.5}, "max_iters must be a positive int"),
        ({"on_fail": "ignore"}, "on_fail must be one of"),
        ({"scan": "serial"}, "scan must be one of"),
        ({"iters": 3}, "layer impl 'deer'.*iters"),
    ],
)
def test_bad_options_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message) as err:
        layer_impl("deer", **options)
    assert "\n" not in str(err.value)


def test_bad_init_shape():
    cell, params, xs_tm, carry = _layer_problem("gru", T=5, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"init must have shape \(T, B, D\) = \(5, 2, 4\)"):
        deer_solve(cell, params, xs_tm, carry, init=jnp.zeros((5, 4)))


# associative_scan compiles slowly (2 log2 T unrolled levels): one short T for it.
@pytest.mark.parametrize("scan,T", [("doubling", 1), ("doubling", 70), ("associative", 9)])
def test_linear_recurrence_against_a_loop(x64, scan, T):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(T), 3)
    a_full = 0.5 * jax.random.normal(k1, (T, 2, 3, 3))
    a_diag = jax.random.uniform(k2, (T, 2, 3), minval=-1.2, maxval=1.2)
    b = jax.random.normal(k3, (T, 2, 3))
    for a, diagonal in ((a_full, False), (a_diag, True)):
        x, expected = np.zeros((2, 3)), []
        for t in range(T):
            x = (a[t] * x if diagonal else np.einsum("bij,bj->bi", a[t], x)) + b[t]
            expected.append(x)
        got = jax.jit(functools.partial(linear_recurrence, diagonal=diagonal, scan=scan))(a, b)
        np.testing.assert_allclose(got, np.stack(expected), rtol=1e-10, atol=1e-10)


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_parallel_time_experiment_quick(tmp_path):
    from experiments.benchmarks import parallel_time

    out = tmp_path / "parallel_time.json"
    parallel_time.main(["--quick", "--cases", "manual,quasi-deer,min_gru-parallel=P", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["machine"]["matmul_gflops"] > 0 and data["machine"]["load_average_at_end"] is not None
    rows = data["rows"]
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"manual", "quasi-deer", "min_gru-parallel=P"}
    # The parameter-matched minGRU is wider than the LSTM but no larger, and within one hidden unit of it.
    lstm, min_gru = by_name["manual"], by_name["min_gru-parallel=P"]
    assert min_gru["H"] > lstm["H"] and min_gru["params"] <= lstm["params"]
    assert min_gru["params"] + 2 * (4 + 1) > lstm["params"]  # one more unit (2 (I + 1) params) would exceed it
    for r in rows:
        assert r["forward_s"] > 0 and r["train_step_s"] > 0
        assert r["temp_size_in_bytes"] >= 0
        if r["name"] in ("deer", "quasi-deer"):
            assert 1 <= r["newton_iters"] <= r["T"] + 1 and r["converged"]
    if matplotlib_installed():  # without matplotlib the plot is skipped, saying so
        assert out.with_suffix(".png").exists()
