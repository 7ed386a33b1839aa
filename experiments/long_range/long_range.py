"""Long-range memory sweep: rnn vs gru vs lstm on the adding (or copy) task over T.

Every (cell, T) pair gets the same hidden size, batch size, optimiser, step
budget and wall-clock budget, and is trained with the shared loop
:func:`lstm_jax.train.fit` on batches generated on the fly. The test error is
measured on a fixed held-out set (its own key) every ``--eval-every`` steps.

Outputs (in ``--out``):
    results.json   every run: final / best test error, steps, seconds, curve, its model_dir
    models/        each run's checkpoint (``<cell>-T<T>``; never overwritten), restorable from its spec alone
    results.md     markdown table: final test error per cell x T, with the baseline
    long_range.png final test error vs T per cell, trivial baseline dashed
    curves.png     test error vs training step, one panel per T

Sweeps of one configuration trained side by side (``taskset -c 0`` and ``-c 1``, each with its own
``--out``) become one table with ``--merge``.

Example (the README numbers)::

    python -m experiments.long_range.long_range --task adding --lengths 50 100 200 400 \\
        --steps 4000 --max-minutes 2.5 --out runs/long_range_adding
"""

from __future__ import annotations

import json
import time
from pathlib import Path


import jax

from experiments.common import cli
from experiments.common.run_figures import draw_sweep
from experiments.long_range.sweeps import CELL_ORDER, appended_runs, copy_sweep_figures, merge_sweeps, replot, run_summary
from experiments.common.harness import run_matmul_gflops
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.distributed import multiprocess, sharding
from lstm_jax.stack import chrono_cells
from lstm_jax.models.sequence_regressor import make_task, regressor_config, regressor_task
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.train import fit

def model_dir(out: Path, cell: str, T: int) -> Path:
    """A new folder for the run's checkpoint: ``models/<cell>-T<T>``, or ``-2``, ``-3``, ... (never overwritten)."""
    base = out / "models" / f"{cell}-T{T}"
    return next(p for n in range(1, 10_000) if not (p := base if n == 1 else base.with_name(f"{base.name}-{n}")).exists())


def run_one(task, cell: str, args, test_batch, out: Path) -> dict:
    k_init, k_data = jax.random.split(jax.random.key(args.seed))
    # the impl/precision rule (or "auto": measured) for this cell and T, on one layer (the model has one)
    _, choice = cli.choose_layer(cell, args.impl, args.precision, T=task.T, B=args.batch_size,
                                 I=task.input_size, H=args.hidden)
    spec = RecurrentSpec(cell=cell, hidden=args.hidden, impl=choice["impl"], precision=choice["precision"])
    model = regressor_task(task, spec, init=args.init)
    config = cli.train_config(args, log_every=args.eval_every, checkpoint_every=max(args.steps, 1), progress=False)
    metadata = {"model": regressor_config(task, spec, init=args.init, num_symbols=args.num_symbols,
                                          copy_length=args.copy_length)}
    t0 = time.perf_counter()
    where = model_dir(out, cell, task.T)
    batches, rows = task.batch_fn(k_data, args.batch_size), multiprocess.process_rows(args.batch_size)
    with cli.metrics_writer(args, where) as tensorboard:
        result = fit(model.loss, model.init(k_init), lambda step: multiprocess.local_rows(batches(step), rows), config,
                     eval_fn=model.eval_fn(test_batch, prefix="test_"), best_metric=f"test_{task.metric}",
                     out_dir=where, metadata=metadata, metrics=tensorboard)
    summary = run_summary(result, task, cell, time.perf_counter() - t0, choice, args.solved_threshold)
    return {**summary, "model_dir": str(where.relative_to(out))}


