"""Hand-derived BPTT (lstm_jax.bptt) vs JAX autodiff.

* float64: manual gradients match jax.grad to rel err <= 1e-9 for every
  parameter, the inputs and the initial carry (rnn/lstm/gru; T=1, T=200,
  batch 1, 2 layers, bidirectional, padded with lengths, reverse);
* jax.test_util.check_grads (finite differences, orders 1 and 2) on the scan
  layer, and order 1 (reverse mode) on the custom_vjp layer;
* the custom_vjp layer (impl="manual") gives autodiff's gradients in float32,
  and 30 Optax steps with either give the same loss curve to 1e-4;
* bad input to the backward fails with a clear error.
"""

from __future__ import annotations

import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from lstm_jax import bptt
from lstm_jax.cells import LSTMCarry, get_cell
from lstm_jax.layers import apply_stack, init_stack, scan_layer, zeros_stack_carry

CELLS = ["rnn", "lstm", "gru"]


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _random_like(key, tree, scale=1.0):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    )


def _problem(cell, batch, seq_len, in_size, hidden, layers, bidir, lengths, dtype, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    params = init_stack(k[0], cell, in_size, hidden, num_layers=layers, bidirectional=bidir, dtype=dtype)
    # Perturb everything (biases are zero at init) so every derivative term is exercised.
    params = jax.tree_util.tree_map(jnp.add, params, _random_like(k[1], params, 0.1))
    xs = jax.random.normal(k[2], (batch, seq_len, in_size), dtype)
    carry = _random_like(k[3], zeros_stack_carry(cell, params, (batch,)), 0.5)
    if lengths is not None:
        lengths = jnp.asarray(lengths, jnp.int32)
    return params, xs, carry, lengths


def _rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.max(np.abs(b)) if b.size else 0.0
    err = np.max(np.abs(a - b)) if b.size else 0.0
    return err / scale if scale > 0 else err


def _assert_trees_close(manual, auto, tol, what=""):
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(auto)
    flat_m, tree_m = jax.tree_util.tree_flatten(manual)
    assert tree_a == jax.tree_util.tree_structure(manual), f"{what}: structure {tree_m} vs {tree_a}"
    for (path, a), m in zip(flat_a, flat_m):
        assert m.shape == a.shape and m.dtype == a.dtype, (what, path, m.shape, a.shape, m.dtype, a.dtype)
        err = _rel_err(m, a)
        assert err <= tol, f"{what}{jax.tree_util.keystr(path)}: rel err {err:.3e} > {tol:g}"


# (batch, time, input, hidden, layers, bidirectional, lengths)
CASES = {
    "T1": (3, 1, 3, 4, 1, False, None),
    "T200": (2, 200, 3, 4, 1, False, None),
    "batch1": (1, 9, 3, 5, 1, False, None),
    "2layer": (2, 7, 3, 4, 2, False, None),
    "bidir": (2, 6, 3, 4, 1, True, None),
    "padded": (3, 8, 3, 4, 1, False, [8, 5, 0]),
    "2layer_bidir_padded": (3, 6, 2, 3, 2, True, [6, 1, 4]),
}


# Every case for every cell, except the (compile-heavy) combined case: lstm only.
@pytest.mark.parametrize(
    "cell,case",
    [(c, k) for c in CELLS for k in CASES if k != "2layer_bidir_padded"] + [("lstm", "2layer_bidir_padded")],
)
def test_manual_matches_autodiff_float64(x64, cell, case):
    batch, seq_len, in_size, hidden, layers, bidir, lengths = CASES[case]
    params, xs, carry, lengths = _problem(cell, batch, seq_len, in_size, hidden, layers, bidir, lengths, jnp.float64)

    # One jitted function per side (lengths closed over as a constant): outputs and
    # gradients together, so each case compiles twice. Random cotangents for every
    # output step and every final carry check the backward as a vector-Jacobian product.
    f_ref = lambda p, x, c: apply_stack(cell, p, x, c, lengths=lengths, impl="scan")  # noqa: E731
    out_shape = jax.eval_shape(f_ref, params, xs, carry)
    dys, dfinals = _random_like(jax.random.PRNGKey(7), out_shape)

    @jax.jit
    def run_manual(p, x, c):
        ys, finals, cache = bptt.stack_forward(cell, p, x, c, lengths=lengths)
        return (ys, finals), bptt.stack_backward(cache, dys, dfinals)

    @jax.jit
    def run_auto(p, x, c):
        out, vjp = jax.vjp(f_ref, p, x, c)
        return out, vjp((dys, dfinals))

    out_m, manual = run_manual(params, xs, carry)
    out_a, auto = run_auto(params, xs, carry)
    _assert_trees_close(out_m, out_a, 1e-12, "forward")
    _assert_trees_close(manual.params, auto[0], 1e-9, "params")
    _assert_trees_close(manual.xs, auto[1], 1e-9, "xs")
    _assert_trees_close(manual.carry, auto[2], 1e-9, "carry0")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_single_layer_api_reverse_and_lengths(x64, cell, reverse, padded):
    """The per-cell entry points, in both directions, with and without lengths."""
    c = get_cell(cell)
    params, xs, carry, lengths = _problem(cell, 3, 5, 2, 3, 1, False, [5, 2, 0] if padded else None, jnp.float64)
    params, carry = params[0], carry[0]
    fwd = getattr(bptt, f"{cell}_forward")
    bwd = getattr(bptt, f"{cell}_backward")
    f_ref = lambda p, x, h0: scan_layer(c.step, p, x, h0, lengths=lengths, reverse=reverse, impl="scan")  # noqa: E731
    dys, dfinal = _random_like(jax.random.PRNGKey(3), jax.eval_shape(f_ref, params, xs, carry))

    @jax.jit
    def run_manual(p, x, h0):
        ys, final, cache = fwd(p, x, h0, lengths=lengths, reverse=reverse, unroll=2)
        return (ys, final), bwd(cache, dys, dfinal)

    @jax.jit
    def run_auto(p, x, h0):
        out, vjp = jax.vjp(f_ref, p, x, h0)
        return out, vjp((dys, dfinal))

    out_m, g = run_manual(params, xs, carry)
    out_a, auto = run_auto(params, xs, carry)
    _assert_trees_close(out_m, out_a, 1e-12, "forward")
    _assert_trees_close(tuple(g), auto, 1e-9, f"{cell} reverse={reverse}")


def test_frozen_steps_pass_gradient_straight_through(x64):
    """A sequence of length 0 never updates its carry: dL/dcarry0 == dL/dfinal, dL/dxs == 0."""
    params, xs, carry, lengths = _problem("lstm", 2, 4, 2, 3, 1, False, [4, 0], jnp.float64)
    _, _, cache = bptt.forward("lstm", params[0], xs, carry[0], lengths=lengths)
    dys = jnp.ones((2, 4, 3))
    dfinal = LSTMCarry(jnp.full((2, 3), 2.0), jnp.full((2, 3), 3.0))
    g = bptt.backward(cache, dys, dfinal)
    np.testing.assert_array_equal(g.carry.hidden[1], 2.0)
    np.testing.assert_array_equal(g.carry.cell[1], 3.0)
    np.testing.assert_array_equal(g.xs[1], 0.0)


# ---------------------------------------------------------------------------
# Finite differences


@pytest.mark.parametrize("cell", CELLS)
def test_check_grads_scan_layer(x64, cell):
    params, xs, carry, lengths = _problem(cell, 2, 3, 2, 3, 1, False, [3, 2], jnp.float64)

    def f(p, x, c):
        ys, fin = apply_stack(cell, p, x, c, lengths=lengths, impl="scan")  # forward mode and 2nd order: autodiff
        return jnp.sum(jnp.tanh(ys)) + sum(jnp.sum(l**2) for l in jax.tree_util.tree_leaves(fin))

    f = jax.jit(f)  # one compilation per derivative, instead of op-by-op dispatch
    check_grads(f, (params, xs, carry), order=1, modes=("fwd", "rev"), eps=1e-6)
    # Second order (reverse-over-reverse, i.e. Hessian-vector products) on the recurrent weights and inputs.
    check_grads(f, (params, xs, carry), order=2, modes=("rev",), eps=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_check_grads_manual_layer(x64, cell):
    """Finite differences against the custom_vjp backward (reverse mode only: custom_vjp has no JVP)."""
    params, xs, carry, lengths = _problem(cell, 2, 3, 2, 3, 1, True, [3, 1], jnp.float64)

    def f(p, x, c):
        ys, fin = apply_stack(cell, p, x, c, lengths=lengths, impl="manual")
        return jnp.sum(jnp.tanh(ys)) + sum(jnp.sum(l**2) for l in jax.tree_util.tree_leaves(fin))

    check_grads(jax.jit(f), (params, xs, carry), order=1, modes=("rev",), eps=1e-6)


# ---------------------------------------------------------------------------
# custom_vjp layer (impl="manual") in float32


@pytest.mark.parametrize("cell", CELLS)
def test_custom_vjp_matches_autodiff_float32(cell):
    # 2 layers for lstm (the layer-to-layer gradient), 1 for the others: keeps compile time down.
    layers = 2 if cell == "lstm" else 1
    params, xs, carry, lengths = _problem(cell, 3, 10, 4, 8, layers, True, [10, 7, 3], jnp.float32)

    def loss(p, x, c, impl):
        ys, fin = apply_stack(cell, p, x, c, lengths=lengths, impl=impl)
        return jnp.mean(jnp.sin(ys)) + sum(jnp.mean(l**2) for l in jax.tree_util.tree_leaves(fin))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    (v_a, g_a), (v_m, g_m) = grad(params, xs, carry, "scan"), grad(params, xs, carry, "manual")
    np.testing.assert_allclose(v_m, v_a, rtol=1e-6)
    _assert_trees_close(g_m, g_a, 2e-5, f"{cell} custom_vjp")


def test_custom_vjp_unbatched_unroll_and_bf16():
    params = init_stack(jax.random.PRNGKey(0), "lstm", 3, 4, dtype=jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float32)  # one sequence (T, F)

    def loss(p, impl, cd=None):
        ys, _ = apply_stack("lstm", p, xs, impl=impl, unroll=3, compute_dtype=cd)
        return jnp.sum(ys**2)

    grad = jax.jit(jax.grad(loss), static_argnums=(1, 2))
    _assert_trees_close(grad(params, "manual"), grad(params, "scan"), 2e-5, "unbatched")
    # bfloat16 matmuls: both backwards round differently, so only agree to bf16 precision.
    g_m = grad(params, "manual", jnp.bfloat16)
    g_a = grad(params, "scan", jnp.bfloat16)
    _assert_trees_close(g_m, g_a, 3e-2, "bf16")


def test_training_curves_match():
    """30 Adam steps on a small synthetic regression: same loss curve with either backward."""
    key = jax.random.PRNGKey(0)
    kx, kw, kp = jax.random.split(key, 3)
    xs = jax.random.normal(kx, (8, 10, 3), jnp.float32)
    # Target: a fixed nonlinear function of the running mean of the inputs.
    targets = jnp.tanh(jnp.cumsum(xs, axis=1) @ jax.random.normal(kw, (3, 2)) / 3.0)

    def init(k):
        k1, k2 = jax.random.split(k)
        return {"rnn": init_stack(k1, "gru", 3, 8), "w": 0.3 * jax.random.normal(k2, (8, 2))}

    opt = optax.adam(1e-2)

    def run(impl):
        def loss_fn(p):
            ys, _ = apply_stack("gru", p["rnn"], xs, impl=impl)
            return jnp.mean((ys @ p["w"] - targets) ** 2)

        @jax.jit
        def step(p, s):
            loss, g = jax.value_and_grad(loss_fn)(p)
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s, loss

        p = init(kp)
        s = opt.init(p)
        curve = []
        for _ in range(30):
            p, s, loss = step(p, s)
            curve.append(float(loss))
        return np.array(curve)

    curve_auto, curve_manual = run("scan"), run("manual")
    assert curve_auto[-1] < 0.7 * curve_auto[0]  # it actually trains
    np.testing.assert_allclose(curve_manual, curve_auto, atol=1e-4)


# ---------------------------------------------------------------------------
# Bad input


def _lstm_cache():
    params, xs, carry, _ = _problem("lstm", 2, 4, 3, 5, 1, False, None, jnp.float32)
    ys, final, cache = bptt.forward("lstm", params[0], xs, carry[0])
    return ys, final, cache


def test_backward_rejects_wrong_dys_shape():
    ys, final, cache = _lstm_cache()
    with pytest.raises(ValueError, match=r"dys must have the shape of ys.*\(2, 4, 5\)"):
        bptt.backward(cache, ys[:, :-1], final)
    with pytest.raises(ValueError, match="dys must have the shape"):
        bptt.backward(cache, jnp.swapaxes(ys, 0, 1), final)


def test_backward_rejects_wrong_dfinal():
    ys, final, cache = _lstm_cache()
    with pytest.raises(ValueError, match="dfinal"):
        bptt.backward(cache, ys, LSTMCarry(final.hidden[:1], final.cell))
    with pytest.raises(TypeError, match="LSTMCarry"):
        bptt.backward(cache, ys, final.hidden)


def test_backward_rejects_missing_or_incomplete_cache():
    ys, final, cache = _lstm_cache()
    with pytest.raises(TypeError, match="missing cache"):
        bptt.backward(None, ys, final)
    with pytest.raises(TypeError, match="LayerCache"):
        bptt.backward({"h_prev": ys}, ys, final)
    import dataclasses

    partial = dataclasses.replace(cache, residuals={k: v for k, v in cache.residuals.items() if k != "gates"})
    with pytest.raises(ValueError, match=r"incomplete cache.*'gates'"):
        bptt.backward(partial, ys, final)
    truncated = dataclasses.replace(cache, residuals={k: v[:-1] for k, v in cache.residuals.items()})
    with pytest.raises(ValueError, match="residual"):
        bptt.backward(truncated, ys, final)
    with pytest.raises(ValueError, match="built for cell 'lstm'"):
        bptt.gru_backward(cache, ys, final.hidden)
    with pytest.raises(TypeError, match="missing cache"):
        bptt.stack_backward(None, ys)


def test_bad_compute_dtype_and_inputs():
    params = init_stack(jax.random.PRNGKey(0), "rnn", 3, 4)
    xs = jnp.ones((2, 5, 3))
    with pytest.raises(ValueError, match="compute_dtype"):
        apply_stack("rnn", params, xs, impl="manual", compute_dtype=jnp.int8)
    with pytest.raises(ValueError, match="features"):
        bptt.forward("rnn", params[0], jnp.ones((2, 5, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"carry must have shape"):
        bptt.forward("rnn", params[0], xs, jnp.zeros((3, 4)))


def test_module_uses_no_autodiff():
    """The backward is hand-written: no jax.grad / vjp / jvp / linearize anywhere in the bptt
    package, the manual layer, or the cells' backward steps."""
    import pkgutil

    from lstm_jax import cells
    from lstm_jax.impls import manual

    modules = [bptt, manual] + [
        __import__(f"{pkg.__name__}.{info.name}", fromlist=["_"])
        for pkg in (bptt, cells) for info in pkgutil.iter_modules(pkg.__path__)
    ]
    assert len(modules) >= 8  # bptt/{__init__,scans,layer,stacks}, impls/manual, cells/{base,rnn,lstm,gru}
    banned = {"grad", "value_and_grad", "vjp", "jvp", "linearize", "linear_transpose"}
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
        }
        assert not (used & banned), (module.__name__, used & banned)
