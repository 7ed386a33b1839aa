"""long_range.py's sweep records: one run's entry (:func:`run_summary`), the keys that make two sweeps
comparable, reading a record (in the current format only: records are frozen, and none is translated),
``--append`` (a sweep continued in its directory), ``--merge`` (sweeps trained side by side become one record)
and ``--replot`` (the table and figures redrawn from a record).
"""

from __future__ import annotations

import json
from pathlib import Path

from lstm_jax.models.sequence_regressor import make_task

from experiments.common.cli import CELL_NAMES
from experiments.common.figures import copy_figures
from experiments.common.run_figures import draw_sweep

__all__ = ["CELL_ORDER", "MERGE_KEYS", "REPLOT_KEYS", "appended_runs", "config_differences", "invocations",
           "load_sweep", "merge_sweeps", "copy_sweep_figures", "replot", "run_summary"]

#: Table and plot order: the classic cells from the simplest up, then any other registered cell.
CELL_ORDER = ["rnn", "gru", "lstm"] + [c for c in CELL_NAMES if c not in ("rnn", "gru", "lstm")]

#: Record keys that ``--replot`` takes from a saved sweep.
REPLOT_KEYS = ("task", "init", "hidden", "batch_size", "steps", "max_minutes", "num_symbols", "copy_length", "solved_threshold")
#: Record keys on which two sweeps must agree for ``--merge`` to put their runs in one table: everything that
#: makes the runs comparable at equal steps (the lengths, cells and output paths may differ).
MERGE_KEYS = REPLOT_KEYS + ("learning_rate", "warmup_steps", "weight_decay", "clip_norm", "eval_every", "seed",
                            "test_size", "impl", "precision")


def run_summary(result, task, cell: str, seconds: float, choice: dict, solved_threshold: float) -> dict:
    """The record of one (cell, T) run from fit's ``result``: final and best test error, the step it was first
    at most ``solved_threshold`` (or None), steps, seconds, stop reason, the layer ``choice``, and both curves."""
    evals = [r for r in result.history if r.get("kind") == "eval"]
    trains = [r for r in result.history if r.get("kind") == "train"]
    metric = f"test_{task.metric}"
    curve = [(r["step"], r[metric]) for r in evals]
    out = {
        "cell": cell,
        "T": task.T,
        "final_test": evals[-1][metric] if evals else float("nan"),
        "best_test": min((v for _, v in curve), default=float("nan")),
        "steps": result.step,
        "seconds": round(seconds, 1),
        "stop_reason": getattr(result, "stop_reason", None),
        "solved_at_step": next((s for s, v in curve if v <= solved_threshold), None),
        "layer": choice,
        "curve": curve,
        "train_loss_curve": [(r["step"], r["loss"]) for r in trains],
    }
    if task.name == "copy" and evals:
        out["final_test_accuracy"] = evals[-1].get("test_accuracy")
    return out


def load_sweep(directory: Path, flag: str) -> dict:
    """The sweep record in ``directory``; SystemExit unless it is in the current format (records are frozen:
    one written before a flag was renamed or added, e.g. without ``init``, is read by no code)."""
    path = directory / "results.json"
    if not path.is_file():
        raise SystemExit(f"{flag}: {directory} holds no results.json")
    record = json.loads(path.read_text())
    missing = [k for k in MERGE_KEYS if k not in record.get("args", {})]
    if missing:
        raise SystemExit(f"{flag}: {path} is not in the current record format (no {', '.join(missing)}); "
                         f"{flag} reads records written by this version of long_range.py only")
    return record


def invocations(record: dict) -> list[dict]:
    """``record``'s invocations, oldest first: its earlier ones, then its own ``args`` and ``machine``."""
    return record.get("earlier_invocations", []) + [{"args": record["args"], "machine": record["machine"]}]


def config_differences(old: dict, new: dict) -> list[str]:
    """The :data:`MERGE_KEYS` on which two sweeps' arguments differ, as ``"key OLD (not NEW)"``."""
    return [f"{k} {old[k]!r} (not {new[k]!r})" for k in MERGE_KEYS if old[k] != new[k]]


def appended_runs(out: Path, args) -> dict:
    """``--append``: the runs of ``out/results.json`` that this invocation does not train again, and that sweep's
    invocations (a record's ``runs`` and ``earlier_invocations``); SystemExit (one line) unless every
    :data:`MERGE_KEYS` value agrees, as for ``--merge``: a table holds runs of one configuration only."""
    old = load_sweep(out, "--append")
    differ = config_differences(old["args"], vars(args))
    if differ:
        raise SystemExit(f"--append: {out} holds a sweep of another configuration: " + ", ".join(differ))
    new_pairs = {(c, T) for c in args.cells for T in args.lengths}
    return {"runs": [r for r in old["runs"] if (r["cell"], r["T"]) not in new_pairs],
            "earlier_invocations": invocations(old)}


def merge_sweeps(out: Path, sources: list[Path]) -> None:
    """Add the runs of the sweeps in ``sources`` to ``out/results.json`` (no training).

    Sweeps of one configuration trained side by side (one per core, or per machine) become one table. Every
    :data:`MERGE_KEYS` value must agree, and each (cell, T) pair may come from one sweep only; the sources'
    arguments and machine records are kept under ``earlier_invocations``. Nothing is written on a refusal.
    """
    record = load_sweep(out, "--merge")
    pairs = {(r["cell"], r["T"]): out for r in record["runs"]}
    for src in sources:
        other = load_sweep(src, "--merge")
        differ = config_differences(other["args"], record["args"])
        if differ:
            raise SystemExit(f"--merge: {src} is a different configuration from {out}: " + ", ".join(differ))
        for r in other["runs"]:
            if (r["cell"], r["T"]) in pairs:
                raise SystemExit(f"--merge: {r['cell']} at T={r['T']} is in both {pairs[r['cell'], r['T']]} and {src}")
            pairs[r["cell"], r["T"]] = src
        record["runs"] += other["runs"]
        record["earlier_invocations"] = record.get("earlier_invocations", []) + invocations(other)
    record["runs"].sort(key=lambda r: (r["T"], CELL_ORDER.index(r["cell"])))
    (out / "results.json").write_text(json.dumps(record, indent=1))


def copy_sweep_figures(args, out: Path) -> None:
    """``--figure PATH``: copy ``long_range.png`` there and ``curves.png`` beside it (``<stem>_curves.png``)."""
    if args.figure:
        fig = Path(args.figure)
        copy_figures(out, fig.parent, {"long_range.png": fig.name, "curves.png": fig.stem + "_curves.png"})


def replot(args, out: Path) -> None:
    """Rewrite results.md and the PNGs from ``out/results.json`` with the configuration saved there."""
    record = load_sweep(out, "--replot")
    for k in REPLOT_KEYS:
        setattr(args, k, record["args"][k])
    args.cells = [c for c in CELL_ORDER if any(r["cell"] == c for r in record["runs"])]
    T0 = min(r["T"] for r in record["runs"])
    task = make_task(args.task, T0, num_symbols=args.num_symbols, length=args.copy_length)
    draw_sweep(out, task, record["runs"], args)
    copy_sweep_figures(args, out)
    print((out / "results.md").read_text())
