"""Inputs that once crashed or fooled ``impl="onednn"``, run in a child process by tests/test_onednn_hardening.py.

``python tests/onednn_cases.py CASE [CASE ...]`` runs each case for the LSTM,
the GRU and the RNN and prints one line per (case, cell): ``ok <case> <cell>``
when ``onednn`` equals ``scan`` (outputs, final carry and, where the case
differentiates, gradients within 1e-5 relative), or ``refused <case> <cell>:
<message>`` when it raised one clear one-line Python error. Anything else (a
different answer, a multi-line error) prints ``FAIL``; a crash or a hang shows
as the child's exit status or the parent's timeout. Cases run in the order
given, so a crash in one hides the later ones (the test names the last line).

Cases:
  bf16_bias  a bfloat16 bias beside float32 weights (scan promotes; onednn read it as float32 bytes)
  f64_carry  a float64 initial carry with jax_enable_x64 and float32 params
  w_x_1d     a 1-D ``w_x`` whose length matches, under ``jax.grad``
  empty      a batch of zero sequences (B = 0), forward and gradient
  fork       a child forked after a call computes the parent's answer (within 30 s)
  ffi_sizes  direct FFI calls whose buffers do not fit the plan (a short bias, a wrong h0 batch, a wrong
             output, a short workspace, a wrong cotangent): each must return the FFI error naming the operand
"""

from __future__ import annotations

import os
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.cells import get_cell
from lstm_jax.impls import layer_impl

CELLS = ("lstm", "gru", "rnn")
REL = 1e-5


def _problem(cell_name, T=4, B=2, I=3, H=5, seed=0):
    cell = get_cell(cell_name)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k1, I, H)
    params = {k: v + 0.1 * jnp.cos(jnp.arange(v.size, dtype=v.dtype).reshape(v.shape)) for k, v in params.items()}
    xs = jax.random.normal(k2, (B, T, I), jnp.float32)
    carry = jax.tree_util.tree_map(lambda z: 0.3 * jax.random.normal(k3, z.shape, z.dtype), cell.zeros_carry(H, (B,)))
    return cell, params, xs, carry


def _run(impl, cell, params, xs, carry, grad):
    def loss(params, xs, carry):
        ys, final = layer_impl(impl)(cell, params, xs, carry)
        w = jnp.cos(jnp.arange(ys.size)).reshape(ys.shape).astype(ys.dtype)
        return jnp.sum(w * ys) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(final)), (ys, final)

    if not grad:
        return jax.jit(lambda p, x, c: layer_impl(impl)(cell, p, x, c))(params, xs, carry)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, xs, carry)
    return out, grads


def _differences(got, want):
    """Problems between two pytrees: structure, dtype, shape, relative difference."""
    problems = []
    if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(want):
        return [f"structure {jax.tree_util.tree_structure(got)} != {jax.tree_util.tree_structure(want)}"]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        where = jax.tree_util.keystr(path)
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}")
            continue
        got_dtype = a.dtype
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.size == 0:
            continue
        scale = float(np.max(np.abs(b))) or 1.0
        err = float(np.max(np.abs(a - b))) / scale
        # A leaf stored in a narrower dtype (a bfloat16 bias's gradient) may differ by its rounding.
        if not err <= max(REL, float(jnp.finfo(got_dtype).eps)):
            problems.append(f"{where}: relative difference {err:.2e}")
    return problems


def _compare(case, cell_name, cell, params, xs, carry, grad=True):
    try:
        got = _run("onednn", cell, params, xs, carry, grad)
    except (ValueError, TypeError) as err:
        message = str(err)
        verdict = "refused" if "\n" not in message and message else "FAIL multi-line error"
        print(f"{verdict} {case} {cell_name}: {type(err).__name__}: {message}", flush=True)
        return
    want = _run("scan", cell, params, xs, carry, grad)
    problems = _differences(got, want)
    print(f"{'FAIL' if problems else 'ok'} {case} {cell_name}" + (": " + "; ".join(problems) if problems else ""),
          flush=True)


def bf16_bias(cell_name):
    cell, params, xs, carry = _problem(cell_name)
    for key in (cell.input_bias, cell.recurrent_bias):
        if key is not None:
            params[key] = params[key].astype(jnp.bfloat16)
    _compare("bf16_bias", cell_name, cell, params, xs, carry)


def f64_carry(cell_name):
    with jax.enable_x64(True):  # as JAX_ENABLE_X64=1 would, for this case only
        cell, params, xs, carry = _problem(cell_name)
        carry = jax.tree_util.tree_map(lambda c: c.astype(jnp.float64), carry)
        _compare("f64_carry", cell_name, cell, params, xs, carry)


def w_x_1d(cell_name):
    # I = G*H: a (G*H,) vector passes both of the width and input-size comparisons a 2-D w_x must.
    H = 2
    cell = get_cell(cell_name)
    cell, params, xs, carry = _problem(cell_name, I=cell.num_gates * H, H=H)
    params["w_x"] = params["w_x"][0]
    _compare("w_x_1d", cell_name, cell, params, xs, carry)


