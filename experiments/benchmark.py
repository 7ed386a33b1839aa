"""Training-step benchmark: lstm_jax layer impls vs Flax, Equinox and PyTorch, side by side.

What is timed: one training step = forward over the whole sequence + backward
through time, gradients w.r.t. all parameters of one recurrent layer, loss =
``mean(ys ** 2)`` over the output sequence (the same for every
implementation). Input ``(B, T, I)`` batch-major, float32, zero initial carry.

Per size, every implementation is built and compiled first (compile time is
reported separately: XLA compile for JAX, the first call for PyTorch), warmed
up, then timed in ``--repeats`` rounds. Each round runs every implementation
once, in a rotated order, so that load from other processes on a shared
machine hits all of them alike; a round times ``n`` back-to-back steps
(``n`` chosen so a block lasts about ``--block-seconds``). Reported: median and
min-max over rounds of the per-step time, steps/s, achieved GFLOP/s with
``forward = 2*T*B*(I+H)*G*H`` (G = 4 LSTM, 3 GRU, 1 RNN) and ``step = 3 x
forward``, that as a fraction of the machine's fp32 matmul throughput measured
in the same process (``jnp.dot`` of two 2048x2048 matrices), the ratio to
PyTorch and to Flax, and minor page faults per step (``getrusage``).

Usage::

    python experiments/benchmark.py                      # all cells, all sizes
    python experiments/benchmark.py --cells lstm --sizes 128,64,128,512 --repeats 9
    python experiments/benchmark.py --quick              # tiny sizes, 2 repeats (used by the tests)
    python experiments/benchmark.py --malloc default --tag default   # glibc's malloc defaults

Allocation behaviour is a process setting and matters as much as the maths
here: by default the script calls :func:`lstm_jax.runtime.tune_malloc` first
(``--malloc tuned``), which removes the per-step page faults of XLA's scratch
buffers and of PyTorch's; ``--malloc default`` leaves glibc alone. Either way,
and like the environment variables that change allocation (``GLIBC_TUNABLES``,
``MALLOC_*``, ``XLA_FLAGS``), it applies to the whole process, so every
implementation in one run sees the same settings; all are recorded in the JSON.
On a GPU the same script also times cuDNN via ``torch.nn.LSTM`` on CUDA and,
for the LSTM, ``jax.experimental.rnn.lstm``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lstm_jax.layers import apply_stack, init_stack, layer_impl  # noqa: E402
from lstm_jax.runtime import add_malloc_argument, apply_malloc_argument  # noqa: E402

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
SIZES = [(128, 64, 128, 256), (128, 64, 128, 512), (784, 32, 1, 128), (28, 128, 28, 128), (100, 32, 65, 512)]
QUICK_SIZES = [(6, 3, 4, 8)]
LIB_IMPLS = ["scan", "hoisted", "manual"]


def forward_flops(cell: str, T: int, B: int, I: int, H: int) -> float:
    return 2.0 * T * B * (I + H) * GATES[cell] * H


def train_flops(cell: str, T: int, B: int, I: int, H: int) -> float:
    return 3.0 * forward_flops(cell, T, B, I, H)


@dataclasses.dataclass
class Bench:
    name: str
    compile: Callable[[], float]  # returns seconds
    step: Callable[[], None]  # one training step, blocking


# ---------------------------------------------------------------------------
# Implementations


def _jax_bench(name, loss, params, xs) -> Bench:
    grad = jax.jit(jax.grad(loss))
    state = {}

    def compile_():
        t0 = time.perf_counter()
        state["fn"] = grad.lower(params, xs).compile()
        return time.perf_counter() - t0

    def step():
        jax.block_until_ready(state["fn"](params, xs))

    return Bench(name, compile_, step)


def _lib_impl_available(impl: str) -> bool:
    try:
        layer_impl(impl)
        return True
    except ValueError:
        return False


def layer_problem(cell, impl, T, B, I, H, *, unroll=1, key=None):
    """What every benchmark here times: one lstm_jax layer on inputs ``(B, T, I)``, loss ``mean(ys ** 2)``.

    Returns ``(loss, params, xs)``; ``loss(params, xs)`` is a scalar. Also used by
    ``remat_benchmark.py`` and ``scaling.py``.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(0) if key is None else key)
    params = init_stack(k1, cell, I, H)
    xs = jax.random.normal(k2, (B, T, I))

    def loss(p, x):
        ys, _ = apply_stack(cell, p, x, impl=impl, unroll=unroll)
        return jnp.mean(ys**2)

    return loss, params, xs


