"""Learning curves of several runs in one figure, read from their ``metrics.jsonl``.

Every training script writes ``OUT/metrics.jsonl`` (one JSON object per line:
``"kind": "train"`` rows with ``step``, ``elapsed_s`` and the training metrics,
``"kind": "eval"`` rows with ``step`` and the validation metrics). This draws one
metric of each run against the step or against the minutes of training, so runs
made on different days, machines or code paths compare on the axis that matters
for a time budget::

    python -m experiments.tools.curves results/fmnist_pixels/lstm1x128_60min results/fmnist_pixels/onednn_60min \\
        --labels "manual, one core (2026-12-03)" "onednn, two cores (2026-12-07)" \\
        --metric val_accuracy --x minutes --budget-minutes 60 --target 0.90 \\
        --out docs/figures/fmnist_pixels_curves.png

A run is a directory holding ``metrics.jsonl`` or the file itself. ``--x minutes``
places an evaluation at the training time of the last training row at or before
its step (``elapsed_s`` counts from the start of the run, evaluations included).
Beside the figure, ``OUT`` with the suffix ``.json`` holds the plotted points, so
the figure's numbers can be read and checked without the picture. A run without
the metric, or a file that is not JSON lines, is an error naming it.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from experiments.common import cli
from experiments.common.figures import pyplot, save_figure
from experiments.tools.records import RecordError

X_AXES = ("step", "minutes")


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (``run``: the file or its directory)."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise RecordError(f"{path}: no such file (a run directory holds metrics.jsonl)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{number}: not a JSON line ({err.msg})") from None
        if not isinstance(row, dict):
            raise RecordError(f"{path}:{number}: a metrics row is a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def curve(rows: list[dict], metric: str, x: str = "step", *, where: str = "run") -> list[tuple[float, float]]:
    """``[(x, value)]`` of ``metric`` over the rows that have it, ``x`` the step or the minutes of training."""
    if x not in X_AXES:
        raise RecordError(f"x is one of {X_AXES}, got {x!r}")
    points = [(row["step"], row[metric]) for row in rows if metric in row and row[metric] is not None]
    if not points:
        names = sorted({k for row in rows for k in row} - {"kind", "step"})
        raise RecordError(f"{where}: no {metric!r} in its metrics (has {names})")
    if x == "step":
        return [(float(s), float(v)) for s, v in points]
    clock = sorted((row["step"], row["elapsed_s"]) for row in rows if "elapsed_s" in row)
    if not clock:
        raise RecordError(f"{where}: no elapsed_s in its metrics, so no minutes axis (use --x step)")
    steps = [s for s, _ in clock]
    out = []
    for s, v in points:
        i = bisect.bisect_right(steps, s) - 1  # the last training row at or before this step
        out.append(((clock[i][1] if i >= 0 else 0.0) / 60.0, float(v)))
    return out


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("runs", nargs="+", help="run directories (or their metrics.jsonl)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: the paths)")
    p.add_argument("--metric", default="val_loss", help="a key of the metrics rows, e.g. val_accuracy, val_loss, loss")
    p.add_argument("--x", choices=X_AXES, default="step", help="horizontal axis")
    p.add_argument("--budget-minutes", type=float, default=None, help="a vertical line at this time (--x minutes)")
    p.add_argument("--target", type=float, default=None, help="a horizontal line at this value")
    p.add_argument("--title", default=None)
    p.add_argument("--out", required=True, help="the figure (PNG); the plotted points go to the same name .json")
    return p


def curves(args) -> dict:
    labels = args.labels or [str(r) for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"error: --labels gives {len(labels)} labels for {len(args.runs)} runs")
    if args.budget_minutes is not None and args.x != "minutes":
        raise SystemExit("error: --budget-minutes needs --x minutes")
    try:
        series = {label: curve(read_metrics(run), args.metric, args.x, where=str(run))
                  for label, run in zip(labels, args.runs)}
    except RecordError as err:
        raise SystemExit(f"error: {err}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"metric": args.metric, "x": args.x, "runs": [str(r) for r in args.runs],
              "budget_minutes": args.budget_minutes, "target": args.target,
              "series": {label: [list(p) for p in points] for label, points in series.items()}}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    plt = pyplot(out)
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, points in series.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        if args.budget_minutes is not None:
            ax.axvline(args.budget_minutes, color="gray", linestyle=":", label=f"budget {args.budget_minutes:g} min")
        if args.target is not None:
            ax.axhline(args.target, color="gray", linestyle="--", label=f"target {args.target:g}")
        ax.set_xlabel("training minutes" if args.x == "minutes" else "step")
        ax.set_ylabel(args.metric)
        ax.set_title(args.title or f"{args.metric} by {args.x}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(plt, fig, out, dpi=110)
    for label, points in series.items():
        x, v = points[-1]
        print(f"{label}: {args.metric} {v:.4g} at {args.x} {x:.4g} (last of {len(points)} points)")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return record


def main(argv=None):
    return cli.run(build_parser(), curves, argv)


if __name__ == "__main__":
    main()
