"""Long-range memory sweep: rnn vs gru vs lstm on the adding (or copy) task over T.

Every (cell, T) pair gets the same hidden size, batch size, optimiser, step
budget and wall-clock budget, and is trained with the shared loop
:func:`lstm_jax.train.fit` on batches generated on the fly. The test error is
measured on a fixed held-out set (its own key) every ``--eval-every`` steps.

Outputs (in ``--out``):
    results.json   every run: final / best test error, steps, seconds, curve
    results.md     markdown table: final test error per cell x T, with the baseline
    long_range.png final test error vs T per cell, trivial baseline dashed
    curves.png     test error vs training step, one panel per T

Sweeps of one configuration trained side by side (``taskset -c 0`` and ``-c 1``, each with its own
``--out``) become one table with ``--merge``.

Example (the README numbers)::

    python experiments/training/long_range.py --task adding --lengths 50 100 200 400 \\
        --steps 4000 --max-minutes 2.5 --out runs/long_range_adding
"""

from __future__ import annotations

import json
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    import _bootstrap  # noqa: F401

import jax

from experiments.common import cli
from experiments.common.figures import can_plot, copy_figures
from experiments.common.harness import run_matmul_gflops
from experiments.common.machine import finish_machine_info, machine_info
from lstm_jax.cells import get_cell
from lstm_jax.models.sequence_regressor import init_sequence_model, make_task
from lstm_jax.stack import chrono_init_stack
from lstm_jax.train import fit

#: Table and plot order: the classic cells from the simplest up, then any other registered cell.
CELL_ORDER = ["rnn", "gru", "lstm"] + [c for c in cli.CELL_NAMES if c not in ("rnn", "gru", "lstm")]

#: Record keys that ``--replot`` takes from a saved sweep (older records spell max_minutes as minutes_per_run).
REPLOT_KEYS = ("task", "init", "hidden", "batch_size", "steps", "max_minutes", "num_symbols", "copy_length", "solved_threshold")
_OLD_KEYS = {"batch_size": "batch", "max_minutes": "minutes_per_run"}
#: Values of keys that older records lack (sweeps from before ``--init`` used the cells' own init).
_DEFAULTS = {"init": "standard"}
#: Record keys on which two sweeps must agree for ``--merge`` to put their runs in one table: everything that
#: makes the runs comparable at equal steps (the lengths, cells and output paths may differ).
MERGE_KEYS = REPLOT_KEYS + ("learning_rate", "warmup_steps", "weight_decay", "clip_norm", "eval_every", "seed",
                            "test_size", "impl", "precision")


def _saved(saved: dict, key: str):
    """A saved record's value of ``key``, read through older spellings and defaults (None if absent)."""
    if key in saved:
        return saved[key]
    if key in _OLD_KEYS and _OLD_KEYS[key] in saved:
        return saved[_OLD_KEYS[key]]
    return _DEFAULTS.get(key)


def _invocations(record: dict) -> list[dict]:
    """``record``'s invocations, oldest first: its earlier ones, then its own ``args`` and ``machine``."""
    return record.get("earlier_invocations", []) + [{"args": record["args"], "machine": record["machine"]}]


def make_eval(task, cell, test_batch, chunk: int = 500, impl="scan"):
    """Mean test loss and metrics over the fixed test set, in chunks (jitted)."""
    inputs, targets = test_batch
    n = inputs.shape[0]

    @jax.jit
    def chunk_metrics(params, batch):
        _, metrics = task.model_loss(cell, params, batch, impl=impl)
        return metrics

    def eval_fn(params):
        sums, count = {}, 0
        for s in range(0, n, chunk):
            b = (inputs[s : s + chunk], targets[s : s + chunk])
            m = jax.device_get(chunk_metrics(params, b))
            k = b[0].shape[0]
            for name, v in m.items():
                sums[name] = sums.get(name, 0.0) + float(v) * k
            count += k
        out = {f"test_{name}": v / count for name, v in sums.items()}
        out["val_loss"] = out[f"test_{task.metric}"]
        return out

    return eval_fn


