"""Memory, time and compile time vs sequence length: plain scan vs rematerialised segments.

For each T in ``--lengths`` (default 32, 64, ..., 8192) and each layer impl in
``--impls`` (default ``scan``, ``manual``, ``remat``), compiles one LSTM training step
(loss = mean of squared outputs, gradients w.r.t. the params) and records

* compile time (``jit(...).lower(...).compile()``, median of ``--compile-repeats``
  compiles from scratch),
* XLA's buffer assignment from ``compiled.memory_analysis()``: temp bytes
  (activations saved for the backward pass + scratch; the quantity
  rematerialisation reduces), argument and output bytes,
* the median step time over ``--repeats`` runs (interleaved across impls),
* optionally (``--rss-at``), peak resident memory of a fresh subprocess that
  only compiles and runs that one step (``VmHWM`` from ``/proc/self/status``),
  as an end-to-end check. Not ``ru_maxrss``: Linux carries it over from the
  parent through fork and exec, so a child started by this (by then large)
  process would report the parent's peak.

Writes ``results/remat_benchmark.json``, a markdown table, and
``results/remat_benchmark.png`` (log-log: temp memory, step time and compile
time vs T).

    python -m experiments.benchmarks.remat_benchmark --budget-minutes 15
    python -m experiments.benchmarks.remat_benchmark --lengths 32,512,8192 --batch-size 16 --hidden 128
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path


import jax

from experiments.common import cli
from experiments.common.harness import REPO_ROOT, layer_problem, memory_analysis, run_python
from experiments.common.machine import finish_machine_info, machine_info


def build(impl, T, B, I, H, compile_repeats=1):
    """Compiled LSTM training step of ``impl`` at ``(T, B, I, H)``: ``(compiled, params, xs, info)``.

    ``info``: median and all compile times, and XLA's buffer sizes (:func:`memory_analysis`).
    """
    loss, params, xs = layer_problem("lstm", impl, T, B, I, H)
    # Sub-second compiles are noisy, so time several from scratch (caches cleared) and keep the median.
    compile_times = []
    for _ in range(compile_repeats):
        jax.clear_caches()
        t0 = time.perf_counter()
        compiled = jax.jit(jax.grad(loss)).lower(params, xs).compile()
        compile_times.append(time.perf_counter() - t0)
    info = {"compile_s": statistics.median(compile_times), "compile_times_s": compile_times}
    mem = memory_analysis(compiled)
    if "error" not in mem:
        info.update(mem)
    return compiled, params, xs, info


def rss_probe(impl, T, B, I, H):
    """Peak RSS (MiB) of a fresh process that compiles and runs one step (Linux: ``VmHWM``)."""
    code = (
        "import jax;"
        "from experiments.benchmarks.remat_benchmark import build;"
        "c, p, x, _ = build(%r, %d, %d, %d, %d); jax.block_until_ready(c(p, x));"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])"
    ) % (impl, T, B, I, H)
    out = run_python(code, timeout=900)
    if out.returncode:
        return None
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0


def plot(rows, impls, B, I, H, path, load_average=None):
    """Log-log PNG: temp memory, step time and compile time vs T, one line per impl."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for impl in impls:
            rs = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["T"])
            Ts = [r["T"] for r in rs]
            axes[0].loglog(Ts, [max(r.get("temp_size_in_bytes", 1), 1) / 2**20 for r in rs], "o-", label=impl)
            axes[1].loglog(Ts, [1e3 * r["step_s"] for r in rs], "o-", label=impl)
            axes[2].semilogx(Ts, [r["compile_s"] for r in rs], "o-", label=impl)
        for ax, title in zip(axes, ["XLA temp memory (MiB)", "step time (ms)", "compile time (s)"]):
            ax.set_xlabel("sequence length T")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        load = os.getloadavg() if load_average is None else load_average
        fig.suptitle(f"LSTM training step, B={B}, I={I}, H={H} (load average {load[0]:.1f})")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    except Exception as e:  # plotting is a convenience
        print(f"plot skipped: {e}")


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    cli.add_flag(p, "lengths", default=[2**k for k in range(5, 14)])
    cli.add_flag(p, "impls", default=["scan", "manual", "remat"])
    cli.add_flag(p, "batch_size", default=16)
    p.add_argument("--input", type=int, default=32, help="input size I")
    cli.add_flag(p, "hidden", default=128)
    cli.add_flag(p, "repeats", default=3)
    p.add_argument("--compile-repeats", type=int, default=3, help="compiles per (T, impl); the median is reported")
    p.add_argument("--rss-at", action=cli.ListAction, item_type=int, default=[8192],
                   help="lengths at which to also measure subprocess peak RSS ('' = none)")
    cli.add_flag(p, "budget_minutes")
    cli.add_flag(p, "out", default=str(REPO_ROOT / "results" / "remat_benchmark.json"), help="JSON path")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the JSON at --out")
    return p


