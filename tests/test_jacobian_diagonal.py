"""``Cell.jacobian_diagonal``: the hand-derived diagonal of one step's Jacobian, and quasi-DEER's use of it.

* for every built-in cell, in float64 and float32 (and with bf16 matmuls), it
  equals the diagonal of ``jax.jacfwd`` of the step w.r.t. the flattened carry
  (the ``(h, c)`` leaves side by side for the LSTM), with non-zero biases
  (the GRU's ``b_h[n]`` sits inside the reset gate's product) and a random carry;
* ``impl="deer"``, ``method="diagonal"``: the analytic path and the ``D``-JVP
  path it replaces (``jacobian_diagonal=None``, the fallback for user cells)
  give the same iterates at every iteration count and the same Newton
  iteration count, with padded (masked) steps;
* the field is really consulted: a deliberately wrong diagonal (zeros, i.e.
  Picard iteration) changes the iteration count.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import get_cell
from lstm_jax.impls.deer import CarryLayout, deer_solve

ALL_CELLS = ["rnn", "lstm", "gru", "min_gru", "min_lstm"]
DEER_CELLS = ["rnn", "lstm", "gru"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _random_step_inputs(cell, dtype, *, B=3, I=4, H=5, seed=0):
    """Params with every entry perturbed (non-zero biases), a random carry ``(B, H)`` leaves and ``xw (B, G*H)``."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(k1, I, H, dtype)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(k2, len(leaves))
    params = treedef.unflatten([a + 0.4 * jax.random.normal(k, a.shape, dtype) for a, k in zip(leaves, keys)])
    carry = jax.tree_util.tree_map(lambda z: jax.random.normal(k3, z.shape, dtype), cell.zeros_carry(H, (B,), dtype))
    xw = cell.input_projection(params, jax.random.normal(k4, (B, I), dtype), None, dtype)
    return params, carry, xw


def _jacfwd_diagonal(cell, params, carry, xw, compute_dtype):
    """``diag(∂s_t/∂s_{t-1})`` per example, ``(B, D)``, from the full Jacobian of the flattened step."""
    layout = CarryLayout.of(carry)

    def flat_step(s, x):
        return layout.flat(cell.recurrence(params, layout.unflat(s), x, compute_dtype)[0])

    jac = jax.vmap(jax.jacfwd(flat_step))(layout.flat(carry), xw)  # (B, D, D)
    return jnp.diagonal(jac, axis1=-2, axis2=-1), layout


@pytest.mark.parametrize("name", ALL_CELLS)
@pytest.mark.parametrize(
    "dtype,compute_dtype,tol",
    [("float64", None, 1e-12), ("float32", None, 1e-6), ("float32", "bfloat16", 1e-6)],
)
def test_matches_the_diagonal_of_jacfwd(x64, name, dtype, compute_dtype, tol):
    cell = get_cell(name)
    assert cell.jacobian_diagonal is not None
    params, carry, xw = _random_step_inputs(cell, jnp.dtype(dtype))
    ref, layout = _jacfwd_diagonal(cell, params, carry, xw, compute_dtype)
    got = cell.jacobian_diagonal(params, carry, xw, compute_dtype)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(carry)
    for g, c in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(carry)):
        assert g.shape == c.shape and g.dtype == c.dtype
    np.testing.assert_allclose(layout.flat(got), ref, rtol=tol, atol=tol)
    # Not trivially matched: the diagonal is not 0/1 and differs between units.
    assert np.std(np.asarray(ref)) > 1e-3


def _deer_problem(name, *, T=48, B=3, I=3, H=6, seed=0):
    cell = get_cell(name)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k1, I, H, jnp.float64)
    xs_tm = jax.random.normal(k2, (T, B, I), jnp.float64)
    carry = jax.tree_util.tree_map(lambda z: 0.5 * jax.random.normal(k3, z.shape, z.dtype),
                                   cell.zeros_carry(H, (B,), jnp.float64))
    lengths = jnp.array([T, 0, T // 2])
    mask = jnp.arange(T)[:, None] < lengths[None, :]  # (T, B): padded and empty examples
    return cell, params, xs_tm, carry, mask


def _solve(cell, params, xs_tm, carry, mask, **options):
    run = jax.jit(functools.partial(deer_solve, cell, method="diagonal", **options))
    return run(params, xs_tm, carry, mask)


@pytest.mark.parametrize("name", DEER_CELLS)
def test_quasi_deer_same_iterates_and_iterations_as_the_jvp_path(x64, name):
    cell, params, xs_tm, carry, mask = _deer_problem(name)
    jvp_cell = dataclasses.replace(cell, jacobian_diagonal=None)
    for k in (1, 3, 7):  # intermediate iterates, not only the fixed point
        (a, ia, _), (b, ib, _) = (_solve(c, params, xs_tm, carry, mask, max_iters=k, tol=1e-300)
                                  for c in (cell, jvp_cell))
        assert int(ia) == int(ib) == k
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=f"{name} after {k} iterations")
    (a, ia, ca), (b, ib, cb) = (_solve(c, params, xs_tm, carry, mask) for c in (cell, jvp_cell))
    assert bool(ca) and bool(cb) and 1 < int(ia) == int(ib) < xs_tm.shape[0] + 1  # a real count, not the cap
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_the_field_is_what_quasi_deer_uses(x64):
    cell, params, xs_tm, carry, mask = _deer_problem("lstm")
    zeros = dataclasses.replace(cell, jacobian_diagonal=lambda p, c, x, cd: jax.tree_util.tree_map(jnp.zeros_like, c))
    _, exact_iters, _ = _solve(cell, params, xs_tm, carry, mask)
    states, picard_iters, converged = _solve(zeros, params, xs_tm, carry, mask)
    assert bool(converged) and int(picard_iters) > int(exact_iters)  # J = 0: Picard, one exact step per iteration
    ref, _, _ = _solve(cell, params, xs_tm, carry, mask)
    np.testing.assert_allclose(states, ref, rtol=1e-9, atol=1e-9)  # the same fixed point
