"""Parallel-in-time against sequential evaluation: forward and training-step time, Newton iterations, memory vs T.

For each T in ``--lengths`` (default 64, 128, ..., 16384) and each case:

* ``manual``: the sequential LSTM (hoisted forward, hand-derived BPTT);
* ``deer``: the same LSTM, evaluated by Newton over the whole trajectory
  (``impl="deer"``, full ``2H x 2H`` Jacobians, associative scan);
* ``quasi-deer``: the same with the diagonal of the Jacobians only (the
  LSTM's hand-derived ``jacobian_diagonal``: about one step of work);
* ``quasi-deer-jvp`` (only when named in ``--cases``): quasi-DEER with that
  diagonal taken by ``D`` JVPs instead, what a cell without
  ``jacobian_diagonal`` gets (the same iterates, ``D`` steps of work);
* ``min_lstm-parallel``, ``min_gru-parallel``, ``min_gru-scan``: the minimal
  cells (linear in their state, so one parallel scan is exact), where those
  cells and the ``"parallel"`` impl are registered (they are skipped otherwise);

records the median forward time (loss value) and training-step time
(``value_and_grad`` w.r.t. the params) over ``--repeats`` calls, XLA's buffer
plan of the compiled training step (temp bytes: what is kept for the backward
plus scratch; :func:`experiments.common.harness.memory_analysis`), and for the
DEER cases the Newton iteration count and whether it converged (``deer_solve``
on the same inputs; a non-converged case falls back to the sequential scan,
which its times then include). Full DEER is skipped where its Jacobians alone
(``T B (2H)^2`` floats) would exceed ``--max-jacobian-mib``. The fp32 matmul
rate and the load average are measured in the same run (start and end).

What a 2-core CPU can show: the *work* of each method, not the speed-up of
parallel-in-time evaluation. DEER trades depth for work: the sequential scan
does ``T`` dependent steps of ``O(B H^2)``; one Newton iteration does
``O(T B D^3)`` (full, ``D = 2H``) or ``O(T B G H^2)`` (quasi: the diagonal
costs one step, ``D`` steps by JVPs) work in ``O(log T)`` depth, times the
iteration count. With two cores there is no idle hardware for that extra
work to run on, so DEER is expected to be slower here at every T; its win
needs many processors (a GPU or TPU with far more lanes than ``B H``). The
iteration counts and memory are machine-independent; the times are not.

    python -m experiments.benchmarks.parallel_time --quick                   # seconds; writes runs/parallel_time_quick.json
    python -m experiments.benchmarks.parallel_time --budget-minutes 30       # the real run -> results/parallel_time.json
    python -m experiments.benchmarks.parallel_time --cases quasi-deer,quasi-deer-jvp --lengths 256,1024,4096 --out runs/qd.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from pathlib import Path


import jax
import jax.numpy as jnp

from experiments.common import cli
from experiments.common.harness import layer_problem, matmul_peak, memory_analysis, result_path, time_calls
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.cells import CELLS, get_cell
from lstm_jax.impls import IMPLS, layer_impl
from lstm_jax.impls.deer import deer_solve
from lstm_jax.layers import count_params, hidden_for_params, init_stack

#: (name, cell, impl, impl options, width); ``width`` is ``"H"`` (the run's ``--hidden``) or ``"params"``
#: (the largest hidden size whose layer has no more parameters than the LSTM's at ``--hidden``:
#: the minimal cells have no ``w_h``, so at equal H they are several times smaller).
#: Cases whose cell or impl is not registered are skipped.
CASES = (
    ("manual", "lstm", "manual", {}, "H"),
    ("deer", "lstm", "deer", {"method": "full"}, "H"),
    ("quasi-deer", "lstm", "deer", {"method": "diagonal"}, "H"),
    ("quasi-deer-jvp", "lstm", "deer", {"method": "diagonal"}, "H"),
    ("min_lstm-parallel", "min_lstm", "parallel", {}, "H"),
    ("min_gru-parallel", "min_gru", "parallel", {}, "H"),
    ("min_gru-scan", "min_gru", "scan", {}, "H"),
    ("min_lstm-parallel=P", "min_lstm", "parallel", {}, "params"),
    ("min_gru-parallel=P", "min_gru", "parallel", {}, "params"),
)
QUICK = {"lengths": [16], "batch_size": 2, "input": 4, "hidden": 8, "repeats": 2}
#: Cases that run with a changed cell: the JVP-diagonal one drops the cell's ``jacobian_diagonal``.
CELL_CHANGES = {"quasi-deer-jvp": lambda cell: dataclasses.replace(cell, jacobian_diagonal=None)}
#: Cases left out of the default ``--cases`` (a comparison of two ways to the same iterates, not a method).
OPT_IN = ("quasi-deer-jvp",)


def available_cases(names):
    """The :data:`CASES` named in ``names`` whose cell and impl are registered."""
    return [c for c in CASES if c[0] in names and c[1] in CELLS and c[2] in IMPLS]


def jacobian_mib(T, B, H, cell="lstm"):
    """MiB of full DEER's Jacobians: ``T B D^2`` float32, ``D`` = the flattened carry width."""
    width = sum(leaf.shape[-1] for leaf in jax.tree_util.tree_leaves(get_cell(cell).carry_like(H, (), "float32")))
    return 4.0 * T * B * width**2 / 2**20