def run_one(task, cell: str, args, test_batch) -> dict:
    key = jax.random.key(args.seed)
    k_init, k_data = jax.random.split(key)
    params = init_sequence_model(k_init, cell, task.input_size, args.hidden, task.output_size)
    if args.init == "chrono":  # memory ranges up to the whole sequence (Tallec & Ollivier 2018)
        seq_len = test_batch[0].shape[1]
        params["stack"] = chrono_init_stack(jax.random.fold_in(k_init, 1), cell, params["stack"], seq_len)
    # "auto": the fastest impl/precision for this cell and T, measured on one layer (the model has one)
    impl, choice = cli.choose_layer(cell, args.impl, args.precision, T=task.T, B=args.batch_size,
                                    I=task.input_size, H=args.hidden)

    def loss_fn(params, batch, key, model_state):
        loss, metrics = task.model_loss(cell, params, batch, impl=impl)
        return loss, (model_state, metrics)

    config = cli.train_config(
        args, log_every=args.eval_every, checkpoint_every=max(args.steps, 1), progress=False
    )
    eval_fn = make_eval(task, cell, test_batch, impl=impl)
    t0 = time.perf_counter()
    result = fit(loss_fn, params, task.batch_fn(k_data, args.batch_size), config, eval_fn=eval_fn)
    seconds = time.perf_counter() - t0
    evals = [r for r in result.history if r.get("kind") == "eval"]
    trains = [r for r in result.history if r.get("kind") == "train"]
    metric = f"test_{task.metric}"
    curve = [(r["step"], r[metric]) for r in evals]
    final = evals[-1][metric] if evals else float("nan")
    best = min((v for _, v in curve), default=float("nan"))
    solved_at = next((s for s, v in curve if v <= args.solved_threshold), None)
    out = {
        "cell": cell,
        "T": task.T,
        "final_test": final,
        "best_test": best,
        "steps": result.step,
        "seconds": round(seconds, 1),
        "stop_reason": getattr(result, "stop_reason", None),
        "solved_at_step": solved_at,
        "layer": choice,
        "curve": curve,
        "train_loss_curve": [(r["step"], r["loss"]) for r in trains],
    }
    if task.name == "copy" and evals:
        out["final_test_accuracy"] = evals[-1].get("test_accuracy")
    return out


