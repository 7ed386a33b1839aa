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

    python -m experiments.benchmarks.benchmark                      # all cells, all sizes
    python -m experiments.benchmarks.benchmark --cells lstm --sizes 128,64,128,512 --repeats 9
    python -m experiments.benchmarks.benchmark --quick              # tiny sizes, 2 repeats (used by the tests)
    python -m experiments.benchmarks.benchmark --malloc default --tag default   # glibc's malloc defaults
    python -m experiments.benchmarks.benchmark --config configs/benchmark_onednn_per_process.toml  # each impl alone

Allocation behaviour is a process setting and matters as much as the maths
here: by default the script calls :func:`lstm_jax.runtime.tune_malloc` first
(``--malloc tuned``), which removes the per-step page faults of XLA's scratch
buffers and of PyTorch's; ``--malloc default`` leaves glibc alone. Either way,
and like the environment variables that change allocation (``GLIBC_TUNABLES``,
``MALLOC_*``, ``XLA_FLAGS``), it applies to the whole process, so every
implementation in one run sees the same settings; all are recorded in the JSON.
On a CPU it times ``lib:onednn`` (oneDNN's fused RNN through XLA's FFI, the
kernel ``torch.nn.LSTM`` runs on a CPU) where the ``onednn`` extra is installed.
On a GPU the same script also times ``lib:cudnn`` (the library's ``impl="cudnn"``,
fp32 only: it has no bf16 policy), cuDNN via ``torch.nn.LSTM`` on CUDA
(``torch-cuda``; torch lets cuDNN use TF32 by default, recorded in the JSON) and,
for the LSTM, bare ``jax.experimental.rnn.lstm`` (``jax-cudnn``). JAX's float32
matmuls on NVIDIA GPUs may run in TF32 too unless
``jax.default_matmul_precision`` says otherwise (also recorded). Elsewhere
those are left out, each with a printed note for the ``lib:`` ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


import jax

from experiments.common import cli
from experiments.benchmarks.turns import Worker, child_command, remote_builder, reply_channel, run_block, serve
from experiments.common.harness import REPO_ROOT, build_benches, matmul_peak, result_path, train_flops
from experiments.common.machine import finish_machine_info, machine_info

SIZES = [(128, 64, 128, 256), (128, 64, 128, 512), (784, 32, 1, 128), (28, 128, 28, 128), (100, 32, 65, 512)]
QUICK_SIZES = [(6, 3, 4, 8)]
# cudnn: GPU only; onednn: CPU with the onednn extra; each left out elsewhere with a printed note
LIB_IMPLS = ["scan", "hoisted", "manual", "cudnn", "onednn"]


