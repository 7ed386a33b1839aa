"""The benchmark harness: the problem every benchmark times, the timing loop, the reference implementations.

What is timed everywhere: one training step of one recurrent layer -- forward
over the whole sequence and backward through time, gradients w.r.t. all
parameters, loss ``mean(ys ** 2)`` of the output sequence -- on inputs
``(B, T, I)`` batch-major, float32, zero initial carry.

* :func:`layer_problem`: that problem for an lstm_jax layer impl;
* :func:`build_benches`: the same step as a :class:`Bench` for lstm_jax impls
  and for Flax, Equinox, PyTorch and cuDNN (when present), from impl specs
  (``lib:<impl>[-uN]``, ``flax``, ``equinox``, ``torch``, ``torch-cuda``, ``jax-cudnn``);
* :func:`time_calls`, :func:`matmul_peak` (fp32 matmul GFLOP/s of this
  process), :func:`minflt` (minor page faults), :func:`memory_analysis`
  (XLA's buffer plan of a compiled step);
* :func:`run_python`: a fresh interpreter that can import this repository
  (for measurements that need their own process).

Everything that depends on how lstm_jax names cells and layer impls is here,
so the benchmark scripts do not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from lstm_jax.cells import get_cell
from lstm_jax.impls import layer_impl
from lstm_jax.layers import apply_stack, init_stack
from lstm_jax.precision import get_precision

__all__ = [
    "REPO_ROOT",
    "Bench",
    "build_benches",
    "forward_flops",
    "layer_problem",
    "matmul_peak",
    "memory_analysis",
    "minflt",
    "parse_impl_spec",
    "result_path",
    "run_python",
    "time_calls",
    "train_flops",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def result_path(name: str, *, quick: bool = False, tag: str = "") -> Path:
    """Default JSON path of a benchmark: ``results/<name>[_tag].json``, or ``runs/<name>_quick[_tag].json``.

    Quick (smoke-test) runs go under the untracked ``runs/``, so that a test or
    a try-out never writes into, or over, the results the README quotes.
    """
    stem = name + ("_quick" if quick else "") + (f"_{tag}" if tag else "")
    return REPO_ROOT / ("runs" if quick else "results") / f"{stem}.json"

_MEMORY_FIELDS = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "generated_code_size_in_bytes")


def forward_flops(cell: str, T: int, B: int, I: int, H: int) -> float:
    """Matmul FLOPs of a forward pass: ``2 * T * B * (I + H) * G * H`` (``G`` = the cell's gate blocks)."""
    return 2.0 * T * B * (I + H) * get_cell(cell).num_gates * H


def train_flops(cell: str, T: int, B: int, I: int, H: int) -> float:
    """FLOPs of a training step, counted as 3 forward passes (forward + two matmuls per matmul backward)."""
    return 3.0 * forward_flops(cell, T, B, I, H)


def layer_problem(cell, impl, T, B, I, H, *, unroll=1, key=None):
    """One lstm_jax layer on inputs ``xs (B, T, I)``, loss ``mean(ys ** 2)``.

    Returns ``(loss, params, xs)``; ``loss(params, xs)`` is a scalar.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(0) if key is None else key)
    params = init_stack(k1, cell, I, H)
    xs = jax.random.normal(k2, (B, T, I))

    def loss(p, x):
        ys, _ = apply_stack(cell, p, x, impl=impl, unroll=unroll)
        return jnp.mean(ys**2)

    return loss, params, xs


def parse_impl_spec(spec: str) -> tuple[str, int]:
    """``"manual-u4"`` -> ``("manual", 4)``: a layer impl name, optionally with ``-uN`` for ``unroll=N``."""
    if "-u" in spec:
        impl, unroll = spec.rsplit("-u", 1)
        return impl, int(unroll)
    return spec, 1


def impl_available(impl: str) -> bool:
    """Whether ``impl`` is a registered layer implementation."""
    try:
        layer_impl(impl)
        return True
    except ValueError:
        return False


_NOTED: set = set()


def _note_once(text: str) -> None:
    """Print ``text`` the first time only (a bench left out is said once per run, not once per size)."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(text, flush=True)


# --------------------------------------------------------------------------- timing


def time_calls(fn, repeats) -> list:
    """Wall seconds of each of ``repeats`` calls of ``fn()`` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def matmul_peak(n=2048, repeats=7):
    """``(median, best)`` fp32 GFLOP/s of ``jnp.dot`` on (n, n) x (n, n) in this process."""
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n))
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    times = time_calls(lambda: jax.block_until_ready(dot(a, b)), repeats)
    return 2.0 * n**3 / statistics.median(times) / 1e9, 2.0 * n**3 / min(times) / 1e9


def run_matmul_gflops() -> float:
    """A training run's quick matmul-rate probe: median fp32 GFLOP/s of (1024, 1024) x (1024, 1024), ~0.1 s.

    Recorded at the start and end of a run (``machine.matmul_gflops``,
    ``machine.matmul_gflops_at_end``) so its timings can be read against what
    the machine delivered that day; smaller than :func:`matmul_peak`'s default
    so that it costs the suite's many short runs almost nothing.
    """
    return round(matmul_peak(n=1024, repeats=5)[0], 1)


def minflt() -> int:
    """Minor page faults of this process so far (``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def memory_analysis(compiled) -> dict:
    """XLA's buffer assignment of a compiled step: ``{temp,argument,output,generated_code}_size_in_bytes``.

    ``temp`` is the scratch memory, including everything saved for the
    backward pass. ``{"error": ...}`` where the backend does not report it.
    """
    try:
        mem = compiled.memory_analysis()
    except Exception as e:  # not every backend implements it
        return {"error": repr(e)}
    if mem is None:
        return {"error": "memory_analysis() returned None"}
    return {f: int(getattr(mem, f, -1)) for f in _MEMORY_FIELDS}


def run_python(code: str, *, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process that imports this repository (``lstm_jax``, ``experiments``)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=timeout)


# --------------------------------------------------------------------------- implementations


@dataclasses.dataclass
class Bench:
    """One implementation of the step, ready to time."""

    name: str
    compile: Callable[[], float]  # compiles (or runs the first call); returns its seconds
    step: Callable[[], None]  # one training step, blocking


def jax_bench(name, loss, params, xs) -> Bench:
    """A :class:`Bench` of ``jax.grad(loss)`` w.r.t. ``params``, compiled ahead of time."""
    grad = jax.jit(jax.grad(loss))
    state = {}

    def compile_():
        t0 = time.perf_counter()
        state["fn"] = grad.lower(params, xs).compile()
        return time.perf_counter() - t0

    def step():
        jax.block_until_ready(state["fn"](params, xs))

    return Bench(name, compile_, step)


def _suffix(precision) -> str:
    return "" if get_precision(precision).name == "fp32" else f" {get_precision(precision).name}"


def make_lib(cell, impl_spec, T, B, I, H, key, precision="fp32") -> Bench | None:
    """lstm_jax's layer with ``impl_spec`` (:func:`parse_impl_spec`); None (with a printed note where the
    impl is registered) if it is not registered, cannot run on this machine or has no such precision policy."""
    impl, unroll = parse_impl_spec(impl_spec)
    if not impl_available(impl):
        return None
    registered = layer_impl(impl)
    if (reason := registered.unavailable()) is not None:
        _note_once(f"lib:{impl_spec} left out: {reason}")
        return None
    policy = get_precision(precision).name
    if policy not in registered.precisions:
        _note_once(f"lib:{impl_spec} {policy} left out: layer impl {impl!r} runs only {', '.join(registered.precisions)}")
        return None
    layer = layer_impl(impl, precision=precision)
    loss, params, xs = layer_problem(cell, layer, T, B, I, H, unroll=unroll, key=key)
    return jax_bench(f"lstm_jax {impl_spec}{_suffix(precision)}", loss, params, xs)


def make_flax(cell, T, B, I, H, key, precision="fp32") -> Bench:
    import flax.linen as nn

    dtype = get_precision(precision).compute_dtype  # None: float32; params stay float32 either way
    module_cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[cell](
        H, dtype=dtype, param_dtype=jnp.float32
    )
    model = nn.RNN(module_cell)
    k1, k2 = jax.random.split(key)
    xs = jax.random.normal(k2, (B, T, I))
    # With dtype=bfloat16 a Flax cell returns its carry in bf16, so the scan needs a bf16 initial carry
    # (Flax's policy: the carry in `dtype`; lstm_jax keeps it float32).
    carry0 = module_cell.initialize_carry(k1, (B, I))
    if dtype is not None:
        carry0 = jax.tree_util.tree_map(lambda c: c.astype(dtype), carry0)
    variables = model.init(k1, xs, initial_carry=carry0)

    def loss(v, x):
        return jnp.mean(model.apply(v, x, initial_carry=carry0).astype(jnp.float32) ** 2)

    label = {"lstm": "OptimizedLSTMCell", "gru": "GRUCell", "rnn": "SimpleCell"}[cell]
    return jax_bench(f"flax RNN({label}){_suffix(precision)}", loss, variables, xs)


def make_equinox(cell, T, B, I, H, key) -> Bench | None:
    if cell == "rnn":
        return None  # Equinox has no Elman cell
    import equinox as eqx

    k1, k2 = jax.random.split(key)
    module = (eqx.nn.LSTMCell if cell == "lstm" else eqx.nn.GRUCell)(I, H, key=k1)
    params, static = eqx.partition(module, eqx.is_array)
    xs = jax.random.normal(k2, (B, T, I))

    def run_one(m, x):  # x: (T, I); Equinox cells are unbatched
        zero = jnp.zeros((H,), x.dtype)
        init = (zero, zero) if cell == "lstm" else zero

        def f(carry, x_t):
            new = m(x_t, carry)
            return new, (new[0] if cell == "lstm" else new)

        return jax.lax.scan(f, init, x)[1]

    def loss(p, x):
        m = eqx.combine(p, static)
        return jnp.mean(jax.vmap(functools.partial(run_one, m))(x) ** 2)

    name = "equinox " + ("LSTMCell" if cell == "lstm" else "GRUCell") + " scan"
    return jax_bench(name, loss, params, xs)


def make_torch(cell, T, B, I, H, key, device="cpu", precision="fp32") -> Bench | None:
    """``torch.nn.LSTM/GRU/RNN``; ``precision="bf16"``: the forward under ``torch.autocast`` (bf16)."""
    import contextlib

    import torch

    bf16 = get_precision(precision).name == "bf16"
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    model = cls(I, H, batch_first=True).to(device)
    x = torch.randn(B, T, I, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        for p in model.parameters():
            p.grad = None
        with autocast():
            y, _ = model(x)
        (y.float() ** 2).mean().backward()
        sync()

    first_call_s = []  # set when the first call already ran (the bf16 availability probe below)

    def compile_():  # first call: allocator and oneDNN/cuDNN primitive set-up
        if first_call_s:
            return first_call_s.pop()
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    label = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}[cell]
    name = f"torch {label}" + (" cuda" if device == "cuda" else "") + (" autocast-bf16" if bf16 else "")
    if bf16:
        try:  # oneDNN has no bf16 RNN primitive on CPUs without bf16 instructions (e.g. AMD EPYC, no AMX)
            first_call_s.append(compile_())
        except RuntimeError as err:
            print(f"{name}: not available on this machine ({str(err).splitlines()[0][:120]})", flush=True)
            return None
    return Bench(name, compile_, step)


def make_jax_cudnn(cell, T, B, I, H, key) -> Bench | None:
    """``jax.experimental.rnn.lstm`` (cuDNN); only on a GPU backend, LSTM only. Untested on this CPU host."""
    if cell != "lstm" or jax.default_backend() != "gpu":
        return None
    from jax.experimental import rnn

    k1, k2 = jax.random.split(key)
    weights = rnn.init_lstm_weight(k1, I, H, 1, False)
    xs = jax.random.normal(k2, (B, T, I))
    h0 = jnp.zeros((1, B, H))
    lengths = jnp.full((B,), T, jnp.int32)

    def loss(w, x):
        ys, _, _ = rnn.lstm(x, h0, h0, w, lengths, I, H, 1, 0.0, False)
        return jnp.mean(ys**2)

    return jax_bench("jax.experimental.rnn (cuDNN)", loss, weights, xs)


def build_benches(cell, size, impls, key, precision: str = "fp32") -> list[Bench]:
    """A :class:`Bench` per impl spec in ``impls`` for ``size = (T, B, I, H)``; unavailable ones are left out.

    ``precision="bf16"``: lstm_jax under its bf16 policy, Flax with ``dtype=bfloat16,
    param_dtype=float32``, torch under ``torch.autocast(dtype=torch.bfloat16)``; the
    references without a bf16 mode (Equinox, the cuDNN wrapper) are left out.
    """
    T, B, I, H = size
    bf16 = get_precision(precision).name == "bf16"
    out = []
    for spec in impls:
        if spec.startswith("lib:"):
            b = make_lib(cell, spec[4:], T, B, I, H, key, precision)
        elif spec == "flax":
            b = make_flax(cell, T, B, I, H, key, precision)
        elif spec == "equinox":
            b = None if bf16 else make_equinox(cell, T, B, I, H, key)
        elif spec == "torch":
            b = make_torch(cell, T, B, I, H, key, precision=precision)
        elif spec == "torch-cuda":
            import torch

            b = make_torch(cell, T, B, I, H, key, "cuda", precision) if torch.cuda.is_available() else None
        elif spec == "jax-cudnn":
            b = None if bf16 else make_jax_cudnn(cell, T, B, I, H, key)
        else:
            raise ValueError(f"unknown impl {spec!r}")
        if b is not None:
            out.append(b)
    return out