def case_hidden(case, I, H) -> int:
    """The hidden size a case runs at: ``H``, or the parameter-matched width (see :data:`CASES`)."""
    cell, width = case[1], case[4]
    if width == "H":
        return H
    key = jax.random.PRNGKey(0)
    return hidden_for_params(lambda h: init_stack(key, cell, I, h), count_params(init_stack(key, "lstm", I, H)))


def measure(case, T, B, I, H, repeats):
    """One row: forward / train-step medians, XLA memory of the train step, Newton iterations."""
    name, cell, impl_name, options, _ = case
    H = case_hidden(case, I, H)
    impl = layer_impl(impl_name, **options)
    c = CELL_CHANGES.get(name, lambda same: same)(get_cell(cell))
    loss, params, xs = layer_problem(c, impl, T, B, I, H)
    row = {"name": name, "cell": cell, "impl": impl_name, "options": options, "T": T, "H": H,
           "params": count_params(params)}
    t0 = time.perf_counter()
    forward = jax.jit(loss).lower(params, xs).compile()
    train = jax.jit(jax.value_and_grad(loss)).lower(params, xs).compile()
    row["compile_s"] = time.perf_counter() - t0
    row.update(memory_analysis(train))
    row["forward_temp_size_in_bytes"] = memory_analysis(forward).get("temp_size_in_bytes", -1)
    jax.block_until_ready((forward(params, xs), train(params, xs)))  # warm-up
    fwd_times = time_calls(lambda: jax.block_until_ready(forward(params, xs)), repeats)
    train_times = time_calls(lambda: jax.block_until_ready(train(params, xs)), repeats)
    row.update(forward_s=statistics.median(fwd_times), forward_times_s=fwd_times,
               train_step_s=statistics.median(train_times), train_step_times_s=train_times)
    if impl_name == "deer":
        solve = jax.jit(lambda p, x: deer_solve(c, p, x, c.zeros_carry(H, (B,), x.dtype), **options))
        _, iters, converged = solve(params[0], jnp.swapaxes(xs, 0, 1))
        row.update(newton_iters=int(iters), converged=bool(converged))
    return row