def measure_size(cell, size, impls, *, repeats, block_seconds, key, precisions=("fp32",), log=print,
                 build=build_benches):
    """Time every impl in every precision at one size, interleaved round by round (one set of conditions).

    ``build``: where the benches live (:func:`experiments.benchmarks.turns.remote_builder`: in one process per
    implementation, each block timed there)."""
    benches, precision_of = [], {}
    for precision in precisions:
        for b in build(cell, size, impls, key, precision):
            benches.append(b)
            precision_of[b.name] = precision
    compile_s, warm = {}, {}
    for b in benches:
        compile_s[b.name] = b.compile()
        warm[b.name] = run_block(b, 2)[0]
    inner = {b.name: max(1, int(block_seconds / max(warm[b.name], 1e-6))) for b in benches}
    times = {b.name: [] for b in benches}
    faults = {b.name: [] for b in benches}
    for r in range(repeats):
        k = r % len(benches)
        for b in benches[k:] + benches[:k]:  # rotate the order every round
            dt, flt = run_block(b, inner[b.name])
            faults[b.name].append(flt)
            times[b.name].append(dt)
    rows = []
    flops = train_flops(cell, *size)
    for b in benches:
        med = statistics.median(times[b.name])
        rows.append(
            {
                "impl": b.name,
                "precision": precision_of[b.name],
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


def _ref_time(rows, prefix, precision="fp32"):
    """Median ms of the reference ``prefix`` (torch, flax) in ``precision``, on JAX's device:
    in a GPU run "torch" means torch on CUDA, elsewhere torch on the CPU."""
    cuda = prefix == "torch" and jax.default_backend() == "gpu"
    for r in rows:
        if r["impl"].startswith(prefix) and ("cuda" in r["impl"]) == cuda and r.get("precision", "fp32") == precision:
            return r["median_ms"]
    return None


def _own_fp32(rows, row):
    """Median ms of the same implementation in fp32 (bf16 rows are named like fp32 ones plus a suffix)."""
    base = row["impl"].removesuffix(" bf16").removesuffix(" autocast-bf16")
    return next((o["median_ms"] for o in rows if o.get("precision", "fp32") == "fp32" and o["impl"] == base), None)


def add_ratios(results, peak):
    """Each row's speed against torch, Flax and its own fp32 (same size, same precision), and its share of ``peak``."""
    for entry in results:
        for r in entry["rows"]:
            torch_ms, flax_ms = (_ref_time(entry["rows"], ref, r["precision"]) for ref in ("torch", "flax"))
            own_fp32 = _own_fp32(entry["rows"], r)
            r["speed_vs_own_fp32"] = own_fp32 / r["median_ms"] if own_fp32 else None
            r["fraction_of_matmul_peak"] = r["gflops"] / peak
            r["speed_vs_torch"] = torch_ms / r["median_ms"] if torch_ms else None
            r["speed_vs_flax"] = flax_ms / r["median_ms"] if flax_ms else None


def merge_results(records: list[dict]) -> tuple[list[dict], float]:
    """The ``results`` of benchmark records from separate processes put together, rows of the same cell and
    size in one entry (an implementation timed twice for one size is refused), with the ratios recomputed by
    :func:`add_ratios` against the largest matmul peak any of them used (each one's ``matmul_gflops_peak_used``);
    and that peak."""
    entries: dict[tuple, dict] = {}
    for record in records:
        for entry in record["results"]:
            key = (entry["cell"], tuple(sorted(entry["size"].items())))
            merged = entries.setdefault(key, {"cell": entry["cell"], "size": entry["size"], "rows": []})
            twice = {r["impl"] for r in merged["rows"]} & {r["impl"] for r in entry["rows"]}
            if twice:
                raise ValueError(f"{sorted(twice)} timed twice for {entry['cell']} {entry['size']}: merge separate impls")
            merged["rows"] += [dict(r) for r in entry["rows"]]
    peak = max(r["matmul_gflops_peak_used"] for r in records)
    results = list(entries.values())
    add_ratios(results, peak)
    return results, peak


def merge_records(records: list[dict], names: list[str]) -> dict:
    """One record from benchmark records of separate processes (:func:`merge_results`); ``names`` label them
    under ``"runs"``, where every run's environment is kept, so each process's load and OpenMP settings stay
    on record."""
    results, peak = merge_results(records)
    runs = [{"file": n, "environment": r.get("environment", {}), "wall_seconds": r.get("wall_seconds")}
            for n, r in zip(names, records)]
    return {"merged_from": names, "matmul_gflops_peak_used": peak, "results": results, "runs": runs}


def pool_rounds(records: list[dict]) -> dict:
    """One record from rounds of the same implementations (each round its own process): each row's times
    pooled over the rounds, its median, min, max, steps/s and GFLOP/s taken from the pool, and each round's
    median kept as ``round_medians_ms`` (how much the rounds differed)."""
    pooled = json.loads(json.dumps(records[0]))
    for entry in pooled["results"]:
        flops = train_flops(entry["cell"], *(entry["size"][k] for k in "TBIH"))
        for row in entry["rows"]:
            same = [r for rec in records for e in rec["results"] if (e["cell"], e["size"]) == (entry["cell"], entry["size"])
                    for r in e["rows"] if r["impl"] == row["impl"]]
            times = [t for r in same for t in r["times_ms"]]
            med = statistics.median(times)
            row.update(times_ms=times, median_ms=med, min_ms=min(times), max_ms=max(times), steps_per_s=1e3 / med,
                       gflops=flops / med / 1e6, round_medians_ms=[r["median_ms"] for r in same])
    pooled["matmul_gflops_peak_used"] = max(r["matmul_gflops_peak_used"] for r in records)
    return pooled


def benchmark_per_impl(args, argv: list[str]) -> dict:
    """``--processes per-impl``: each implementation timed alone in its own process, back to back, then merged.

    A child runs this script with the same command line plus ``--processes one --impls <impl> --out
    <out stem>.<impl>[.r<round>].json`` (the last occurrence of a flag wins), so it sees every other setting
    the same. ``--process-rounds N`` runs the sequence N times, the order rotated each round, and pools each
    implementation's timed blocks over its N processes (:func:`pool_rounds`), which spreads a shared
    machine's slow spells over the implementations; a spell longer than a process (minutes, seen on
    2026-12-04) still falls on whichever ran during it: read ``round_medians_ms``. Why separate
    processes: torch's OpenMP threads and XLA's share the cores, and ``torch.nn.LSTM`` inside a JAX process
    ran 1.4-4x slower than alone (docs/onednn.md#speed).
    """
    if args.process_rounds < 1:
        raise SystemExit(f"--process-rounds must be at least 1, got {args.process_rounds}")
    out = Path(args.out) if args.out else result_path("benchmark", quick=args.quick, tag=args.tag)
    out.parent.mkdir(parents=True, exist_ok=True)
    impls = args.impls or default_impls(args.cells[0])
    runs: dict[str, list] = {impl: [] for impl in impls}
    for rnd in range(args.process_rounds):
        for impl in impls[rnd % len(impls):] + impls[:rnd % len(impls)]:
            suffix = f".r{rnd}" if args.process_rounds > 1 else ""
            child = out.with_name(f"{out.stem}.{impl.removeprefix('lib:').replace(':', '-')}{suffix}.json")
            print(f"== {impl} in its own process (round {rnd + 1} of {args.process_rounds}) -> {child}", flush=True)
            status = subprocess.run(child_command(argv, "one", impl, "--out", str(child)), cwd=REPO_ROOT).returncode
            if status != 0:
                raise SystemExit(f"benchmark: the process timing {impl} exited with status {status}; nothing merged")
            runs[impl].append((str(child), json.loads(child.read_text())))
    results, peak = merge_results([pool_rounds([rec for _, rec in runs[i]]) for i in impls])
    result = {"environment": machine_info(args=vars(args)), "processes": "per-impl",
              "merged_from": [f for i in impls for f, _ in runs[i]], "matmul_gflops_peak_used": peak,
              "results": results,
              "runs": [{"impl": i, "file": f, "environment": rec["environment"], "wall_seconds": rec["wall_seconds"]}
                       for i in impls for f, rec in runs[i]]}
    for entry in result["results"]:
        size = tuple(entry["size"][k] for k in "TBIH")
        print(markdown(entry["cell"], size, entry["rows"], result["matmul_gflops_peak_used"]) + "\n")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}: {len(result['results'])} sizes from {sum(map(len, runs.values()))} processes")
    return result


def markdown(cell, size, rows, peak):
    T, B, I, H = size
    lines = [
        f"**{cell.upper()}** T={T}, B={B}, I={I}, H={H} "
        f"(train step {train_flops(cell, *size) / 1e9:.2f} GFLOP)",
        "",
        "| impl | compile s | median ms | min-max ms | steps/s | GFLOP/s | % matmul peak | speed vs torch | speed vs flax | vs own fp32 | minflt/step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        torch_ms, flax_ms = (_ref_time(rows, ref, r.get("precision", "fp32")) for ref in ("torch", "flax"))
        vs_t = f"{torch_ms / r['median_ms']:.2f}x" if torch_ms else "-"
        vs_f = f"{flax_ms / r['median_ms']:.2f}x" if flax_ms else "-"
        own = _own_fp32(rows, r)
        vs_own = f"{own / r['median_ms']:.2f}x" if own and r.get("precision", "fp32") != "fp32" else "-"
        lines.append(
            f"| {r['impl']} | {r['compile_s']:.2f} | {r['median_ms']:.2f} | "
            f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['steps_per_s']:.1f} | {r['gflops']:.1f} | "
            f"{100 * r['gflops'] / peak:.0f}% | {vs_t} | {vs_f} | {vs_own} | {r['minflt_per_step']:.0f} |"
        )
    return "\n".join(lines)


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


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    cli.add_flag(p, "cells", default=["lstm", "gru", "rnn"])
    p.add_argument("--sizes", type=parse_sizes, default=None, help="'T,B,I,H;T,B,I,H;...'")
    cli.add_flag(
        p, "impls", default=None,
        help="from lib:<impl>[-uN], flax, equinox, torch, torch-cuda, jax-cudnn "
        f"(default: lib:{{{','.join(LIB_IMPLS)}}} where registered, and all references)",
    )
    cli.add_flag(p, "repeats", default=7)
    p.add_argument("--precisions", action=cli.ListAction, default=["fp32", "bf16"],
                   help="precision policies timed side by side (lstm_jax.precision): fp32, bf16 or both; bf16 "
                   "rows are lstm_jax's bf16 policy, Flax dtype=bfloat16 and torch under autocast-bf16")
    p.add_argument("--block-seconds", type=float, default=0.3, help="target duration of one timed block")
    cli.add_flag(p, "quick", help="tiny sizes, 2 repeats (smoke test)")
    cli.add_flag(p, "budget_minutes", help="stop starting new sizes after this")
    cli.add_flag(p, "out", help="JSON path (default results/benchmark[_tag].json; with --quick runs/benchmark_quick.json)")
    p.add_argument("--tag", default="", help="suffix for the default output name, e.g. hugetlb")
    p.add_argument(
        "--omp-wait-policy", default=None, choices=("PASSIVE", "ACTIVE"),
        help="OMP_WAIT_POLICY for the OpenMP threads of torch and of impl 'onednn' (they share GNU OpenMP), set "
        "before either loads it unless already in the environment. Default: leave it unset (GNU OpenMP spins "
        "briefly, then sleeps). PASSIVE (sleep at once) made both torch's and oneDNN's LSTM 5-8x slower at "
        "T=784, B=32, H=128 on a quiet machine; on an oversubscribed one spinning threads slow torch by 10x "
        "or more, which is what PASSIVE is for. Recorded in the JSON.",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--processes", default="one", choices=("one", "turns", "per-impl", "serve"),
        help="one: every implementation in this process, in interleaved rounds. turns: each implementation in "
        "its own long-lived process, the rounds' blocks taken in turns, one at a time (experiments/common/"
        "turns.py): the fair way to compare torch with JAX on a CPU, where their threads share the cores. "
        "per-impl: each implementation alone in its own process, back to back, merged (--out; each process's "
        "JSON beside it). serve: internal, a worker of turns",
    )
    p.add_argument("--process-rounds", type=int, default=1,
                   help="with --processes per-impl: run every implementation's process this many times, the "
                   "order rotated each round, and pool each one's timed blocks over its rounds")
    cli.add_malloc_flag(p)
    return p


def benchmark(args, argv: list[str] | None = None):
    if args.processes == "per-impl":
        return benchmark_per_impl(args, argv if argv is not None else sys.argv[1:])
    replies = reply_channel() if args.processes == "serve" else None  # a turns worker: stdout carries replies
    malloc = cli.apply_malloc(args)
    print(f"malloc: {args.malloc} ({malloc['libc']}; {malloc['reason']})", flush=True)
    if args.omp_wait_policy and "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    openmp = {name: os.environ.get(name) for name in ("OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_NUM_THREADS")}
    print("OpenMP: " + ", ".join(f"{k}={v or 'unset'}" for k, v in openmp.items()), flush=True)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.processes == "serve":
        return serve(args.impls[0], jax.random.PRNGKey(0), replies)
    if args.quick:
        args.repeats = min(args.repeats, 2)
        args.block_seconds = 0.0
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    out = Path(args.out) if args.out else result_path("benchmark", quick=args.quick, tag=args.tag)
    start = time.perf_counter()
    peak_med, peak_best = matmul_peak(1024 if args.quick else 2048, 3 if args.quick else 9)
    print(f"fp32 matmul (jnp.dot 2048^2): median {peak_med:.1f} GFLOP/s, best {peak_best:.1f}", flush=True)
    environment = machine_info(malloc=malloc, matmul_gflops=peak_med, libraries=("flax", "torch", "equinox"),
                               args=vars(args))
    timed_here = (args.impls or default_impls(args.cells[0])) if args.processes == "one" else []
    if "torch" in environment and any(i.startswith("torch") for i in timed_here):
        import torch  # only where torch is timed: it brings its own GNU OpenMP, which oneDNN then shares

        environment.update(torch_threads=torch.get_num_threads(), torch_cuda=torch.cuda.is_available())
        if torch.cuda.is_available():  # what torch's cuDNN LSTM may use: TF32 is on by default for cuDNN in torch
            environment.update(
                torch_cuda_device=torch.cuda.get_device_name(), torch_cuda_version=torch.version.cuda,
                torch_cudnn=torch.backends.cudnn.version(), torch_cudnn_enabled=torch.backends.cudnn.enabled,
                torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            )
    environment["jax_default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    environment["openmp"] = openmp
    result = {"environment": environment, "malloc": malloc, "matmul_gflops_median_start": peak_med, "results": []}
    key = jax.random.PRNGKey(0)
    stopped_early = False
    workers = [Worker(argv or [], impl) for impl in args.impls or default_impls(args.cells[0])] \
        if args.processes == "turns" else []
    build = remote_builder(workers) if workers else build_benches
    for cell in args.cells:
        impls = args.impls or default_impls(cell)
        for size in sizes:
            if args.budget_minutes is not None and time.perf_counter() - start > 60 * args.budget_minutes:
                stopped_early = True
                break
            rows = measure_size(
                cell, size, impls, repeats=args.repeats, block_seconds=args.block_seconds, key=key,
                precisions=args.precisions, build=build,
            )
            result["results"].append({"cell": cell, "size": dict(zip("TBIH", size)), "rows": rows})
            print(markdown(cell, size, rows, peak_med) + "\n", flush=True)
    environment["workers"] = [{**w.info, **w.close()} for w in workers]  # pid, impl, torch_imported
    peak_end, _ = matmul_peak(1024 if args.quick else 2048, 3 if args.quick else 9)
    peak = max(peak_med, peak_end)
    result["matmul_gflops_median_end"] = peak_end
    result["matmul_gflops_peak_used"] = peak
    result["stopped_early_by_budget"] = stopped_early
    result["wall_seconds"] = time.perf_counter() - start
    environment["torch_imported"] = "torch" in sys.modules  # see the import above
    result["load_average_at_end"] = finish_machine_info(environment)["load_average_at_end"]
    add_ratios(result["results"], peak)
    print(
        f"matmul peak: start {peak_med:.1f}, end {peak_end:.1f} GFLOP/s; % peak above uses the start value; "
        f"JSON uses max = {peak:.1f}. Load average now {result['load_average_at_end']}",
        flush=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run(build_parser(), lambda args: benchmark(args, argv), argv)


if __name__ == "__main__":
    main()
