"""``impl="cudnn"``: cuDNN's LSTM behind the library's layer interface.

On a CPU the weight conversion and everything around the kernel (lengths
including zero, reverse, the initial and final carry, bidirectional stacks,
gradients back to the library's params) run through ``jax.experimental.rnn.lstm_ref``,
jax's pure-JAX reference with the same flat-weight layout as its cuDNN kernel,
and must equal ``"scan"``. The cuDNN kernel itself runs only on a GPU; those
tests skip elsewhere, with that reason.
"""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

from lstm_jax.cells import LSTMCarry, get_cell
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.impls.cudnn import (
    cudnn_core, cudnn_kernel, from_cudnn_weights, num_weights, reference_kernel, to_cudnn_weights,
)
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

ON_GPU = jax.default_backend() == "gpu"
needs_gpu = pytest.mark.skipif(
    not ON_GPU, reason=f"the cuDNN kernel needs a GPU backend (jax.default_backend() is {jax.default_backend()!r})"
)

#: The registered "cudnn" impl with jax's reference kernel in place of cuDNN: runs on any backend. It
#: differentiates reversed layers with lengths too (the refusal is about cuDNN's kernel; tested below).
REFERENCE = dataclasses.replace(
    IMPLS["cudnn"], name="cudnn-reference", core=functools.partial(cudnn_core, kernel=reference_kernel),
    available=lambda: None, refuse_gradient=lambda reverse, lengths: None,
)
#: The registered impl as it is on a GPU (its refusals included), made to run here; its kernel would fail
#: off a GPU, so only what is decided before the kernel runs is tested with it.
FORCED = dataclasses.replace(IMPLS["cudnn"], available=lambda: None)


def _problem(T=7, B=4, I=3, H=5, *, layers=1, bidirectional=False, dtype=jnp.float32, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init_stack(k1, "lstm", I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype)
    # Non-zero biases in every gate, so a bias put in the wrong place or gate cannot cancel out.
    params = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.cos(jnp.arange(a.size, dtype=dtype).reshape(a.shape)), params)
    xs = jax.random.normal(k2, (B, T, I), dtype)
    carry = jax.tree_util.tree_map(
        lambda z: 0.5 * jax.random.normal(k3, z.shape, dtype), zeros_stack_carry("lstm", params, (B,))
    )
    return params, xs, carry


def _loss(impl, params, xs, carry, lengths, reverse):
    if reverse:  # a single reverse layer (apply_stack's layers run forwards unless bidirectional)
        ys, final = impl("lstm", params[0], xs, carry[0], lengths=lengths, reverse=True)
        finals = [final]
    else:
        ys, finals = apply_stack("lstm", params, xs, carry, lengths=lengths, impl=impl)
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree_util.tree_leaves(finals)), (ys, finals)


def _outputs_and_grads(impl, params, xs, carry, lengths=None, reverse=False):
    f = jax.value_and_grad(functools.partial(_loss, impl, lengths=lengths, reverse=reverse), argnums=(0, 1, 2),
                           has_aux=True)
    (_, out), grads = jax.jit(f)(params, xs, carry)
    return out, grads


def _assert_same(got, ref, tol, what):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(ref)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=what)


def _compare(impl, params, xs, carry, lengths, reverse, tol, grad_tol):
    out_ref, g_ref = _outputs_and_grads(layer_impl("scan"), params, xs, carry, lengths, reverse)
    out, g = _outputs_and_grads(impl, params, xs, carry, lengths, reverse)
    _assert_same(out, out_ref, tol, "outputs and final carry")
    _assert_same(g, g_ref, grad_tol, "gradients w.r.t. params, xs, initial carry")
    return out


# --------------------------------------------------------------------------- the weight layout


def test_flat_weight_layout_is_jax_rnns():
    I, H = 3, 5
    params = _problem(I=I, H=H)[0][0]
    flat = to_cudnn_weights(params)
    assert flat.shape == (num_weights(I, H),) == (rnn.get_num_params_in_lstm(I, H, 1, False),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, I, H, 1, False)
    np.testing.assert_array_equal(w_ih[0], params["w_x"].T)  # (4H, I), gate blocks [i|f|g|o] on axis 0
    np.testing.assert_array_equal(w_hh[0], params["w_h"].T)
    np.testing.assert_array_equal(b_ih[0], params["b"])
    np.testing.assert_array_equal(b_hh[0], np.zeros(4 * H))
    back = from_cudnn_weights(flat, I, H)
    _assert_same(back, params, 0.0, "round trip")


