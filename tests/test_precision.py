"""The bf16 precision policy: bf16 matmul operands, float32 everything else, the same in every impl.

Tolerance. bfloat16 keeps 8 significant bits, so rounding one operand costs a
relative error of at most 2^-9 ~ 0.2%. A product over K terms of random sign
then carries an error of about 0.2% of the norm of its terms, and the LSTM's
gates squash it further, while 6 steps of recurrence and the backward's
matmuls compound a few of them. Measured on these shapes the outputs differ
from float32 by < 5e-3 and the gradients by < 1.5% (relative to their norm);
the bounds below leave about 3x margin on that, yet are two orders of
magnitude above float32's own differences between impls (1e-6), so an impl
that ignored the policy (rel. diff ~0) or rounded the carry or the
accumulator to bf16 (diffs of several %) fails them.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lstm_jax.cells import get_cell
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.layers import apply_stack, init_stack
from lstm_jax.precision import PRECISIONS, get_precision

OUT_ATOL = 1.5e-2
GRAD_REL = 4e-2


def _rel(a, b):
    return float(jnp.linalg.norm((a - b).ravel()) / (jnp.linalg.norm(b.ravel()) + 1e-30))


def _problem(cell):
    params = init_stack(jax.random.PRNGKey(0), cell, 8, 16, num_layers=2, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 8))
    lengths = jnp.array([6, 3, 1])
    return params, xs, lengths


def _loss_and_grads(cell, impl, params, xs, lengths):
    def loss(params, xs):
        ys, finals = apply_stack(cell, params, xs, lengths=lengths, impl=impl)
        return jnp.mean(ys**2) + sum(jnp.mean(f) for f in jax.tree_util.tree_leaves(finals)), ys

    (value, ys), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    return ys, grads


# Every impl with the LSTM; the GRU and RNN with the fast path and oneDNN's bf16 kernel, which the
# default rule picks for them on a bf16 CPU (every combination with -m slow).
@pytest.mark.parametrize(
    "cell, impl",
    [pytest.param(c, i, marks=() if c == "lstm" or i in ("manual", "onednn") else pytest.mark.slow)
     for c in ("rnn", "lstm", "gru") for i in sorted(IMPLS)],
)
def test_bf16_matches_fp32_within_bf16_tolerance(cell, impl):
    if not IMPLS[impl].supports(get_cell(cell)):
        pytest.skip(f"impl {impl!r} does not run cell {cell!r}")
    if "bf16" not in IMPLS[impl].precisions:  # refused by layer_impl: tests/test_cudnn.py checks it
        pytest.skip(f"impl {impl!r} has no bf16 policy (it runs {', '.join(IMPLS[impl].precisions)})")
    params, xs, lengths = _problem(cell)
    if impl == "onednn":  # with lengths it runs 'manual' (checked above): without, its own bf16 kernel
        lengths = None
    ys32, g32 = _loss_and_grads(cell, "scan", params, xs, lengths)
    ys16, g16 = _loss_and_grads(cell, layer_impl(impl, precision="bf16"), params, xs, lengths)
    assert ys16.dtype == jnp.float32  # outputs (and the carry) stay float32
    diff = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 1e-6 < diff < OUT_ATOL, diff  # the policy ran (bf16 differs) and stayed within tolerance
    for a, b in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
        assert a.dtype == b.dtype == jnp.float32
        assert np.isfinite(np.asarray(a)).all()
        assert _rel(a, b) < GRAD_REL, _rel(a, b)


def test_explicit_compute_dtype_wins_over_the_bound_policy():
    params, xs, lengths = _problem("lstm")
    run = layer_impl("manual", precision="bf16")
    ys_policy, _ = apply_stack("lstm", params, xs, lengths=lengths, impl=run)
    ys_explicit, _ = apply_stack("lstm", params, xs, lengths=lengths, impl="manual", compute_dtype=jnp.bfloat16)
    ys_fp32, _ = apply_stack("lstm", params, xs, lengths=lengths, impl="manual", compute_dtype=jnp.float32)
    ys_forced, _ = apply_stack("lstm", params, xs, lengths=lengths, impl=run, compute_dtype=jnp.float32)
    np.testing.assert_array_equal(ys_policy, ys_explicit)
    np.testing.assert_array_equal(ys_forced, ys_fp32)


def test_policies_and_errors():
    assert get_precision(None) is PRECISIONS["fp32"] and get_precision("bf16").compute_dtype == jnp.bfloat16
    assert layer_impl("remat", segment=4, precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; choose one of \['bf16', 'fp32'\]"):
        layer_impl("manual", precision="fp8")


def test_params_and_optimizer_state_stay_float32_after_a_bf16_step():
    params, xs, lengths = _problem("lstm")
    opt = optax.adamw(1e-2)
    state = opt.init(params)
    run = layer_impl("manual", precision="bf16")
    grads = jax.grad(lambda p: jnp.mean(apply_stack("lstm", p, xs, lengths=lengths, impl=run)[0] ** 2))(params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    for leaf in jax.tree_util.tree_leaves((new, state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32, leaf.dtype
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(new),
                                                              jax.tree_util.tree_leaves(params))) > 0


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's optimized HLO")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_manual_bf16_step_has_no_float32_matmul(cell):
    """Every matrix product of the bf16 training step (forward, in-loop backward and the after-loop
    weight gradients) has bf16 operands in the optimized HLO. ``jnp.matmul(x, w.T)`` and the 2-D
    ``hᵀ dz`` form are turned into float32 products by XLA:CPU, which is where bf16 lost its speed."""
    params = init_stack(jax.random.PRNGKey(0), cell, 32, 64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 32))
    run = layer_impl("manual", precision="bf16")
    step = jax.jit(jax.grad(lambda p, x: jnp.mean(apply_stack(cell, p, x, impl=run)[0] ** 2), argnums=(0, 1)))
    hlo = step.lower(params, xs).compile().as_text()
    operand_types = []
    for comp in re.split(r"\n(?=\S)", hlo):
        header = comp.split("\n", 1)[0]
        for line in comp.split("\n"):
            if " dot(" in line:
                args = re.search(r"dot\((%[\w.\-]+), (%[\w.\-]+)\)", line).groups()
                for name in args:
                    m = re.search(re.escape(name[1:]) + r": (\w+)\[", header) or re.search(
                        re.escape(name) + r" = (\w+)\[", comp)
                    operand_types.append(m.group(1))
    assert len(operand_types) >= 10, operand_types  # fwd recurrence, bwd recurrence, projection, dW_x, dW_h, dx
    assert set(operand_types) == {"bf16"}, operand_types
