"""``impl="onednn"``: oneDNN's fused RNN primitives (XLA FFI) against the reference ``"scan"``.

fp32: outputs, final carries and every gradient (params, inputs, initial
carry) within 1e-5 relative (max abs difference over the leaf's max abs value)
for LSTM, GRU and RNN over shapes with B=1, T=1, odd H, reverse and a 2-layer
bidirectional stack. bf16: oneDNN's bf16 kernel against the float32 reference
within the tolerances of tests/test_precision.py (whose module docstring
derives them). The registry's own tests (tests/test_impls.py) cover it too.
Skipped, with the reason, where the ``onednn`` extra (or a compiler) is missing.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lstm_jax.cells import get_cell
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.impls import onednn
from lstm_jax.impls._onednn import build
from lstm_jax.layers import apply_stack, init_stack, zeros_stack_carry

REASON = IMPLS["onednn"].unavailable()
needs_onednn = pytest.mark.skipif(REASON is not None, reason=str(REASON))
CELLS = ["lstm", "gru", "rnn"]
FP32_REL = 1e-5
OUT_ATOL, GRAD_REL = 1.5e-2, 4e-2  # tests/test_precision.py's bf16 bounds


def _problem(cell, size, layers=1, bidirectional=False, seed=0, noise=0.2):
    T, B, I, H = size
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = init_stack(k1, cell, I, H, num_layers=layers, bidirectional=bidirectional)
    # Non-zero biases everywhere (init zeros some): a misplaced bias block must show.
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(k4, len(leaves))
    params = tree.unflatten([p + noise * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    xs = jax.random.normal(k2, (B, T, I))
    carry = jax.tree_util.tree_map(lambda z: 0.3 * jax.random.normal(k3, z.shape), zeros_stack_carry(cell, params, (B,)))
    return params, xs, carry


def _value_and_grads(cell, impl, params, xs, carry, reverse=False):
    def loss(params, xs, carry):
        if isinstance(params, list):
            ys, finals = apply_stack(cell, params, xs, carry, impl=impl)
        else:
            ys, finals = layer_impl(impl)(get_cell(cell), params, xs, carry, reverse=reverse)
        w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(finals)), (ys, finals)

    (_, (ys, finals)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, carry)
    return ys, finals, grads


def _assert_rel(got, want, bound, what):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        scale = float(jnp.max(jnp.abs(b))) or 1.0
        err = float(jnp.max(jnp.abs(a - b))) / scale
        assert err <= bound, f"{what}{jax.tree_util.keystr(path)}: relative difference {err:.2e} > {bound:.0e}"


# (T, B, I, H, reverse): T=1 and B=1 with odd H in reverse; a longer one with one input feature.
# Every cell at the tiny one (so both weight layouts of every cell run by default), the LSTM at both
# (-m slow: every cell at both); the stack test below runs every cell in both directions.
SINGLE = [(1, 1, 3, 5, True), (12, 2, 1, 7, False)]


@needs_onednn
@pytest.mark.parametrize(
    "cell, size",
    [pytest.param(c, s, marks=() if c == "lstm" or s == SINGLE[0] else pytest.mark.slow,
                  id="{}-T{}B{}I{}H{}{}".format(c, *s[:4], "r" if s[4] else "")) for c in CELLS for s in SINGLE],
)
def test_fp32_matches_scan(cell, size, monkeypatch):
    """Both weight layouts: oneDNN's own (blocked, the default) and the library's ldigo as given (plain)."""
    *shape, reverse = size
    params, xs, carry = _problem(cell, shape, seed=sum(shape))
    p, c = params[0], carry[0]
    ys_ref, fin_ref, g_ref = _value_and_grads(cell, "scan", p, xs, c, reverse)
    for layout in ("plain", "blocked"):
        monkeypatch.setenv("LSTM_JAX_ONEDNN_WEIGHTS", layout)
        ys, fin, g = _value_and_grads(cell, "onednn", p, xs, c, reverse)
        _assert_rel(ys, ys_ref, FP32_REL, f"{layout}: outputs")
        _assert_rel(fin, fin_ref, FP32_REL, f"{layout}: final carry")
        _assert_rel(g, g_ref, FP32_REL, f"{layout}: gradient")


@needs_onednn
@pytest.mark.parametrize("cell", CELLS)
def test_fp32_two_layer_bidirectional_stack_matches_scan(cell):
    params, xs, carry = _problem(cell, (7, 1, 5, 9), layers=2, bidirectional=True, seed=3)
    got = _value_and_grads(cell, "onednn", params, xs, carry)
    want = _value_and_grads(cell, "scan", params, xs, carry)
    for what, a, b in zip(("outputs", "final carry", "gradient"), got, want):
        _assert_rel(a, b, FP32_REL, what)


@needs_onednn
@pytest.mark.skipif(not onednn.cpu_has_bf16(), reason="this CPU has no bf16 dot products (avx512_bf16/amx_bf16)")
@pytest.mark.parametrize("cell", CELLS)
def test_bf16_kernel_within_bf16_tolerance(cell):
    """oneDNN's bf16 RNN (no lengths, so the fused kernel runs) against the float32 reference,
    on tests/test_precision.py's kind of problem (the cells' own init, no added noise)."""
    params, xs, carry = _problem(cell, (6, 3, 8, 16), layers=2, bidirectional=True, seed=5, noise=0.0)
    ys32, fin32, g32 = _value_and_grads(cell, "scan", params, xs, carry)
    ys16, fin16, g16 = _value_and_grads(cell, layer_impl("onednn", precision="bf16"), params, xs, carry)
    assert ys16.dtype == jnp.float32
    diff = float(jnp.max(jnp.abs(ys16 - ys32)))
    assert 1e-6 < diff < OUT_ATOL, diff  # bf16 ran (it differs) and stayed within the policy's tolerance
    for a, b in zip(jax.tree_util.tree_leaves(g16), jax.tree_util.tree_leaves(g32)):
        assert a.dtype == jnp.float32
        rel = float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))
        assert rel < GRAD_REL, rel


@needs_onednn
def test_lengths_run_manual_with_a_warning_and_match_scan():
    params, xs, carry = _problem("lstm", (5, 3, 2, 4), seed=7)
    p, c = params[0], carry[0]
    lengths = jnp.array([5, 2, 0])
    cell = get_cell("lstm")

    def run(impl, p, xs, c):
        return layer_impl(impl)(cell, p, xs, c, lengths=lengths, reverse=True)

    with pytest.warns(UserWarning, match="no per-example lengths; calls with lengths run 'manual'"):
        ys, fin = jax.jit(functools.partial(run, "onednn"))(p, xs, c)
    ys_ref, fin_ref = jax.jit(functools.partial(run, "scan"))(p, xs, c)
    _assert_rel((ys, fin), (ys_ref, fin_ref), FP32_REL, "with lengths")


@needs_onednn
def test_refusals_are_one_line(monkeypatch):
    cell = get_cell("lstm")
    params, xs, carry = _problem("lstm", (3, 2, 2, 3))
    with pytest.raises(ValueError, match=r"^layer impl 'onednn' computes in float32 or bfloat16; got compute_dtype float16$"):
        layer_impl("onednn")(cell, params[0], xs, carry[0], compute_dtype=jnp.float16)
    with pytest.raises(TypeError, match="runs float32 params"):
        bf = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), (params[0], xs, carry[0]))
        layer_impl("onednn")(cell, *bf)
    with pytest.raises(ValueError, match=r"^layer impl 'onednn' cannot run cell 'min_gru': .*; impls that run 'min_gru': "):
        mg = get_cell("min_gru")
        layer_impl("onednn")(mg, mg.init(jax.random.PRNGKey(0), 2, 3), xs, mg.zeros_carry(3, (2,)))
    monkeypatch.setenv("LSTM_JAX_ONEDNN_WEIGHTS", "packed")
    with pytest.raises(ValueError, match=r"^LSTM_JAX_ONEDNN_WEIGHTS must be 'plain' or 'blocked'; got 'packed'$"):
        layer_impl("onednn")(cell, params[0], xs, carry[0])


def test_missing_onednn_is_a_one_line_reason(monkeypatch, tmp_path):
    """The real lookup, through the documented override: ``$DNNLROOT`` alone is searched, and named;
    pointed at the environment's install it finds that one."""
    try:
        found = build.find_onednn()
    except build.OnednnUnavailable:
        found = None
    monkeypatch.setenv("DNNLROOT", str(tmp_path))
    with pytest.raises(build.OnednnUnavailable, match=rf"^needs oneDNN's library and headers \(pip install onednn-cpu-gomp"
                                                      rf".*\); none under {re.escape(str(tmp_path))}$"):
        build.build()
    assert onednn.precisions() == ("fp32",)  # what the registry asks at import: an answer, not an error
    if found is not None:
        monkeypatch.setenv("DNNLROOT", str(found[0].parent))
        assert build.find_onednn() == found