def remat_benchmark(args):
    if args.replot:
        saved = json.loads(Path(args.out).read_text())
        cfg, rows = saved["config"], saved["rows"]
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        plot(rows, impls, cfg["B"], cfg["I"], cfg["H"], Path(args.out).with_suffix(".png"), saved["load_average_end"])
        return saved
    machine = machine_info()
    lengths, impls, rss_at = args.lengths, args.impls, set(args.rss_at)
    B, I, H = args.batch_size, args.input, args.hidden
    start = time.perf_counter()
    rows = []
    for T in lengths:
        if args.budget_minutes and time.perf_counter() - start > 60 * args.budget_minutes:
            print(f"budget reached; stopping before T={T}", flush=True)
            break
        built = {impl: build(impl, T, B, I, H, args.compile_repeats) for impl in impls}
        for impl, (c, params, xs, _) in built.items():
            jax.block_until_ready(c(params, xs))  # warm-up
        times = {impl: [] for impl in impls}
        for r in range(args.repeats):
            for impl in impls[r % len(impls):] + impls[: r % len(impls)]:
                c, params, xs, _ = built[impl]
                t0 = time.perf_counter()
                jax.block_until_ready(c(params, xs))
                times[impl].append(time.perf_counter() - t0)
        for impl in impls:
            info = dict(built[impl][3])
            info.update(T=T, impl=impl, step_s=statistics.median(times[impl]), step_times_s=times[impl])
            if T in rss_at:
                info["peak_rss_mib"] = rss_probe(impl, T, B, I, H)
            rows.append(info)
            print(
                f"T={T:5d} {impl:7s} compile {info['compile_s']:6.2f}s  temp "
                f"{info.get('temp_size_in_bytes', -1) / 2**20:9.2f} MiB  step {1e3 * info['step_s']:9.1f} ms"
                + (f"  peak RSS {info['peak_rss_mib']:.0f} MiB" if info.get("peak_rss_mib") else ""),
                flush=True,
            )
        del built

    # Markdown table
    print(f"\nLSTM B={B}, I={I}, H={H}; load average {os.getloadavg()}.\n")
    header = "| T | " + " | ".join(
        f"{i} temp MiB | {i} step ms | {i} compile s" for i in impls
    ) + " |"
    print(header)
    print("|---:|" + "---:|" * (3 * len(impls)))
    by = {(r["T"], r["impl"]): r for r in rows}
    for T in sorted({r["T"] for r in rows}):
        cells = []
        for i in impls:
            r = by.get((T, i))
            cells += [f"{r.get('temp_size_in_bytes', -1) / 2**20:.2f}", f"{1e3 * r['step_s']:.1f}",
                      f"{r['compile_s']:.2f}"] if r else ["-"] * 3
        print(f"| {T} | " + " | ".join(cells) + " |")
    rss = [r for r in rows if r.get("peak_rss_mib")]
    if rss:
        print("\nPeak RSS of a fresh process running one step: " +
              ", ".join(f"{r['impl']} T={r['T']}: {r['peak_rss_mib']:.0f} MiB" for r in rss))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "config": {"B": B, "I": I, "H": H, "repeats": args.repeats, "compile_repeats": args.compile_repeats},
        "args": {k: v for k, v in vars(args).items()},  # args["config"]: the --config file, if any
        "load_average_end": os.getloadavg(),
        "machine": finish_machine_info(machine),
        "rows": rows,
    }, indent=1))
    plot(rows, impls, B, I, H, out.with_suffix(".png"))
    print(f"wrote {out}")


def main(argv=None):
    return cli.run(build_parser(), remat_benchmark, argv)


if __name__ == "__main__":
    main()