def test_from_cudnn_weights_folds_both_biases_and_checks_the_shape():
    I, H = 2, 3
    flat = rnn.init_lstm_weight(jax.random.PRNGKey(0), I, H, 1, False)
    params = from_cudnn_weights(flat, I, H)
    _, _, b_ih, b_hh = rnn.unpack_lstm_weights(flat, I, H, 1, False)
    np.testing.assert_allclose(params["b"], b_ih[0] + b_hh[0], rtol=1e-7)
    assert params["w_x"].shape == (I, 4 * H) and params["w_h"].shape == (H, 4 * H)
    with pytest.raises(ValueError, match=rf"input_size=2, hidden_size=3 must have shape \({num_weights(I, H)},\); got \(5,\)"):
        from_cudnn_weights(jnp.ones(5), I, H)


# --------------------------------------------------------------------------- around the kernel, on any backend


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 3, 0, 1]])
def test_reference_kernel_equals_scan_float32(lengths, reverse):
    params, xs, carry = _problem()
    lengths = None if lengths is None else jnp.array(lengths)
    (ys, finals) = _compare(REFERENCE, params, xs, carry, lengths, reverse, 1e-5, 1e-5)
    if lengths is not None:  # the zero-length row: zero outputs, the initial carry back
        np.testing.assert_array_equal(ys[2], 0.0)
        _assert_same(jax.tree_util.tree_map(lambda a: a[2], finals[0]),
                     jax.tree_util.tree_map(lambda a: a[2], carry[0]), 0.0, "zero-length carry")


def test_reference_kernel_equals_scan_in_a_two_layer_bidirectional_stack():
    params, xs, carry = _problem(T=9, B=4, I=3, H=6, layers=2, bidirectional=True, seed=1)
    _compare(REFERENCE, params, xs, carry, jnp.array([9, 1, 5, 0]), False, 1e-5, 1e-5)


def test_reference_kernel_equals_scan_float64():
    with jax.enable_x64(True):
        params, xs, carry = _problem(dtype=jnp.float64, seed=2)
        _compare(REFERENCE, params, xs, carry, jnp.array([7, 0, 2, 6]), True, 1e-10, 1e-10)


def test_single_sequence_and_traced_lengths():
    params, xs, carry = _problem(seed=3)
    p, c = params[0], carry[0]
    one = jax.tree_util.tree_map(lambda a: a[0], c)
    ys, fin = REFERENCE("lstm", p, xs[0], one)
    ys_ref, fin_ref = layer_impl("scan")("lstm", p, xs[0], one)
    _assert_same((ys, fin), (ys_ref, fin_ref), 1e-5, "one (T, I) sequence")
    run = jax.jit(lambda lengths: REFERENCE("lstm", p, xs, c, lengths=lengths))
    _assert_same(run(jnp.array([9, -1, 3, 0])), layer_impl("scan")("lstm", p, xs, c, lengths=jnp.array([7, 0, 3, 0])),
                 1e-5, "traced lengths are clipped like every impl's")


# --------------------------------------------------------------------------- refusals


@pytest.mark.skipif(ON_GPU, reason="checks the refusal off a GPU")
def test_refused_off_a_gpu_with_one_clear_line():
    message = f"layer impl 'cudnn' needs a GPU backend (jax.default_backend() is {jax.default_backend()!r}); use 'manual' on CPU"
    assert IMPLS["cudnn"].unavailable() == message
    params, xs, carry = _problem()
    with pytest.raises(ValueError) as err:
        jax.jit(lambda p: apply_stack("lstm", p, xs, carry, impl="cudnn"))(params)
    assert str(err.value) == message
    with pytest.raises(ValueError, match="x_t has 2 features"):  # bad input: the message every impl gives
        apply_stack("lstm", params, xs[:, :, :2], carry, impl="cudnn")


