"""LSTM gate activity on text: heatmaps of chosen units' gates and cell state, characters on the axis.

Loads a character model trained by ``experiments/training/char_lstm.py`` (``--checkpoint``:
its ``--out`` directory; params and vocabulary come from
:func:`lstm_jax.checkpoint.load_checkpoint`), runs it over a stretch of text
and records every step's gates with :func:`lstm_jax.analysis.lstm_gate_trace`.

The model first reads ``--warmup-chars`` characters before the displayed stretch,
so the state is a "running" state, not the zero state.

Figures (in ``--out``):

* ``gate_activity.png``: for each chosen unit, four rows over the stretch --
  input gate i, forget gate f, output gate o (0..1) and tanh(c), the squashed
  cell state (-1..1) -- with the characters along the x axis.
* ``cell_text.png``: Karpathy-style view of one unit: the text laid out in
  lines, each character's background colored by that unit's tanh(c).

Units (``--units``): explicit indices, or ``auto``: over the ``--text-length``
stretch, the unit whose tanh(c) correlates most with the position in the line,
the one that correlates most with "this line is a speaker name" (e.g.
``VINCENTIO:``), the one that correlates most with spaces, and the
slowest-forgetting unit whose cell state still moves (see :func:`choose_units`;
the reasons are written to ``gate_activity.json``).

Example::

    python experiments/training/char_lstm.py train --max-minutes 9 \\
        --hidden 128 --seq-len 100 --steps 3000 --out runs/char_lstm_gates
    python experiments/training/gate_activity.py --checkpoint runs/char_lstm_gates --out runs/gate_activity
"""

from __future__ import annotations

import json
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a file: make the repository importable
    import _bootstrap  # noqa: F401

import numpy as np

from experiments.common import cli
from experiments.common.analysis_figures import plot_cell_text, plot_heatmap
from experiments.common.figures import copy_figures
from lstm_jax.analysis import lstm_gate_trace
from lstm_jax.checkpoint import load_checkpoint
from lstm_jax.data.text import TINY_SHAKESPEARE_PATH, Vocab
from lstm_jax.models.char_model import encode_inputs, infer_cell

def text_features(text: str) -> dict[str, np.ndarray]:
    """Simple per-character properties of the text a unit's cell state may track."""
    pos, in_name, cur = [], [], 0
    lines = text.split("\n")
    for li, line in enumerate(lines):
        name_line = line.strip().endswith(":") and line.strip()[:-1].replace(" ", "").isupper()
        chars = line + ("\n" if li < len(lines) - 1 else "")
        for k, _ in enumerate(chars):
            pos.append(k)
            in_name.append(1.0 if name_line else 0.0)
    return {
        "position in line": np.array(pos[: len(text)], float),
        "speaker-name line": np.array(in_name[: len(text)], float),
        "space": np.array([c == " " for c in text], float),
    }