def plot(rows, names, cfg, path, load):
    """Log-log PNG: forward and training-step time vs T, one line per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for name in names:
            rs = sorted((r for r in rows if r["name"] == name), key=lambda r: r["T"])
            for ax, key in zip(axes, ("forward_s", "train_step_s")):
                ax.loglog([r["T"] for r in rs], [1e3 * r[key] for r in rs], "o-", label=name)
        for ax, title in zip(axes, ("forward (ms)", "training step, value_and_grad (ms)")):
            ax.set_xlabel("sequence length T")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"B={cfg['B']}, I={cfg['I']}, H={cfg['H']}, {os.cpu_count()} CPUs (load average {load[0]:.1f})")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    except Exception as e:  # plotting is a convenience
        print(f"plot skipped: {e}")


def table(rows, names):
    """Markdown: the cases (with their H and parameter count), then per T one table each of forward ms
    (with DEER's Newton iterations), training-step ms and the training step's XLA temp MiB."""
    by = {(r["T"], r["name"]): r for r in rows}
    lengths = sorted({r["T"] for r in rows})
    first = {}  # name -> one of its rows: cell, impl, H and params do not change with T
    for r in rows:
        first.setdefault(r["name"], r)
    out = ["| case | cell | impl | H | params |", "|---|---|---|---:|---:|"]
    out += [f"| {n} | {first[n]['cell']} | {first[n]['impl']} | {first[n]['H']} | {first[n]['params']:,} |"
            for n in names if n in first]

    def metric(title, fmt):
        lines = ["", f"{title}:", "", "| T | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for T in lengths:
            lines.append(f"| {T} | " + " | ".join(fmt(by[(T, n)]) if (T, n) in by else "-" for n in names) + " |")
        return lines

    def forward(r):
        iters = f" ({r['newton_iters']} it{'' if r['converged'] else ', fell back'})" if "newton_iters" in r else ""
        return f"{1e3 * r['forward_s']:.2f}{iters}"

    out += metric("forward ms (DEER: Newton iterations)", forward)
    out += metric("training step ms (value_and_grad)", lambda r: f"{1e3 * r['train_step_s']:.2f}")
    out += metric("training step XLA temp MiB", lambda r: f"{r.get('temp_size_in_bytes', -1) / 2**20:.2f}")
    return "\n".join(out)


def speedups(rows, names, reference="manual"):
    """Markdown: per T, the reference case's training-step time over each other case's (> 1: faster)."""
    by = {(r["T"], r["name"]): r for r in rows}
    others = [n for n in names if n != reference]
    lines = [f"| T | " + " | ".join(f"{n} vs {reference}" for n in others) + " |", "|---:|" + "---:|" * len(others)]
    for T in sorted({r["T"] for r in rows}):
        ref = by.get((T, reference))
        cells = [f"{ref['train_step_s'] / by[(T, n)]['train_step_s']:.2f}x" if ref and (T, n) in by else "-"
                 for n in others]
        lines.append(f"| {T} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True, script=__file__)
    cli.add_flag(p, "lengths", default=[2**k for k in range(6, 15)])
    p.add_argument("--cases", action=cli.ListAction, default=[c[0] for c in CASES if c[0] not in OPT_IN],
                   help=f"cases to run (unregistered ones are skipped; {', '.join(OPT_IN)} only when named)")
    cli.add_flag(p, "batch_size", default=4)
    p.add_argument("--input", type=int, default=16, help="input size I")
    cli.add_flag(p, "hidden", default=32)
    cli.add_flag(p, "repeats", default=5)
    p.add_argument("--max-jacobian-mib", type=float, default=1024.0,
                   help="skip full DEER where its Jacobians (T B (2H)^2 floats) exceed this")
    cli.add_flag(p, "quick", help=f"tiny sizes {QUICK}, output under the untracked runs/ (smoke test)")
    cli.add_flag(p, "budget_minutes", default=30.0)
    cli.add_flag(p, "out", help="JSON path (default results/parallel_time.json; with --quick runs/parallel_time_quick.json)")
    cli.add_malloc_flag(p)
    return p


def parallel_time(args):
    malloc = cli.apply_malloc(args)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = Path(args.out) if args.out else result_path("parallel_time", quick=args.quick)
    B, I, H = args.batch_size, args.input, args.hidden
    cases = available_cases(args.cases)
    names = [c[0] for c in cases]
    skipped = [c[0] for c in CASES if c[0] in args.cases and c[0] not in names]
    if skipped:
        print(f"not registered here, skipped: {skipped}")
    gflops_start, _ = matmul_peak(512 if args.quick else 2048, 3 if args.quick else 7)
    machine = machine_info(malloc=malloc, matmul_gflops=gflops_start)
    start, rows, over_budget = time.perf_counter(), [], []
    for T in args.lengths:
        for case in cases:
            if args.budget_minutes and time.perf_counter() - start > 60 * args.budget_minutes:
                over_budget.append((case[0], T))
                continue
            if case[0] == "deer" and jacobian_mib(T, B, H) > args.max_jacobian_mib:
                print(f"T={T:6d} deer skipped: Jacobians {jacobian_mib(T, B, H):.0f} MiB > --max-jacobian-mib")
                continue
            row = measure(case, T, B, I, H, args.repeats)
            rows.append(row)
            print(f"T={T:6d} {case[0]:18s} fwd {1e3 * row['forward_s']:9.2f} ms  step {1e3 * row['train_step_s']:9.2f} ms"
                  f"  temp {row.get('temp_size_in_bytes', -1) / 2**20:8.2f} MiB"
                  + (f"  {row['newton_iters']} Newton iterations" + ("" if row["converged"] else " (fell back)")
                     if "newton_iters" in row else ""), flush=True)
    gflops_end, _ = matmul_peak(512 if args.quick else 2048, 3 if args.quick else 7)
    machine["matmul_gflops_end"] = gflops_end
    finish_machine_info(machine)
    print(f"\nB={B}, I={I}, H={H}; fp32 matmul {gflops_start:.0f} -> {gflops_end:.0f} GFLOP/s; load average "
          f"{machine['load_average_at_start']} -> {machine['load_average_at_end']}\n")
    print(table(rows, names))
    if "manual" in names:
        print("\ntraining step, sequential LSTM (manual) time / case time:\n")
        print(speedups(rows, names))
    if over_budget:
        print(f"\nnot run, over the {args.budget_minutes} min budget: {over_budget}")
    cfg = {"B": B, "I": I, "H": H, "repeats": args.repeats, "lengths": args.lengths, "quick": args.quick}
    result = {"config": cfg, "args": {k: v for k, v in vars(args).items()},  # args["config"]: the --config file
              "machine": machine, "skipped_unregistered": skipped, "over_budget": over_budget, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(rows, names, cfg, out.with_suffix(".png"), machine["load_average_at_end"])
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def main(argv=None):
    return cli.run(build_parser(), parallel_time, argv)


if __name__ == "__main__":
    main()
