"""long_range.py's sweep records: the keys that make two sweeps comparable, reading a record (in the current
format only: records are frozen, and none is translated), and ``--merge`` (sweeps trained side by side become
one record).
"""

from __future__ import annotations

import json
from pathlib import Path

from .cli import CELL_NAMES

__all__ = ["CELL_ORDER", "MERGE_KEYS", "REPLOT_KEYS", "invocations", "load_sweep", "merge_sweeps"]

#: Table and plot order: the classic cells from the simplest up, then any other registered cell.
CELL_ORDER = ["rnn", "gru", "lstm"] + [c for c in CELL_NAMES if c not in ("rnn", "gru", "lstm")]

#: Record keys that ``--replot`` takes from a saved sweep.
REPLOT_KEYS = ("task", "init", "hidden", "batch_size", "steps", "max_minutes", "num_symbols", "copy_length", "solved_threshold")
#: Record keys on which two sweeps must agree for ``--merge`` to put their runs in one table: everything that
#: makes the runs comparable at equal steps (the lengths, cells and output paths may differ).
MERGE_KEYS = REPLOT_KEYS + ("learning_rate", "warmup_steps", "weight_decay", "clip_norm", "eval_every", "seed",
                            "test_size", "impl", "precision")


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
        differ = [f"{k} {other['args'][k]!r} (not {record['args'][k]!r})" for k in MERGE_KEYS
                  if other["args"][k] != record["args"][k]]
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