def _fake_compiler(tmp_path, exit_code=3):
    """A compiler that answers ``--version`` (so it is the build's compiler) and fails to compile."""
    fake = tmp_path / "fake-cxx"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "fake-cxx 1.0"; exit 0; }}\n'
                    f'echo "fake-cxx: cannot" >&2\nexit {exit_code}\n')
    fake.chmod(0o755)
    return fake


@pytest.mark.skipif(REASON is not None and "needs oneDNN" in REASON, reason=str(REASON))
def test_a_compiler_error_is_one_line_with_the_log(monkeypatch, tmp_path):
    """A failing compiler leaves a log and a one-line reason naming it; nothing is cached."""
    monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(_fake_compiler(tmp_path)))
    with pytest.raises(build.OnednnUnavailable, match=r"could not compile its FFI library \(fake-cxx exit 3\); log: ") as err:
        build.build()
    log = re.search(r"log: (\S+)$", str(err.value)).group(1)
    assert "\n" not in str(err.value) and open(log).read().startswith(str(tmp_path / "fake-cxx"))
    assert "fake-cxx: cannot" in open(log).read()
    assert not list(tmp_path.rglob("ffi_rnn*"))


@needs_onednn
def test_the_build_is_cached_across_processes():
    """A second process finds the library the first one built, and runs no compiler: with its compiler
    (the lookup hits) and with ``CXX=false`` (it could not have built one) it names the same file, whose
    inode and mtime, and the build log's mtime, are unchanged."""
    path = build.load().path
    log = path.parent / "build.log"
    before = (path.stat().st_ino, path.stat().st_mtime_ns, log.stat().st_mtime_ns)
    code = ("import os; from lstm_jax.impls._onednn import build; print(build.build())\n"
            "os.environ['CXX'] = 'false'; print(build.build()); print(build.load().describe())")
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=root,
                         timeout=300).stdout.splitlines()
    assert out[:2] == [str(path), str(path)]
    assert "isa=" in out[2]
    assert (path.stat().st_ino, path.stat().st_mtime_ns, log.stat().st_mtime_ns) == before