def write_table(path: Path, task, runs: list[dict], args) -> None:
    lengths = sorted({r["T"] for r in runs})
    cells = [c for c in args.cells if any(r["cell"] == c for r in runs)]
    what = "test MSE" if task.name == "adding" else "test cross-entropy on the recall steps (nats)"
    lines = [
        f"Task: {task.name}; {what}, final (after the budget); trivial baseline {task.baseline:.3f}; "
        f"H={args.hidden}, {args.init} gate-bias init; "
        f"**bold** = at most {args.solved_threshold}. Cell entries: final error (steps run, seconds).",
        "",
        "| cell | " + " | ".join(f"T={T}" for T in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for c in cells:
        row = []
        for T in lengths:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            if r is None:
                row.append("—")
                continue
            v = f"{r['final_test']:.4f}"
            if r["final_test"] <= args.solved_threshold:
                v = f"**{v}**"
            row.append(f"{v} ({r['steps']}, {r['seconds']:.0f}s)")
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    lines += ["", f"First evaluation step with test error <= {args.solved_threshold} (— = never within the budget):", "",
              "| cell | " + " | ".join(f"T={T}" for T in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for c in cells:
        row = []
        for T in lengths:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            row.append("—" if r is None or r["solved_at_step"] is None else str(r["solved_at_step"]))
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, task, runs: list[dict], args) -> None:
    if not can_plot(path):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    markers = {"rnn": "o", "gru": "s", "lstm": "^", "min_gru": "D", "min_lstm": "v"}
    for c in args.cells:
        pts = sorted((r["T"], r["final_test"]) for r in runs if r["cell"] == c)
        if pts:
            ax.plot(*zip(*pts), marker=markers.get(c, "o"), label=c)
    ax.axhline(task.baseline, color="k", ls="--", lw=1,
               label=f"trivial baseline ({task.baseline:.3f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lengths = sorted({r["T"] for r in runs})
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(t) for t in lengths])
    ax.minorticks_off()
    ax.set_xlabel("T (sequence length)" if task.name == "adding" else "T (delay)")
    ax.set_ylabel("final test MSE" if task.name == "adding" else "final test xent (nats)")
    ax.set_title(f"{task.name}: H={args.hidden}, batch {args.batch_size}, <= {args.steps} steps\n"
                 "+ wall-clock cap per run (steps run: results.md)", fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(path: Path, task, runs: list[dict], args) -> None:
    """Test error vs training step, one panel per T, one line per cell."""
    if not can_plot(path):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["T"] for r in runs})
    fig, axes = plt.subplots(1, len(lengths), figsize=(2.6 * len(lengths) + 0.6, 2.8), dpi=100,
                             sharey=True, squeeze=False)
    for ax, T in zip(axes[0], lengths):
        for c in args.cells:
            r = next((r for r in runs if r["cell"] == c and r["T"] == T), None)
            if r and r["curve"]:
                ax.plot(*zip(*r["curve"]), label=c)
        ax.axhline(task.baseline, color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_title(f"T={T}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test MSE" if task.name == "adding" else "test xent", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _copy_figures(args, out: Path) -> None:
    if args.figure:
        fig = Path(args.figure)
        copy_figures(out, fig.parent, {"long_range.png": fig.name, "curves.png": fig.stem + "_curves.png"})


def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    p.add_argument("--task", choices=["adding", "copy"], default="adding")
    cli.add_flag(p, "lengths", default=[50, 100, 200, 400])
    model = cli.add_model_flags(p, ("hidden",), hidden=64)
    cli.add_flag(model, "cells", default=["rnn", "gru", "lstm"], choices=cli.CELL_NAMES)
    model.add_argument("--init", choices=["standard", "chrono"], default="standard",
                       help="gate-bias init: the cell's own (LSTM forget bias 1) or chrono "
                            "(keep-gate biases log U(1, seq_len - 1); lstm and gru only)")
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
    o = cli.add_output_flags(p, ("out",), out={"default": "runs/long_range", "help": "run directory"})
    o.add_argument("--append", action="store_true",
                   help="add to an existing results.json in --out (runs already there are kept, "
                        "a (cell, T) pair present is replaced by the new run)")
    o.add_argument("--replot", action="store_true",
                   help="only rewrite results.md and the PNGs from --out/results.json (no training)")
    o.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="add the runs of these sweep directories to --out/results.json and redraw (no training); "
                        "same task and training configuration, each (cell, T) pair from one sweep only")
    o.add_argument("--figure", default=None, help="also copy the PNG here (e.g. docs/figures/long_range_adding.png)")
    cli.add_malloc_flag(p)
    return p


def merge_sweeps(out: Path, sources: list[Path]) -> None:
    """Add the runs of the sweeps in ``sources`` to ``out/results.json`` (no training).

    Sweeps of one configuration trained side by side (one per core, or per machine) become one table. Every
    :data:`MERGE_KEYS` value must agree, and each (cell, T) pair may come from one sweep only; the sources'
    arguments and machine records are kept under ``earlier_invocations``. Nothing is written on a refusal.
    """
    def load(d: Path) -> dict:
        if not (d / "results.json").is_file():
            raise SystemExit(f"--merge: {d} holds no results.json")
        return json.loads((d / "results.json").read_text())

    record = load(out)
    pairs = {(r["cell"], r["T"]): out for r in record["runs"]}
    for src in sources:
        other = load(src)
        differ = [f"{k} {_saved(other['args'], k)!r} (not {_saved(record['args'], k)!r})" for k in MERGE_KEYS
                  if _saved(other["args"], k) != _saved(record["args"], k)]
        if differ:
            raise SystemExit(f"--merge: {src} is a different configuration from {out}: " + ", ".join(differ))
        for r in other["runs"]:
            if (r["cell"], r["T"]) in pairs:
                raise SystemExit(f"--merge: {r['cell']} at T={r['T']} is in both {pairs[r['cell'], r['T']]} and {src}")
            pairs[r["cell"], r["T"]] = src
        record["runs"] += other["runs"]
        record["earlier_invocations"] = record.get("earlier_invocations", []) + _invocations(other)
    record["runs"].sort(key=lambda r: (r["T"], CELL_ORDER.index(r["cell"])))
    (out / "results.json").write_text(json.dumps(record, indent=1))


def replot(args, out: Path) -> None:
    """Rewrite results.md and the PNGs from ``out/results.json`` with the configuration saved there."""
    record = json.loads((out / "results.json").read_text())
    for k in REPLOT_KEYS:
        setattr(args, k, _saved(record["args"], k))
    args.cells = [c for c in CELL_ORDER if any(r["cell"] == c for r in record["runs"])]
    T0 = min(r["T"] for r in record["runs"])
    task = make_task(args.task, T0, num_symbols=args.num_symbols, length=args.copy_length)
    write_table(out / "results.md", task, record["runs"], args)
    plot(out / "long_range.png", task, record["runs"], args)
    plot_curves(out / "curves.png", task, record["runs"], args)
    _copy_figures(args, out)
    print((out / "results.md").read_text())


def long_range(args):
    cli.apply_malloc(args)
    if args.solved_threshold is None:
        args.solved_threshold = 0.01 if args.task == "adding" else 0.05

    out = Path(args.out)
    if args.merge:
        merge_sweeps(out, [Path(d) for d in args.merge])
    if args.replot or args.merge:
        replot(args, out)
        return
    if args.init == "chrono":  # refuse before any run trains, not at the first cell without a keep gate
        no_gate = [c for c in args.cells if get_cell(c).chrono_init is None]
        if no_gate:
            raise SystemExit(f"--init chrono: cells {no_gate} have no keep gate to set (it applies to lstm, gru)")
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "machine": machine_info(matmul_gflops=run_matmul_gflops()), "runs": []}
    if args.append and (out / "results.json").exists():
        old = json.loads((out / "results.json").read_text())
        if old["args"]["task"] != args.task:
            raise SystemExit(f"--append: {out} holds a {old['args']['task']} sweep, not {args.task}")
        old_init = _saved(old["args"], "init")
        if old_init != args.init:
            raise SystemExit(f"--append: {out} holds a sweep with --init {old_init}, not {args.init}")
        new_pairs = {(c, T) for c in args.cells for T in args.lengths}
        record["runs"] = [r for r in old["runs"] if (r["cell"], r["T"]) not in new_pairs]
        record["earlier_invocations"] = _invocations(old)
    run_cells = list(args.cells)  # what this invocation trains; args.cells: what the table and plots show
    args.cells = [c for c in CELL_ORDER if c in run_cells or any(r["cell"] == c for r in record["runs"])]
    for T in args.lengths:
        task = make_task(args.task, T, num_symbols=args.num_symbols, length=args.copy_length)
        record.setdefault("baseline", task.baseline)
        test_batch = task.batch_fn(jax.random.key(10_000 + args.seed), args.test_size)(0)
        for cell in run_cells:
            r = run_one(task, cell, args, test_batch)
            print(f"{args.task} T={T:4d} {cell:5s}: final test {task.metric} {r['final_test']:.4f} "
                  f"(best {r['best_test']:.4f}) after {r['steps']} steps, {r['seconds']:.0f}s "
                  f"[{r['stop_reason']}]", flush=True)
            record["runs"] = [x for x in record["runs"] if (x["cell"], x["T"]) != (cell, T)] + [r]
            record["runs"].sort(key=lambda r: (r["T"], CELL_ORDER.index(r["cell"])))
            # rewrite after every run, so a partial sweep is still a result
            (out / "results.json").write_text(json.dumps(record, indent=1))
            write_table(out / "results.md", task, record["runs"], args)
            plot(out / "long_range.png", task, record["runs"], args)
            plot_curves(out / "curves.png", task, record["runs"], args)
    finish_machine_info(record["machine"], matmul_gflops=run_matmul_gflops())
    (out / "results.json").write_text(json.dumps(record, indent=1))
    _copy_figures(args, out)
    print((out / "results.md").read_text())


def main(argv=None):
    return cli.run(build_parser(), long_range, argv)


if __name__ == "__main__":
    main()