def test_refuses_other_cells_bf16_and_other_dtypes():
    gru = get_cell("gru")
    with pytest.raises(ValueError, match=r"layer impl 'cudnn' cannot run cell 'gru': it runs only the LSTM equations"):
        layer_impl("cudnn")(gru, gru.init(jax.random.PRNGKey(0), 2, 3), jnp.ones((1, 2, 2)), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"layer impl 'cudnn' has no 'bf16' precision policy \(it runs fp32\); "
                                         r"impls with 'bf16': scan, .*manual"):
        layer_impl("cudnn", precision="bf16")
    assert layer_impl("cudnn", precision="fp32").precision == "fp32"
    params, xs, carry = _problem()
    with pytest.raises(ValueError, match="no reduced-precision matmuls.*got compute_dtype bfloat16"):
        REFERENCE("lstm", params[0], xs, carry[0], compute_dtype=jnp.bfloat16)
    with jax.enable_x64(True):
        x64 = jnp.zeros((1, 2, 3), jnp.float64)
        with pytest.raises(TypeError, match="runs float32 only.*float64"):
            cudnn_kernel(x64, x64[:, :1, :1], x64[:, :1, :1], jnp.zeros(num_weights(3, 1)), jnp.ones(1, jnp.int32), 3, 1)


def test_a_reversed_layer_with_lengths_is_not_differentiated():
    """Refused while the gradient is traced (before any kernel: this runs off a GPU), naming 'manual';
    a single reversed layer and a bidirectional stack's backward direction alike. Without lengths, or
    without a gradient, nothing is refused (the reference kernel stands in to run it here)."""
    from lstm_jax.impls.cudnn import GRADIENT_REFUSAL

    assert "\n" not in GRADIENT_REFUSAL and "use impl='manual'" in GRADIENT_REFUSAL
    params, xs, carry = _problem()
    lengths = jnp.array([7, 3, 0, 1])
    with pytest.raises(ValueError) as err:
        _outputs_and_grads(FORCED, params, xs, carry, lengths, True)  # one reversed layer
    assert str(err.value) == GRADIENT_REFUSAL
    guarded = dataclasses.replace(FORCED, core=REFERENCE.core)  # the forward direction runs a kernel first
    bi_params, _, bi_carry = _problem(bidirectional=True)
    with pytest.raises(ValueError) as err:
        _outputs_and_grads(guarded, bi_params, xs, bi_carry, lengths, False)  # a stack's backward direction
    assert str(err.value) == GRADIENT_REFUSAL
    _compare(guarded, params, xs, carry, None, True, 1e-5, 1e-5)  # reversed without lengths: differentiated
    ys_ref = layer_impl("scan")("lstm", params[0], xs, carry[0], lengths=lengths, reverse=True)[0]
    ys = jax.jit(lambda p: guarded("lstm", p, xs, carry[0], lengths=lengths, reverse=True)[0])(params[0])
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)  # no gradient: it runs


# --------------------------------------------------------------------------- the cuDNN kernel (GPU only)


@needs_gpu
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 3, 0, 1]])
def test_cudnn_equals_scan_at_highest_precision(lengths, reverse):
    # tests/conftest.py runs this under jax.default_matmul_precision("highest"): no TF32 in cuDNN or XLA.
    params, xs, carry = _problem()
    lengths = None if lengths is None else jnp.array(lengths)
    if reverse and lengths is not None:  # refused when differentiated (test above); the forward runs
        run = jax.jit(lambda p: layer_impl("cudnn")("lstm", p, xs, carry[0], lengths=lengths, reverse=True))
        want = layer_impl("scan")("lstm", params[0], xs, carry[0], lengths=lengths, reverse=True)
        _assert_same(run(params[0]), want, 1e-5, "forward of a reversed layer with lengths")
        return
    _compare(layer_impl("cudnn"), params, xs, carry, lengths, reverse, 1e-5, 1e-5)


@needs_gpu
def test_cudnn_equals_scan_in_a_two_layer_bidirectional_stack():
    """With lengths the backward direction's gradient is refused: the forward is compared, and the
    gradient without lengths."""
    params, xs, carry = _problem(T=9, B=4, I=3, H=6, layers=2, bidirectional=True, seed=1)
    lengths = jnp.array([9, 1, 5, 0])
    run = jax.jit(lambda p: apply_stack("lstm", p, xs, carry, lengths=lengths, impl="cudnn"))
    _assert_same(run(params), apply_stack("lstm", params, xs, carry, lengths=lengths, impl="scan"), 1e-5, "forward")
    _compare(layer_impl("cudnn"), params, xs, carry, None, False, 1e-5, 1e-5)


