"""Every registered layer implementation equals the reference ``impl="scan"``.

Outputs, final carry and gradients (w.r.t. params, inputs and the initial
carry) must agree to float32 tolerance, for every cell, with and without
padding ``lengths``, forwards and in reverse, on scaled-down versions of the
benchmark sizes. (``tests/test_bptt.py`` checks ``"manual"`` against ``jax.grad``
in float64 as well.)
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import bptt
from lstm_jax.impls import IMPLS as REGISTRY
from lstm_jax.impls import default_segment
from lstm_jax.cells import CELLS as CELL_REGISTRY
from lstm_jax.cells import get_cell
from lstm_jax.layers import apply_stack, init_stack, layer_impl, zeros_stack_carry

# Taken from the registry, so an implementation cannot be added untested.
IMPLS = [name for name in REGISTRY if name != "scan"]
CELLS = ["lstm", "gru", "rnn"]


def runs(impl: str, cell) -> bool:
    """Whether ``impl`` claims to run ``cell``; the claim itself is tested in
    :func:`test_every_impl_runs_or_refuses_every_cell`, so skipping on it hides nothing."""
    return REGISTRY[impl].supports(get_cell(cell))


def skip_if_unavailable(impl: str) -> None:
    """An impl that cannot run on this machine (``"cudnn"`` without a GPU) is skipped with its own reason;
    ``tests/test_cudnn.py`` checks the refusal."""
    reason = REGISTRY[impl].unavailable()
    if reason is not None:
        pytest.skip(reason)


# Compared by _compare_all on this machine; the others must be refused with their reason (tested below).
HERE = [name for name in IMPLS if REGISTRY[name].unavailable() is None]

# (T, B, I, H): the benchmark sizes scaled down (wide, long-thin).
SIZES = [(13, 4, 8, 16), (40, 3, 1, 8)]


def _loss(cell, impl, params, xs, carry, lengths, bidirectional):
    ys, finals = apply_stack(cell, params, xs, carry, lengths=lengths, impl=impl)
    leaves = jax.tree_util.tree_leaves(finals)
    # Non-uniform weights so every output position and carry leaf matters differently.
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(l)) for l in leaves), (ys, finals)


def _setup(cell, size, *, layers=1, bidirectional=False, seed=0):
    T, B, I, H = size
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_stack(k1, cell, I, H, num_layers=layers, bidirectional=bidirectional)
    xs = jax.random.normal(k2, (B, T, I))
    carry = jax.tree_util.tree_map(
        lambda z: 0.3 * jax.random.normal(k3, z.shape), zeros_stack_carry(cell, params, (B,))
    )
    return params, xs, carry


def _run(cell, name, params, xs, carry, lengths, bidirectional):
    f = jax.value_and_grad(
        functools.partial(_loss, cell, name, lengths=lengths, bidirectional=bidirectional),
        argnums=(0, 1, 2),
        has_aux=True,
    )
    return jax.jit(f)(params, xs, carry)


def _compare_all(cell, params, xs, carry, lengths=None, bidirectional=False, tol=2e-5, leave_out=()):
    """Each impl in IMPLS (but ``leave_out``) against the reference (computed once)."""
    (_, (ys_ref, fin_ref)), g_ref = _run(cell, "scan", params, xs, carry, lengths, bidirectional)
    for impl in [name for name in HERE if runs(name, cell) and name not in leave_out]:
        (_, (ys_got, fin_got)), g_got = _run(cell, impl, params, xs, carry, lengths, bidirectional)
        np.testing.assert_allclose(ys_got, ys_ref, rtol=tol, atol=tol, err_msg=f"{impl} outputs")
        for a, b in zip(jax.tree_util.tree_leaves(fin_got), jax.tree_util.tree_leaves(fin_ref)):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{impl} final carry")
        assert jax.tree_util.tree_structure(g_got) == jax.tree_util.tree_structure(g_ref)
        for a, b in zip(jax.tree_util.tree_leaves(g_got), jax.tree_util.tree_leaves(g_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{impl} gradients")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("size", SIZES)
def test_matches_reference(cell, size):
    params, xs, carry = _setup(cell, size)
    _compare_all(cell, params, xs, carry)


@pytest.mark.parametrize("cell", CELLS)
def test_matches_reference_lengths_bidirectional_stack(cell):
    size = (9, 4, 3, 8)
    params, xs, carry = _setup(cell, size, layers=2, bidirectional=True, seed=1)
    lengths = jnp.array([9, 1, 5, 0])
    # cudnn refuses the gradient of a reversed layer with lengths (tests/test_cudnn.py checks the refusal).
    _compare_all(cell, params, xs, carry, lengths=lengths, bidirectional=True, leave_out=("cudnn",))


@pytest.mark.parametrize("impl", sorted(set(IMPLS) - set(HERE)))
def test_impls_left_out_here_are_refused_with_their_reason(impl):
    """An impl the comparisons above leave out on this machine is refused, with its reason, not run."""
    c = get_cell("lstm")
    with pytest.raises(ValueError, match=f"^{re.escape(REGISTRY[impl].unavailable())}$"):
        layer_impl(impl)(c, c.init(jax.random.PRNGKey(0), 2, 3), jnp.ones((1, 2, 2)), c.zeros_carry(3, (1,)))


@pytest.mark.parametrize("impl", sorted(REGISTRY))
@pytest.mark.parametrize("cell", sorted(CELL_REGISTRY))
def test_every_impl_runs_or_refuses_every_cell(impl, cell):
    """``supports`` is the truth: a supported cell runs, any other is refused with one clear error."""
    c = get_cell(cell)
    params = c.init(jax.random.PRNGKey(0), 2, 3)
    xs, carry = jnp.ones((1, 2, 2)), c.zeros_carry(3, (1,))
    if runs(impl, cell):
        skip_if_unavailable(impl)
        ys, _ = layer_impl(impl)(c, params, xs, carry)
        assert ys.shape == (1, 2, 3)
    else:
        with pytest.raises(ValueError, match=rf"layer impl '{impl}' cannot run cell '{cell}'.*impls that run") as err:
            layer_impl(impl)(c, params, xs, carry)
        assert "scan" in str(err.value).rpartition(":")[2]


@pytest.mark.parametrize("impl", [name for name in IMPLS if runs(name, "lstm")])
def test_single_sequence_and_unroll(impl):
    skip_if_unavailable(impl)
    cell = get_cell("lstm")
    params, xs, carry = _setup("lstm", (10, 1, 3, 6), seed=2)
    p, x, c = params[0], xs[0], jax.tree_util.tree_map(lambda a: a[0], carry[0])
    ys_ref, fin_ref = layer_impl("scan")(cell, p, x, c)
    ys, fin = layer_impl(impl)(cell, p, x, c, unroll=3)
    np.testing.assert_allclose(ys, ys_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(fin.cell, fin_ref.cell, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("segment,inner", [(3, "manual"), (16, "scan"), (5, "scan")])
def test_remat_segment_lengths_including_padding(segment, inner):
    cell = get_cell("gru")
    params, xs, carry = _setup("gru", (16, 2, 3, 5), seed=3)
    p, c = params[0], carry[0]
    lengths = jnp.array([16, 11])

    def loss(name, p, **kw):
        impl = layer_impl("remat", segment=segment, inner=inner) if name == "remat" else layer_impl(name)
        ys, fin = impl(cell, p, xs, c, lengths=lengths, reverse=True, **kw)
        return jnp.sum(ys**2) + jnp.sum(fin)

    np.testing.assert_allclose(loss("remat", p), loss("scan", p), rtol=1e-5)
    ga = jax.grad(functools.partial(loss, "remat"))(p)
    gb = jax.grad(functools.partial(loss, "scan"))(p)
    for k in p:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-4, atol=1e-5)


def test_default_segment():
    assert default_segment(8192) == 64 or 8192 % default_segment(8192) == 0
    assert default_segment(784) == 28
    assert default_segment(100) == 10
    assert default_segment(1) == 1
    assert default_segment(97) == 10  # prime: padded


@pytest.mark.slow  # in the default run: superseded by tests/test_precision.py
def test_manual_bf16_compute_runs_and_is_close():
    cell = get_cell("lstm")
    params, xs, carry = _setup("lstm", (6, 2, 4, 8), seed=4)
    p, c = params[0], carry[0]

    def loss(name, p):
        ys, _ = layer_impl(name)(cell, p, xs, c, compute_dtype=jnp.bfloat16)
        return jnp.sum(ys**2)

    ga = jax.grad(functools.partial(loss, "manual"))(p)
    gb = jax.grad(functools.partial(loss, "scan"))(p)
    assert ga["w_h"].dtype == jnp.float32
    for k in p:
        np.testing.assert_allclose(ga[k], gb[k], rtol=5e-2, atol=5e-2)


def test_manual_rejects_bad_carry():
    cell = get_cell("lstm")
    params, xs, carry = _setup("lstm", (4, 2, 3, 5))
    with pytest.raises(TypeError):
        layer_impl("manual")(cell, params[0], xs, (carry[0].hidden, carry[0].cell))
    with pytest.raises(ValueError):
        layer_impl("manual")(cell, params[0], xs[:, :, :2], carry[0])