def empty(cell_name):
    cell, params, xs, carry = _problem(cell_name, B=0)
    _compare("empty", cell_name, cell, params, xs, carry, grad=False)
    _compare("empty", cell_name, cell, params, xs, carry, grad=True)


def fork(cell_name, timeout=30.0):
    """Run once, fork, run again in the child: the child must finish within ``timeout`` with the same answer."""
    import time

    cell, params, xs, carry = _problem(cell_name)
    step = jax.jit(jax.grad(lambda p: jnp.sum(layer_impl("onednn")(cell, p, xs, carry)[0] ** 2)))
    parent = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(step(params))])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same call, its answer to the parent, and out without cleanup
        code = 1
        try:
            os.close(read)
            child = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(step(params))])
            os.write(write, child.astype(np.float32).tobytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(f"FAIL fork {cell_name}: the forked child did not finish within {timeout:.0f} s", flush=True)
        return
    data = os.read(read, 1 << 20)
    child = np.frombuffer(data, np.float32)
    if os.waitstatus_to_exitcode(status) != 0 or child.shape != parent.shape:
        print(f"FAIL fork {cell_name}: child exit {os.waitstatus_to_exitcode(status)}, {child.size} values", flush=True)
    elif not np.allclose(child, parent, rtol=1e-6, atol=1e-6):
        print(f"FAIL fork {cell_name}: child's gradient differs by {np.max(np.abs(child - parent)):.2e}", flush=True)
    else:
        print(f"ok fork {cell_name}", flush=True)


def ffi_sizes(cell_name):
    """Each wrong buffer must come back as XLA's error carrying the handler's message, not a crash."""
    from lstm_jax.impls import onednn
    from lstm_jax.impls._onednn.build import BACKWARD_TARGET, FORWARD_TARGET, load

    code = {"lstm": 0, "gru": 1, "rnn": 2}[cell_name]
    G, Gb = {"lstm": (4, 4), "gru": (3, 4), "rnn": (1, 1)}[cell_name]
    T, B, I, H = 3, 2, 4, 5
    f32, u8 = jnp.float32, jnp.uint8
    ws = load().workspace_bytes(code, False, False, True, T, B, I, H)
    good = dict(x=(T, B, I), h0=(B, H), c0=(B, H), w_layer=(I, G * H), w_iter=(H, G * H), bias=(Gb * H,))
    outs = dict(y=(T, B, H), hT=(B, H), cT=(B, H), workspace=(ws,))

    def forward(ins, outs):
        args = [jnp.ones(shape, f32) for shape in ins.values()]
        shapes = [jax.ShapeDtypeStruct(shape, u8 if name == "workspace" else f32) for name, shape in outs.items()]
        call = jax.ffi.ffi_call(FORWARD_TARGET, shapes)
        return call(*args, cell=np.int32(code), reverse=False, training=True, blocked=True)

    def backward(dy_shape):
        args = [jnp.ones(shape, f32) for shape in good.values()]
        args += [jnp.ones((T, B, H), f32), jnp.ones((B, H), f32), jnp.ones((B, H), f32), jnp.zeros((ws,), u8)]
        args += [jnp.ones(dy_shape, f32), jnp.ones((B, H), f32), jnp.ones((B, H), f32)]
        shapes = [jax.ShapeDtypeStruct(shape, f32) for shape in good.values()]
        call = jax.ffi.ffi_call(BACKWARD_TARGET, shapes)
        return call(*args, cell=np.int32(code), reverse=False, blocked=True)

    trials = {
        "bias": lambda: forward({**good, "bias": (Gb * H - 1,)}, outs),
        "h0": lambda: forward({**good, "h0": (B + 1, H)}, outs),
        "w_layer": lambda: forward({**good, "w_layer": (G * H,)}, outs),
        "y": lambda: forward(good, {**outs, "y": (T, B, H + 1)}),
        "workspace": lambda: forward(good, {**outs, "workspace": (max(ws - 64, 1),)}),
        "dy": lambda: backward((T, B + 1, H)),
    }
    for operand, trial in trials.items():
        try:
            jax.block_until_ready(trial())
        except Exception as err:  # noqa: BLE001 - XLA's runtime error type moved between jax versions
            message = str(err)
            if re.search(rf"onednn rnn (forward|backward): {operand} is \S+, the plan expects \S+", message):
                print(f"ok ffi_sizes {cell_name} {operand}", flush=True)
            else:
                print(f"FAIL ffi_sizes {cell_name} {operand}: {type(err).__name__}: {message[:300]!r}", flush=True)
        else:
            print(f"FAIL ffi_sizes {cell_name} {operand}: no error", flush=True)
    assert onednn.unavailable_reason() is None


CASES = {"ffi_sizes": ffi_sizes, "bf16_bias": bf16_bias, "f64_carry": f64_carry, "w_x_1d": w_x_1d, "empty": empty, "fork": fork}

if __name__ == "__main__":
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)  # forking is the point
    for name in sys.argv[1:]:
        for cell_name in CELLS:
            CASES[name](cell_name)