def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    p.add_argument("--task", choices=["adding", "copy"], default="adding")
    cli.add_flag(p, "lengths", default=[50, 100, 200, 400])
    model = cli.add_model_flags(p, ("hidden",), hidden=64)
    cli.add_flag(model, "cells", default=["rnn", "gru", "lstm"], choices=cli.CELL_NAMES)
    cli.add_flag(model, "init")
    cli.add_flag(model, "impl")
    cli.add_flag(model, "precision")
    t = cli.add_training_flags(
        p,
        dict(steps=4000, max_minutes=2.5, learning_rate=2e-3, warmup_steps=100, weight_decay=0.0, clip_norm=1.0,
             eval_every=100, seed=0),
        helps={"max_minutes": "wall-clock budget of each (cell, T) run",
               "eval_every": "steps between evaluations on the test set (and logged training records)"},
    )
    cli.add_flag(t, "batch_size", default=64)
    t.add_argument("--test-size", type=int, default=1000, help="held-out test sequences")
    t.add_argument("--num-symbols", type=int, default=8, help="copy task: K symbols")
    t.add_argument("--copy-length", type=int, default=10, help="copy task: L symbols to remember")
    t.add_argument("--solved-threshold", type=float, default=None,
                   help="error counted as solved (default 0.01 for adding, 0.05 nats for copy)")
    o = cli.add_output_flags(p, ("out", "tensorboard"), out={"default": "runs/long_range", "help": "run directory"})
    o.add_argument("--append", action="store_true",
                   help="add to an existing results.json in --out (runs already there are kept, "
                        "a (cell, T) pair present is replaced by the new run); refused, before training, "
                        "unless the settings that make runs comparable are the same (as for --merge)")
    o.add_argument("--replot", action="store_true",
                   help="only rewrite results.md and the PNGs from --out/results.json (no training)")
    o.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="add the runs of these sweep directories to --out/results.json and redraw (no training); "
                        "same task and training configuration, each (cell, T) pair from one sweep only")
    o.add_argument("--figure", default=None, help="also copy the PNG here (e.g. docs/figures/long_range_adding.png)")
    cli.add_malloc_flag(p)
    return p


def long_range(args):
    cli.apply_malloc(args)  # before JAX starts its backend (see lstm_jax.runtime)
    multiprocess.initialize_from_env()  # a no-op unless started by lstm_jax.distributed.launch or a cluster (first JAX call)
    if args.solved_threshold is None:
        args.solved_threshold = 0.01 if args.task == "adding" else 0.05

    out = Path(args.out)
    if args.merge:
        merge_sweeps(out, [Path(d) for d in args.merge])
    if args.replot or args.merge:
        replot(args, out)
        return
    if args.init == "chrono":  # refuse before any run trains, not at the first cell without a keep gate
        with_gate = chrono_cells()
        no_gate = [c for c in args.cells if c not in with_gate]
        if no_gate:
            raise SystemExit(f"--init chrono: cells {no_gate} have no keep gate to set; cells with one: {with_gate}")
    earlier = appended_runs(out, args) if args.append and (out / "results.json").exists() else {}
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "machine": machine_info(matmul_gflops=run_matmul_gflops()), "runs": [], **earlier}
    run_cells = list(args.cells)  # what this invocation trains; args.cells: what the table and plots show
    args.cells = [c for c in CELL_ORDER if c in run_cells or any(r["cell"] == c for r in record["runs"])]
    for T in args.lengths:
        task = make_task(args.task, T, num_symbols=args.num_symbols, length=args.copy_length)
        record.setdefault("baseline", task.baseline)
        test_batch = task.batch_fn(jax.random.key(10_000 + args.seed), args.test_size)(0)
        for cell in run_cells:
            r = run_one(task, cell, args, test_batch, out)
            if not sharding.is_main_process():  # one report and one set of files in a multi-process job
                continue
            print(f"{args.task} T={T:4d} {cell:5s}: final test {task.metric} {r['final_test']:.4f} "
                  f"(best {r['best_test']:.4f}) after {r['steps']} steps, {r['seconds']:.0f}s "
                  f"[{r['stop_reason']}]", flush=True)
            record["runs"] = [x for x in record["runs"] if (x["cell"], x["T"]) != (cell, T)] + [r]
            record["runs"].sort(key=lambda r: (r["T"], CELL_ORDER.index(r["cell"])))
            # rewrite after every run, so a partial sweep is still a result
            (out / "results.json").write_text(json.dumps(record, indent=1))
            draw_sweep(out, task, record["runs"], args)
    if not sharding.is_main_process():
        return
    finish_machine_info(record["machine"], matmul_gflops=run_matmul_gflops())
    (out / "results.json").write_text(json.dumps(record, indent=1))
    copy_sweep_figures(args, out)
    print((out / "results.md").read_text())


def main(argv=None):
    return cli.run(build_parser(), long_range, argv)


if __name__ == "__main__":
    main()
