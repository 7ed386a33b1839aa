"""``Cell.jacobian_diagonal``: the hand-derived diagonal of one step's Jacobian.

* for every built-in cell, in float64 and float32 (and with bf16 matmuls), it
  equals the diagonal of ``jax.jacfwd`` of the step w.r.t. the flattened carry
  (the ``(h, c)`` leaves side by side for the LSTM), with non-zero biases
  (the GRU's ``b_h[n]`` sits inside the reset gate's product) and a random carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax.cells import get_cell
from lstm_jax.impls.deer import CarryLayout

ALL_CELLS = ["rnn", "lstm", "gru", "min_gru", "min_lstm"]


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