@needs_gpu
def test_cudnn_equals_its_reference_kernel_at_a_benchmark_like_size():
    params, xs, carry = _problem(T=50, B=64, I=65, H=256, seed=4)
    lengths = jnp.arange(64, dtype=jnp.int32) % 51
    out_ref, g_ref = _outputs_and_grads(REFERENCE, params, xs, carry, lengths)
    out, g = _outputs_and_grads(layer_impl("cudnn"), params, xs, carry, lengths)
    _assert_same(out, out_ref, 1e-4, "outputs and final carry")
    _assert_same(g, g_ref, 1e-3, "gradients")


@needs_gpu
@pytest.mark.default_matmul_precision
def test_cudnn_under_default_precision_is_within_tf32_tolerance():
    """Under JAX's default matmul precision cuDNN (and XLA) may use TF32 (10-bit mantissa, relative
    error ~5e-4 per product) for float32. The stated tolerance: outputs and final carry within 2e-2
    absolute of "scan" at "highest"; gradients within 5e-2 of it relative to their largest entry."""
    params, xs, carry = _problem(T=20, B=8, I=16, H=64, seed=5)
    lengths = jnp.array([20, 3, 0, 17, 20, 1, 9, 12])
    with jax.default_matmul_precision("highest"):
        out_ref, g_ref = _outputs_and_grads(layer_impl("scan"), params, xs, carry, lengths)
    out, g = _outputs_and_grads(layer_impl("cudnn"), params, xs, carry, lengths)
    _assert_same(out, out_ref, 2e-2, "outputs and final carry (TF32 tolerance)")
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        scale = float(jnp.max(jnp.abs(b))) or 1.0
        assert float(jnp.max(jnp.abs(a - b))) <= 5e-2 * scale


# --------------------------------------------------------------------------- the kernel call, traced on any backend


def _rnn_eqns(jaxpr):
    """Every rnn_fwd / rnn_bwd equation of a jaxpr, those of sub-jaxprs (jit, custom_vjp, ...) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("rnn_fwd", "rnn_bwd"):
            found.append(eqn)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
                if hasattr(sub, "eqns"):
                    found += _rnn_eqns(sub)
    return found


@pytest.mark.default_matmul_precision  # on a GPU too: the test sets the precision it checks
@pytest.mark.parametrize("precision", [None, "highest"])
def test_cudnn_kernel_traces_with_the_layers_sizes_and_the_tf32_switch(monkeypatch, precision):
    """Traced (not run) on any backend: what the registered impl hands cuDNN, forwards and backwards.

    Off a GPU jaxlib has no workspace-size query, so a stand-in answers it; the traced
    primitives then carry the sizes cuDNN would get, and ``cudnn_allow_tf32`` follows
    ``jax.default_matmul_precision``."""
    T, B, I, H = 7, 4, 3, 5
    monkeypatch.setattr(rnn.gpu_rnn, "compute_rnn_workspace_reserve_space_sizes", lambda *args: (0, 8), raising=False)
    forced = dataclasses.replace(IMPLS["cudnn"], available=lambda: None)
    params, xs, carry = _problem(T=T, B=B, I=I, H=H)

    def loss(p, c):
        ys, final = forced("lstm", p, xs, c, lengths=jnp.array([7, 3, 0, 1]))  # reversed: refused, tested above
        return jnp.sum(ys) + jnp.sum(final.cell)

    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params[0], carry[0])
    eqns = _rnn_eqns(jaxpr.jaxpr)
    assert sorted(e.primitive.name for e in eqns) == ["rnn_bwd", "rnn_fwd"]
    for e in eqns:
        assert (e.params["input_size"], e.params["hidden_size"], e.params["num_layers"]) == (I, H, 1)
        assert e.params["bidirectional"] is False and e.params["dropout"] == 0.0
        assert e.params["cudnn_allow_tf32"] is (precision is None)
    fwd = next(e for e in eqns if e.primitive.name == "rnn_fwd")
    x, h0, c0, w, lengths = (v.aval for v in fwd.invars)
    assert x.shape == (B, T, I) and h0.shape == c0.shape == (1, B, H)
    assert w.shape == (num_weights(I, H),) and lengths.shape == (B,) and lengths.dtype == jnp.int32
    grads = jax.eval_shape(jax.grad(loss, argnums=(0, 1)), params[0], carry[0])
    assert jax.tree_util.tree_map(lambda g: g.shape, grads) == jax.tree_util.tree_map(
        lambda a: a.shape, (params[0], carry[0]))