def correlations(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson correlation of every unit's values ``(T, H)`` with a feature ``(T,)``."""
    v = values - values.mean(axis=0)
    f = feature - feature.mean()
    denom = np.sqrt((v**2).sum(axis=0) * (f**2).sum()) + 1e-12
    return (v * f[:, None]).sum(axis=0) / denom


def choose_units(layer: dict, text: str, k: int = 4) -> tuple[list[int], dict]:
    """``auto`` units: for each :func:`text_features` feature the unit whose tanh(c)
    correlates most (in absolute value) with it, then fill up to ``k`` with the
    highest-mean-forget-gate units among those whose tanh(c) actually varies
    (std > 0.1), i.e. slow "memory" units that are not stuck at saturation."""
    tc = np.tanh(np.asarray(layer["cell"]))
    feats = text_features(text)
    units, why = [], {}
    for name, f in feats.items():
        r = correlations(tc, f)
        order = np.argsort(-np.abs(r))
        u = int(next(u for u in order if u not in units))
        units.append(u)
        why[u] = f"tanh(c) vs {name}: r = {r[u]:+.2f}"
    f_mean = np.asarray(layer["forget"]).mean(axis=0)
    moving = tc.std(axis=0) > 0.1
    for u in np.argsort(-f_mean):
        if len(units) >= k:
            break
        if moving[u] and int(u) not in units:
            units.append(int(u))
            why[int(u)] = f"slow memory unit: mean f = {f_mean[u]:.2f}, std tanh(c) = {tc[:, u].std():.2f}"
    return units[:k], why


def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    cli.add_flag(p, "checkpoint", required=True, help="run directory of experiments/training/char_lstm.py (its --out)")
    cli.add_flag(p, "which")
    cli.add_flag(p, "text_file",
                 help="text to run over (default: Tiny Shakespeare, shipped in lstm_jax/data/corpora)")
    p.add_argument("--offset", type=float, default=0.96,
                   help="where the stretch starts: a fraction of the file (moved to the next line start) "
                        "or an absolute character index if >= 1; the default lies in the held-out tail")
    p.add_argument("--length", type=int, default=110, help="characters in the gate heatmap")
    p.add_argument("--text-length", type=int, default=600, help="characters in the cell_text figure")
    p.add_argument("--warmup-chars", type=int, default=300,
                   help="characters read before the stretch")
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--units", nargs="+", default=["auto"])
    p.add_argument("--text-unit", type=int, default=None,
                   help="unit shown in cell_text.png (default: the first chosen unit)")
    cli.add_output_flags(p, ("out", "figure_dir"), out={"default": "runs/gate_activity", "help": "output folder"})
    return p


def checkpoint_cell(params, meta: dict) -> str:
    """The cell of a char_lstm checkpoint, as recorded in its metadata (shapes only for a record without it)."""
    return meta.get("model", {}).get("cell") or infer_cell(params)


def gate_activity(args):
    params, meta = load_checkpoint(args.checkpoint, args.which)
    if "vocab" not in meta:
        raise SystemExit(f"error: {args.checkpoint} has no vocabulary in its metadata (not written by char_lstm.py?)")
    cell = checkpoint_cell(params, meta)
    if cell != "lstm":
        raise SystemExit(f"error: the checkpoint holds a {cell} model; gates exist only for an LSTM")
    vocab = Vocab.from_json(meta["vocab"])
    stack = list(params["stack"])
    if args.text_file is None:
        args.text_file = str(TINY_SHAKESPEARE_PATH)  # the copy shipped with the package
    text = Path(args.text_file).read_text(encoding="utf-8")
    start = int(args.offset) if args.offset >= 1 else int(args.offset * len(text))
    start = text.index("\n", start) + 1 if "\n" in text[start:] else start
    span = max(args.length, args.text_length)
    if start - args.warmup_chars < 0 or start + span > len(text):
        raise SystemExit("error: the stretch (with warmup) does not fit in the text; change --offset")
    chunk = text[start - args.warmup_chars : start + span]
    ids = vocab.encode(chunk)
    trace = lstm_gate_trace(stack, encode_inputs(params, ids))  # single sequence: (T, H) arrays
    layer = {k: np.asarray(v)[args.warmup_chars :] for k, v in trace[args.layer].items()}
    shown = chunk[args.warmup_chars :]

    heat = {k: v[: args.length] for k, v in layer.items()}
    long = {k: v[: args.text_length] for k, v in layer.items()}
    if args.units == ["auto"]:
        units, why = choose_units(long, shown[: args.text_length])
    else:
        units, why = [int(u) for u in args.units], {}
    H = layer["cell"].shape[1]
    if any(not 0 <= u < H for u in units):
        raise SystemExit(f"error: units must lie in [0, {H})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = meta.get("step")
    desc = f"{len(stack)}x LSTM H={H}, checkpoint step {step}, layer {args.layer % len(stack)}"
    plot_heatmap(out / "gate_activity.png", shown[: args.length], heat, units,
                 f"gates and cell state of units {units} ({desc}); held-out text of {Path(args.text_file).parent.name}")
    # text figure: the most active unit of the heatmap set over the long stretch
    c_all = np.tanh(long["cell"])
    text_unit = units[0] if args.text_unit is None else args.text_unit
    plot_cell_text(out / "cell_text.png", shown[: args.text_length], c_all[:, text_unit],
                   f"tanh(c) of unit {text_unit} (red > 0, blue < 0); {desc}")
    summary = {
        "checkpoint": str(args.checkpoint), "step": step, "units": units, "text_unit": text_unit,
        "start": start, "why": {int(u): w for u, w in why.items()}, "mean_forget": {int(u): float(heat["forget"][:, u].mean()) for u in units},
        "mean_forget_all_units": float(heat["forget"].mean()),
        "mean_input_all_units": float(heat["input"].mean()),
        "mean_output_all_units": float(heat["output"].mean()),
        "val_metrics": {k: v for k, v in meta.items() if k.startswith("val")},
        "args": vars(args),  # the resolved arguments; "config": the --config file, if any
    }
    (out / "gate_activity.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    copy_figures(out, args.figure_dir, ("gate_activity.png", "cell_text.png"))


def main(argv=None):
    return cli.run(build_parser(), gate_activity, argv)


if __name__ == "__main__":
    main()