def time_calls(fn, repeats) -> list:
    """Wall seconds of each of ``repeats`` calls of ``fn()`` (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def make_lib(cell, impl_spec, T, B, I, H, key) -> Bench | None:
    """``impl_spec`` is a layer impl name, optionally with ``-uN`` for ``unroll=N``."""
    impl, unroll = impl_spec, 1
    if "-u" in impl_spec:
        impl, u = impl_spec.rsplit("-u", 1)
        unroll = int(u)
    if not _lib_impl_available(impl):
        return None
    loss, params, xs = layer_problem(cell, impl, T, B, I, H, unroll=unroll, key=key)
    return _jax_bench(f"lstm_jax {impl_spec}", loss, params, xs)


def make_flax(cell, T, B, I, H, key) -> Bench:
    import flax.linen as nn

    module_cell = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[cell](H)
    model = nn.RNN(module_cell)
    k1, k2 = jax.random.split(key)
    xs = jax.random.normal(k2, (B, T, I))
    variables = model.init(k1, xs)

    def loss(v, x):
        return jnp.mean(model.apply(v, x) ** 2)

    label = {"lstm": "OptimizedLSTMCell", "gru": "GRUCell", "rnn": "SimpleCell"}[cell]
    return _jax_bench(f"flax RNN({label})", loss, variables, xs)


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
    return _jax_bench(name, loss, params, xs)


def make_torch(cell, T, B, I, H, key, device="cpu") -> Bench:
    import torch

    torch.manual_seed(0)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    model = cls(I, H, batch_first=True).to(device)
    x = torch.randn(B, T, I, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        for p in model.parameters():
            p.grad = None
        y, _ = model(x)
        (y**2).mean().backward()
        sync()

    def compile_():  # first call: allocator and oneDNN/cuDNN primitive set-up
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    label = {"lstm": "nn.LSTM", "gru": "nn.GRU", "rnn": "nn.RNN"}[cell]
    return Bench(f"torch {label}" + (" cuda" if device == "cuda" else ""), compile_, step)


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

    return _jax_bench("jax.experimental.rnn (cuDNN)", loss, weights, xs)


def build(cell, size, impls, key):
    T, B, I, H = size
    out = []
    for spec in impls:
        if spec.startswith("lib:"):
            b = make_lib(cell, spec[4:], T, B, I, H, key)
        elif spec == "flax":
            b = make_flax(cell, T, B, I, H, key)
        elif spec == "equinox":
            b = make_equinox(cell, T, B, I, H, key)
        elif spec == "torch":
            b = make_torch(cell, T, B, I, H, key)
        elif spec == "torch-cuda":
            import torch

            b = make_torch(cell, T, B, I, H, key, "cuda") if torch.cuda.is_available() else None
        elif spec == "jax-cudnn":
            b = make_jax_cudnn(cell, T, B, I, H, key)
        else:
            raise ValueError(f"unknown impl {spec!r}")
        if b is not None:
            out.append(b)
    return out


# ---------------------------------------------------------------------------
# Measurement


def matmul_peak(n=2048, repeats=7):
    """Median fp32 GFLOP/s of ``jnp.dot`` on (n, n) x (n, n) in this process."""
    a = jax.random.normal(jax.random.PRNGKey(1), (n, n))
    b = jax.random.normal(jax.random.PRNGKey(2), (n, n))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    times = time_calls(lambda: jax.block_until_ready(dot(a, b)), repeats)
    return 2.0 * n**3 / statistics.median(times) / 1e9, 2.0 * n**3 / min(times) / 1e9


def minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_size(cell, size, impls, *, repeats, block_seconds, key, log=print):
    benches = build(cell, size, impls, key)
    compile_s, warm = {}, {}
    for b in benches:
        compile_s[b.name] = b.compile()
        t0 = time.perf_counter()
        b.step()
        b.step()
        warm[b.name] = (time.perf_counter() - t0) / 2
    inner = {b.name: max(1, int(block_seconds / max(warm[b.name], 1e-6))) for b in benches}
    times = {b.name: [] for b in benches}
    faults = {b.name: [] for b in benches}
    for r in range(repeats):
        k = r % len(benches)
        for b in benches[k:] + benches[:k]:  # rotate the order every round
            n = inner[b.name]
            f0 = minflt()
            t0 = time.perf_counter()
            for _ in range(n):
                b.step()
            dt = (time.perf_counter() - t0) / n
            faults[b.name].append((minflt() - f0) / n)
            times[b.name].append(dt)
    rows = []
    flops = train_flops(cell, *size)
    for b in benches:
        med = statistics.median(times[b.name])
        rows.append(
            {
                "impl": b.name,
                "compile_s": compile_s[b.name],
                "median_ms": 1e3 * med,
                "min_ms": 1e3 * min(times[b.name]),
                "max_ms": 1e3 * max(times[b.name]),
                "steps_per_s": 1.0 / med,
                "gflops": flops / med / 1e9,
                "steps_per_block": inner[b.name],
                "minflt_per_step": statistics.median(faults[b.name]),
                "times_ms": [1e3 * t for t in times[b.name]],
            }
        )
    return rows


def _ref_time(rows, prefix):
    for r in rows:
        if r["impl"].startswith(prefix) and not r["impl"].endswith("cuda"):
            return r["median_ms"]
    return None


def markdown(cell, size, rows, peak):
    T, B, I, H = size
    torch_ms, flax_ms = _ref_time(rows, "torch"), _ref_time(rows, "flax")
    lines = [
        f"**{cell.upper()}** T={T}, B={B}, I={I}, H={H} "
        f"(train step {train_flops(cell, *size) / 1e9:.2f} GFLOP)",
        "",
        "| impl | compile s | median ms | min-max ms | steps/s | GFLOP/s | % matmul peak | speed vs torch | speed vs flax | minflt/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs_t = f"{torch_ms / r['median_ms']:.2f}x" if torch_ms else "-"
        vs_f = f"{flax_ms / r['median_ms']:.2f}x" if flax_ms else "-"
        lines.append(
            f"| {r['impl']} | {r['compile_s']:.2f} | {r['median_ms']:.2f} | "
            f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['steps_per_s']:.1f} | {r['gflops']:.1f} | "
            f"{100 * r['gflops'] / peak:.0f}% | {vs_t} | {vs_f} | {r['minflt_per_step']:.0f} |"
        )
    return "\n".join(lines)


def environment(args):
    import flax

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "env": {k: v for k, v in os.environ.items() if k.startswith(("GLIBC_", "MALLOC_", "XLA_", "OMP_", "TF_"))},
        "load_average_at_start": os.getloadavg(),
        "args": vars(args),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        import equinox

        env["equinox"] = equinox.__version__
    except ImportError:
        pass
    try:
        env["transparent_hugepage"] = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    return env


def parse_sizes(text):
    out = []
    for chunk in text.split(";"):
        vals = [int(v) for v in chunk.replace("x", ",").split(",") if v.strip()]
        if len(vals) != 4:
            raise argparse.ArgumentTypeError(f"size must be T,B,I,H; got {chunk!r}")
        out.append(tuple(vals))
    return out


def default_impls(cell):
    impls = [f"lib:{i}" for i in LIB_IMPLS]
    impls += ["flax", "equinox", "torch", "torch-cuda", "jax-cudnn"]
    return impls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="lstm,gru,rnn", help="comma list of lstm,gru,rnn")
    p.add_argument("--sizes", type=parse_sizes, default=None, help="'T,B,I,H;T,B,I,H;...'")
    p.add_argument(
        "--impls", default=None,
        help="comma list from lib:<impl>[-uN], flax, equinox, torch, torch-cuda, jax-cudnn "
        f"(default: lib:{{{','.join(LIB_IMPLS)}}} where registered, and all references)",
    )
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--block-seconds", type=float, default=0.3, help="target duration of one timed block")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (smoke test)")
    p.add_argument("--budget-minutes", type=float, default=None, help="stop starting new sizes after this")
    p.add_argument("--out", default=None, help="JSON path (default results/benchmark[_tag].json)")
    p.add_argument("--tag", default="", help="suffix for the default output name, e.g. hugetlb")
    p.add_argument(
        "--omp-wait-policy", default="PASSIVE",
        help="OMP_WAIT_POLICY for PyTorch's OpenMP threads, set before torch is imported unless already "
        "in the environment. PASSIVE (default) stops idle OpenMP threads spin-waiting, which on an "
        "oversubscribed shared machine slows torch by 10x or more; use ACTIVE (GOMP's default "
        "behaviour) on a dedicated machine. Recorded in the JSON.",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    add_malloc_argument(p)
    args = p.parse_args(argv)
    malloc = apply_malloc_argument(args)
    print(f"malloc: {args.malloc} ({malloc['libc']}; {malloc['reason']})", flush=True)
    if args.omp_wait_policy and "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.block_seconds = 0.0
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    for c in cells:
        if c not in GATES:
            p.error(f"unknown cell {c!r}")
    out = Path(args.out) if args.out else ROOT / "results" / (
        "benchmark" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "") + ".json"
    )
    start = time.perf_counter()
    peak_med, peak_best = matmul_peak(1024 if args.quick else 2048, 3 if args.quick else 9)
    print(f"fp32 matmul (jnp.dot 2048^2): median {peak_med:.1f} GFLOP/s, best {peak_best:.1f}", flush=True)
    result = {
        "environment": environment(args), "malloc": malloc, "matmul_gflops_median_start": peak_med, "results": []
    }
    key = jax.random.PRNGKey(0)
    stopped_early = False
    for cell in cells:
        impls = args.impls.split(",") if args.impls else default_impls(cell)
        for size in sizes:
            if args.budget_minutes is not None and time.perf_counter() - start > 60 * args.budget_minutes:
                stopped_early = True
                break
            rows = measure_size(
                cell, size, impls, repeats=args.repeats, block_seconds=args.block_seconds, key=key
            )
            result["results"].append({"cell": cell, "size": dict(zip("TBIH", size)), "rows": rows})
            print(markdown(cell, size, rows, peak_med) + "\n", flush=True)
    peak_end, _ = matmul_peak(1024 if args.quick else 2048, 3 if args.quick else 9)
    peak = max(peak_med, peak_end)
    result["matmul_gflops_median_end"] = peak_end
    result["matmul_gflops_peak_used"] = peak
    result["stopped_early_by_budget"] = stopped_early
    result["wall_seconds"] = time.perf_counter() - start
    result["load_average_at_end"] = os.getloadavg()
    for entry in result["results"]:
        torch_ms, flax_ms = _ref_time(entry["rows"], "torch"), _ref_time(entry["rows"], "flax")
        for r in entry["rows"]:
            r["fraction_of_matmul_peak"] = r["gflops"] / peak
            r["speed_vs_torch"] = torch_ms / r["median_ms"] if torch_ms else None
            r["speed_vs_flax"] = flax_ms / r["median_ms"] if flax_ms else None
    print(
        f"matmul peak: start {peak_med:.1f}, end {peak_end:.1f} GFLOP/s; % peak above uses the start value; "
        f"JSON uses max = {peak:.1f}. Load average now {os.getloadavg()}",
        flush=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
