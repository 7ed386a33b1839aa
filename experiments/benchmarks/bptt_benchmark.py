"""Hand-derived BPTT (custom_vjp, ``impl="manual"``) vs plain JAX autodiff (``impl="scan"``).

For each cell and size, one jitted training step (forward, loss =
per-step softmax cross-entropy through a linear readout, backward, Adam
update) is compiled with each backward, and measured side by side in the same
process:

* time per step: median over ``--repeats`` timed calls (after warm-up calls,
  which include compilation and are excluded); the two implementations are
  timed in alternation, so load from other processes hits both alike;
* peak memory as XLA plans it: ``jax.jit(step).lower(...).compile().memory_analysis()``
  (``temp_size_in_bytes``: scratch buffers incl. everything saved for the
  backward; arguments/outputs are the same for both);
* a sanity check that both give the same gradients.

Prints a markdown table and writes JSON (default ``results/bptt_benchmark.json``).

    python -m experiments.benchmarks.bptt_benchmark --quick          # seconds; smoke test
    python -m experiments.benchmarks.bptt_benchmark --budget-minutes 15  # the real run
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path


import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.common import cli
from experiments.common.harness import memory_analysis, result_path
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.layers import apply_stack, init_stack

IMPLS = ("scan", "manual")
# (batch, time, vocab/input, hidden, layers)
FULL_SIZES = [(32, 100, 64, 128, 1), (16, 200, 64, 256, 1), (32, 100, 64, 128, 2)]
QUICK_SIZES = [(4, 16, 8, 16, 1)]


def make_step(cell, impl, sizes, unroll):
    batch, seq_len, vocab, hidden, layers = sizes
    opt = optax.adam(1e-3)

    def loss_fn(params, tokens):
        xs = jax.nn.one_hot(tokens[:, :-1], vocab, dtype=jnp.float32)
        ys, _ = apply_stack(cell, params["rnn"], xs, impl=impl, unroll=unroll)
        logits = ys @ params["w_out"] + params["b_out"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "rnn": init_stack(k1, cell, vocab, hidden, num_layers=layers),
        "w_out": jax.random.normal(k2, (hidden, vocab)) / np.sqrt(hidden),
        "b_out": jnp.zeros((vocab,)),
    }
    tokens = jax.random.randint(k3, (batch, seq_len + 1), 0, vocab)
    return step, (params, opt.init(params), tokens)


def bench_case(cell, sizes, repeats, warmup, unroll):
    compiled, args, out = {}, {}, {}
    for impl in IMPLS:
        step, a = make_step(cell, impl, sizes, unroll)
        t0 = time.perf_counter()
        compiled[impl] = jax.jit(step).lower(*a).compile()
        out[impl] = {"compile_s": time.perf_counter() - t0, "memory": memory_analysis(compiled[impl])}
        args[impl] = a
    # Same gradients? (float32; different summation orders)
    g = {impl: compiled[impl](*args[impl])[3] for impl in IMPLS}
    diffs = [
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(jax.tree_util.tree_leaves(g["manual"]), jax.tree_util.tree_leaves(g["scan"]))
    ]
    times = {impl: [] for impl in IMPLS}
    for i in range(warmup + repeats):
        for impl in (IMPLS if i % 2 == 0 else IMPLS[::-1]):  # alternate order
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[impl](*args[impl]))
            if i >= warmup:
                times[impl].append(time.perf_counter() - t0)
    for impl in IMPLS:
        t = sorted(times[impl])
        out[impl].update(
            step_ms_median=1e3 * statistics.median(t),
            step_ms_min=1e3 * t[0],
            step_ms_q1=1e3 * float(np.percentile(t, 25)),
            step_ms_q3=1e3 * float(np.percentile(t, 75)),
            repeats=len(t),
        )
    out["grad_max_rel_diff"] = max(diffs)
    return out


def _mib(x):
    return x / 2**20


def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    cli.add_flag(p, "quick", help="one tiny size, few repeats (smoke test)")
    cli.add_flag(p, "cells", default=["rnn", "lstm", "gru"])
    cli.add_flag(p, "repeats", default=None, help="timed steps per impl (default 20, quick 5)")
    p.add_argument("--warmup-calls", type=int, default=2,
                   help="untimed calls per impl before timing")
    cli.add_flag(p, "unroll")
    cli.add_flag(p, "budget_minutes", default=20.0,
                 help="wall-clock budget; remaining cases are skipped")
    cli.add_flag(p, "out", help="JSON path (default results/bptt_benchmark.json; with --quick runs/bptt_benchmark_quick.json)")
    cli.add_malloc_flag(p)
    return p


def bptt_benchmark(args):
    malloc = cli.apply_malloc(args)
    sizes_list = QUICK_SIZES if args.quick else FULL_SIZES
    repeats = args.repeats or (5 if args.quick else 20)
    out_path = Path(args.out) if args.out else result_path("bptt_benchmark", quick=args.quick)
    start = time.time()
    meta = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(malloc=malloc),
        "note": "the two implementations were timed in alternation in the same process, so on a loaded "
        "machine the ratio is the fairer figure (see machine.load_average_at_start / _at_end)",
        "loss": "per-step softmax cross-entropy through a linear readout, one-hot inputs, Adam update",
        "repeats": repeats,
        "warmup": args.warmup_calls,
        "unroll": args.unroll,
        "args": dict(vars(args)),  # the resolved arguments; "config": the --config file, if any
    }
    results, skipped = [], []
    for cell in args.cells:
        for sizes in sizes_list:
            if time.time() - start > 60 * args.budget_minutes:
                skipped.append({"cell": cell, "sizes": sizes})
                continue
            r = bench_case(cell, sizes, repeats, args.warmup_calls, args.unroll)
            b, t, v, h, layers = sizes
            row = {"cell": cell, "batch": b, "time": t, "input": v, "hidden": h, "layers": layers, **r}
            results.append(row)
            s, m = r["scan"], r["manual"]
            print(
                f"{cell} B={b} T={t} H={h} L={layers}: autodiff {s['step_ms_median']:.2f} ms, "
                f"manual {m['step_ms_median']:.2f} ms; temp {_mib(s['memory'].get('temp_size_in_bytes', 0)):.2f} "
                f"vs {_mib(m['memory'].get('temp_size_in_bytes', 0)):.2f} MiB; grad rel diff {r['grad_max_rel_diff']:.1e}",
                flush=True,
            )
    machine = finish_machine_info(meta["machine"])
    meta["wall_s"] = time.time() - start
    meta["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    meta["skipped_over_budget"] = skipped

    lines = [
        "| cell | B | T | H | layers | autodiff ms/step (median) | manual ms/step (median) | manual / autodiff time "
        "| autodiff temp MiB | manual temp MiB | grad max rel diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s, m = r["scan"], r["manual"]
        ts, tm = s["memory"].get("temp_size_in_bytes", -1), m["memory"].get("temp_size_in_bytes", -1)
        lines.append(
            f"| {r['cell']} | {r['batch']} | {r['time']} | {r['hidden']} | {r['layers']} "
            f"| {s['step_ms_median']:.2f} [{s['step_ms_q1']:.2f}-{s['step_ms_q3']:.2f}] "
            f"| {m['step_ms_median']:.2f} [{m['step_ms_q1']:.2f}-{m['step_ms_q3']:.2f}] "
            f"| {m['step_ms_median'] / s['step_ms_median']:.2f} "
            f"| {_mib(ts):.2f} | {_mib(tm):.2f} | {r['grad_max_rel_diff']:.1e} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(
        f"\n[brackets: interquartile range over {repeats} steps] backend={machine['jax_backend']}, "
        f"load average {machine['load_average_at_start'][0]:.1f} -> {machine['load_average_at_end'][0]:.1f} "
        f"on {machine['cpu_count']} cores"
    )
    if skipped:
        print(f"skipped over the {args.budget_minutes} min budget: {skipped}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"meta": meta, "results": results, "table_markdown": table}, indent=2))
    print(f"wrote {out_path}")
    return 0


def main(argv=None):
    return cli.run(build_parser(), bptt_benchmark, argv)


if __name__ == "__main__":
    sys.exit(main())
