"""LSTM gate activity on text: heatmaps of chosen units' gates and cell state, characters on the axis.

Loads a character model trained by ``experiments/char_lm/char_lstm.py`` (``--checkpoint``:
its ``--out`` directory; params and vocabulary come from
:func:`lstm_jax.train.checkpoint.load_checkpoint`), runs it over a stretch of text
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
slowest-forgetting unit whose cell state still moves (see
:func:`experiments.analysis.gate_units.choose_units`;
the reasons are written to ``gate_activity.json``).

Example::

    python -m experiments.char_lm.char_lstm train --max-minutes 9 \\
        --hidden 128 --seq-len 100 --steps 3000 --out runs/char_lstm_gates
    python -m experiments.analysis.gate_activity --checkpoint runs/char_lstm_gates --out runs/gate_activity
"""

from __future__ import annotations

import json
from pathlib import Path


import numpy as np

from experiments.common import cli
from experiments.analysis.analysis_figures import plot_cell_text, plot_heatmap
from experiments.common.figures import copy_figures
from experiments.analysis.gate_units import choose_units, text_stretch
from lstm_jax.analysis import lstm_gate_trace
from lstm_jax.train.checkpoint import load_checkpoint
from lstm_jax.data.text import TINY_SHAKESPEARE_PATH, Vocab
from lstm_jax.models.char_model import encode_inputs, spec_from_config

def build_parser():
    p = cli.make_parser(__doc__, script=__file__)
    cli.add_flag(p, "checkpoint", required=True, help="run directory of experiments/char_lm/char_lstm.py (its --out)")
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


def checkpoint_cell(meta: dict) -> str:
    """The cell of a char_lstm checkpoint, as its spec records it."""
    return spec_from_config(meta.get("model")).cell


def gate_activity(args):
    params, meta = load_checkpoint(args.checkpoint, args.which)
    if "vocab" not in meta:
        raise SystemExit(f"error: {args.checkpoint} has no vocabulary in its metadata (not written by char_lstm.py?)")
    cell = checkpoint_cell(meta)
    if cell != "lstm":
        raise SystemExit(f"error: the checkpoint holds a {cell} model; gates exist only for an LSTM")
    vocab = Vocab.from_json(meta["vocab"])
    stack = list(params["stack"])
    if args.text_file is None:
        args.text_file = str(TINY_SHAKESPEARE_PATH)  # the copy shipped with the package
    text = Path(args.text_file).read_text(encoding="utf-8")
    start, chunk = text_stretch(text, args.offset, args.warmup_chars, max(args.length, args.text_length))
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
