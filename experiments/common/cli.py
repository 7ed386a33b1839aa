"""The experiments' shared command line: one spelling per flag, one TrainConfig builder, one error style.

Every flag more than one script offers is declared once, in :data:`FLAGS`, and
added to a parser by name (:func:`add_flag`, or a whole group:
:func:`add_model_flags`, :func:`add_training_flags`, :func:`add_output_flags`,
:func:`add_malloc_flag`). A script only chooses which of them it offers and its
own defaults and help. Every flag has one spelling; there are no aliases.

The training flags parse into the :class:`~lstm_jax.train.TrainConfig` field of
the same name (``--lr`` into ``learning_rate``, ``--no-progress`` into
``progress``), so :func:`train_config` builds the config from the parsed
arguments in one place, and a field TrainConfig refuses is reported with the
flag that set it (found by field, not by reading the message). :func:`run`
ends a script on a library error (:data:`LIBRARY_ERRORS`) with one line: the
library's message, plus for a checkpoint error the flags that choose the run
directory (:data:`ERROR_HINTS`). With ``--config FILE`` (scripts whose parser
is made with ``script=__file__``) the file's values are the defaults
(:mod:`experiments.common.config`).

List flags (``--cells``, ``--lengths``, ``--impls``, ...) take values separated
by spaces or commas, or both: ``--cells lstm gru`` == ``--cells lstm,gru``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import jax

from lstm_jax.distributed import multiprocess
from lstm_jax.cells import CELLS
from lstm_jax.train.checkpoint import CheckpointError
from lstm_jax.impls import LayerImpl, layer_impl
from lstm_jax.layers import count_params, hidden_for_params
from lstm_jax.models.spec import RecurrentSpec
from lstm_jax.precision import PRECISIONS, get_precision
from lstm_jax.runtime import add_malloc_argument, apply_malloc_argument
from lstm_jax.train import TensorBoardWriter, TrainConfig, TrainingDiverged

from . import config, fastest

__all__ = [
    "CELL_NAMES",
    "CLASSIC_CELLS",
    "ERROR_HINTS",
    "FLAGS",
    "LIBRARY_ERRORS",
    "Flag",
    "ListAction",
    "add_flag",
    "add_malloc_flag",
    "add_model_flags",
    "add_output_flags",
    "add_training_flags",
    "apply_malloc",
    "checkpoint_which",
    "choose_layer",
    "layer_from_args",
    "match_params",
    "make_parser",
    "metrics_writer",
    "report_stop",
    "run",
    "train_config",
]

#: ``--cell`` (the models: char_lstm, mnist_lstm) accepts every registered cell. ``--cells`` takes the
#: classic three: its scripts compare against Flax/torch cells or measure ``dL/dw_h``, which the min
#: cells do not have; a script that runs any cell widens it (``choices=CELL_NAMES``, long_range).
CELL_NAMES = tuple(CELLS)
CLASSIC_CELLS = ("lstm", "gru", "rnn")

#: What :func:`run` turns into a one-line ``error: ...`` exit instead of a traceback.
LIBRARY_ERRORS = (CheckpointError, TrainingDiverged, FileNotFoundError, ValueError)
#: What :func:`run` adds to a library error of this type: the flags that decide it, in the scripts' words.
ERROR_HINTS = {CheckpointError: "(--out is the run directory; --resume continues the run in it)"}

T = TypeVar("T")


class ListAction(argparse.Action):
    """``nargs="+"`` whose values may also be comma-separated; items converted by ``item_type``.

    ``choices`` is checked per item (argparse would check the raw strings).
    """

    def __init__(self, option_strings, dest, item_type: Callable[[str], Any] = str, choices=None, **kwargs):
        kwargs.setdefault("nargs", "+")
        super().__init__(option_strings, dest, **kwargs)
        self.item_type = item_type
        self.item_choices = choices

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for value in values:
            for text in value.split(","):
                if not text.strip():
                    continue
                try:
                    item = self.item_type(text.strip())
                except ValueError:
                    parser.error(f"{option_string}: invalid value {text!r}")
                if self.item_choices is not None and item not in self.item_choices:
                    parser.error(f"{option_string}: unknown {item!r} (choose from {', '.join(map(str, self.item_choices))})")
                items.append(item)
        setattr(namespace, self.dest, items)


@dataclasses.dataclass(frozen=True)
class Flag:
    """One shared flag: its spelling and argparse keywords (overridable per script)."""

    option: str
    kwargs: dict


def checkpoint_which(text: str) -> str | int:
    """``--which``: ``"best"``, ``"last"`` or a step number (as :func:`lstm_jax.train.checkpoint.load_checkpoint` takes it)."""
    return int(text) if text.isdigit() else text


def _list(item_type=str, **kwargs) -> dict:
    return {"action": ListAction, "item_type": item_type, **kwargs}


#: The shared flags by ``dest``. Training flags use TrainConfig's field names as dest.
FLAGS: dict[str, Flag] = {
    # -- model
    "cell": Flag("--cell", {"choices": CELL_NAMES, "default": "lstm", "help": "recurrent cell"}),
    "cells": Flag("--cells", _list(choices=CLASSIC_CELLS, default=list(CLASSIC_CELLS), help="recurrent cells to run")),
    "hidden": Flag("--hidden", {"type": int, "default": 128, "help": "hidden size H of every layer"}),
    "match_params": Flag("--match-params", {"choices": CELL_NAMES, "default": None, "metavar": "CELL",
                                            "help": "set --hidden to the largest hidden size at which this model "
                                            "has no more parameters than the same model with CELL at --hidden "
                                            "(compare cells at equal parameter count)"}),
    "layers": Flag("--layers", {"type": int, "default": 1, "help": "stacked recurrent layers"}),
    "dropout": Flag("--dropout", {"type": float, "default": 0.0, "help": "dropout between recurrent layers"}),
    "impl": Flag("--impl", {"default": "default", "help": "layer implementation (see lstm_jax.impls.IMPLS; 'scan' is "
                            "the reference); 'default': a fixed rule per backend and cell, 'auto': the fastest "
                            "measured here (experiments/common/fastest.py)"}),
    "impls": Flag("--impls", _list(help="layer implementations (see lstm_jax.impls.IMPLS)")),
    "precision": Flag("--precision", {"choices": ["default", "auto", *sorted(PRECISIONS)], "default": "default",
                                      "help": "matmul precision policy: fp32, or bf16 operands with float32 "
                                      "accumulation and float32 params/state (lstm_jax.precision); 'default': "
                                      "bf16 on a CPU with bf16 dot products, else fp32; 'auto': "
                                      "the faster one measured here"}),
    "init": Flag("--init", {"choices": ["standard", "chrono"], "default": "standard",
                            "help": "gate-bias init: the cell's own (LSTM forget bias 1) or chrono (keep-gate biases "
                            "log U(1, T - 1) for memory up to the sequence length T; Tallec & Ollivier 2018; lstm "
                            "and gru only)"}),
    "unroll": Flag("--unroll", {"type": int, "default": 1, "help": "lax.scan unroll factor"}),
    # -- data / problem size
    "batch_size": Flag("--batch-size", {"type": int, "default": 32, "help": "sequences per batch"}),
    "lengths": Flag("--lengths", _list(int, help="sequence lengths T")),
    "data_dir": Flag("--data-dir", {"default": None, "help": "data folder"}),
    "text_file": Flag("--text-file", {"default": None, "help": "UTF-8 text file"}),
    # -- training: TrainConfig fields
    "steps": Flag("--steps", {"type": int, "help": "training steps (length of the run and of the lr schedule)"}),
    "learning_rate": Flag("--lr", {"type": float, "help": "peak learning rate"}),
    "warmup_steps": Flag("--warmup-steps", {"type": int, "help": "linear learning-rate warmup steps"}),
    "end_lr_ratio": Flag("--end-lr-ratio", {"type": float, "help": "final / peak learning rate of the cosine decay"}),
    "weight_decay": Flag("--weight-decay", {"type": float, "help": "AdamW weight decay of the weight matrices"}),
    "clip_norm": Flag("--clip-norm", {"type": float, "help": "global gradient-norm clipping threshold"}),
    "log_every": Flag("--log-every", {"type": int, "help": "steps per logged training record"}),
    "eval_every": Flag("--eval-every", {"type": int, "help": "steps between evaluations"}),
    "checkpoint_every": Flag("--checkpoint-every", {"type": int, "help": "steps between checkpoints"}),
    "keep_checkpoints": Flag("--keep-checkpoints", {"type": int, "help": "latest checkpoints to keep (the best is "
                                                    "kept too)"}),
    "max_minutes": Flag("--max-minutes", {"type": float, "help": "wall-clock budget of each training run; stops "
                                          "with a checkpoint"}),
    "seed": Flag("--seed", {"type": int, "default": 0, "help": "seed of the initialisation, data order and dropout"}),
    "progress": Flag("--no-progress", {"action": "store_false", "help": "no progress bar"}),
    # -- output / run control
    "out": Flag("--out", {"default": None, "help": "output: run directory or JSON path"}),
    "tensorboard": Flag("--tensorboard", {"action": "store_true", "help": "also write the logged metrics as "
                                          "TensorBoard event files in <run directory>/tensorboard"}),
    "resume": Flag("--resume", {"action": "store_true", "help": "continue the run in --out from its latest checkpoint"}),
    "checkpoint": Flag("--checkpoint", {"default": None, "help": "run directory of a training run (its --out)"}),
    "which": Flag("--which", {"type": checkpoint_which, "default": "best", "help": "'best', 'last' or a step number"}),
    "figure_dir": Flag("--figure-dir", {"default": None, "help": "also copy the PNGs here"}),
    "quick": Flag("--quick", {"action": "store_true", "help": "tiny sizes, few repeats (smoke test)"}),
    "repeats": Flag("--repeats", {"type": int, "help": "timed repeats"}),
    "budget_minutes": Flag("--budget-minutes", {"type": float, "default": None,
                                                "help": "wall-clock budget: no new case starts after it"}),
}

TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout (usage examples); appends ``(default: X)`` where X says something."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
            or action.default == ""
        ):
            return text
        return text + " (default: %(default)s)"


def make_parser(doc: str | None, *, first_paragraph: bool = False, script: str | None = None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` described by the script's docstring (or its first paragraph).

    ``script``: the script's ``__file__``; gives the parser ``--config FILE`` (:mod:`experiments.common.config`).
    """
    description = doc.split("\n\n")[0] if (doc and first_paragraph) else doc
    # allow_abbrev=False: one spelling per flag (a prefix such as --warmup would be a hidden alias of --warmup-steps)
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, allow_abbrev=False)
    if script is not None:
        config.add_config_flag(parser, script)
    return parser


def add_flag(parser, dest: str, **overrides) -> argparse.Action:
    """Add the shared flag ``dest`` of :data:`FLAGS` to ``parser`` (or an argument group).

    ``overrides`` replace its argparse keywords (``default=``, ``help=``, ...).
    """
    flag = FLAGS[dest]
    return parser.add_argument(flag.option, dest=dest, **{**flag.kwargs, **overrides})


def add_model_flags(parser, names: Sequence[str], **defaults) -> argparse._ArgumentGroup:
    """A "model" group with the shared flags ``names`` (e.g. ``("cell", "hidden")``); ``defaults``: dest -> default."""
    group = parser.add_argument_group("model")
    for name in names:
        add_flag(group, name, **({"default": defaults[name]} if name in defaults else {}))
    return group


def add_training_flags(parser, defaults: dict[str, Any], *, helps: dict[str, str] | None = None):
    """A "training" group with one flag per TrainConfig field in ``defaults`` (field -> the script's default).

    Fields left out are not flags: the script sets them in :func:`train_config`.
    ``helps``: field -> help text where the shared one does not fit the script.
    """
    group = parser.add_argument_group("training")
    for field, default in defaults.items():
        if field not in TRAIN_FIELDS:
            raise ValueError(f"{field!r} is not a TrainConfig field")
        extra = {"help": helps[field]} if helps and field in helps else {}
        add_flag(group, field, default=default, **extra)
    return group


def add_output_flags(parser, names: Sequence[str] = ("out",), **overrides: dict) -> argparse._ArgumentGroup:
    """An "output" group with the shared flags ``names``; ``overrides``: dest -> argparse keywords."""
    group = parser.add_argument_group("output")
    for name in names:
        add_flag(group, name, **overrides.get(name, {}))
    return group


def add_malloc_flag(parser) -> None:
    """``--malloc {tuned,default}`` (:func:`lstm_jax.runtime.add_malloc_argument`); act on it with :func:`apply_malloc`."""
    add_malloc_argument(parser.add_argument_group("process"))


def apply_malloc(args) -> dict:
    """Apply ``--malloc`` before the first JAX computation; returns what was done (for logs and JSON)."""
    return apply_malloc_argument(args)


def train_config(args: argparse.Namespace, **fixed) -> TrainConfig:
    """The :class:`~lstm_jax.train.TrainConfig` of a run: every field parsed from the training flags
    (see :func:`add_training_flags`), then ``fixed`` (fields the script sets itself or derives,
    e.g. ``checkpoint_every=args.eval_every``); fields in neither keep TrainConfig's default."""
    values = {k: v for k, v in vars(args).items() if k in TRAIN_FIELDS}
    values.update(fixed)
    config = TrainConfig(**values)
    try:
        config.validate()
    except ValueError:
        for field in values:  # the field TrainConfig refuses, found by validating it alone
            try:
                TrainConfig(**{field: values[field]}).validate()
            except ValueError as e:  # a flag set it (every training flag is in FLAGS), or the script did
                raise ValueError(f"{FLAGS[field].option}: {e}" if field not in fixed else str(e)) from None
        raise
    return config


def metrics_writer(args: argparse.Namespace, out: str | Path) -> contextlib.AbstractContextManager[TensorBoardWriter | None]:
    """``--tensorboard``: a context giving ``fit``'s ``metrics`` callback, a
    :class:`~lstm_jax.train.TensorBoardWriter` into ``<out>/tensorboard`` (closed on leaving);
    without the flag it gives ``None``."""
    if not getattr(args, "tensorboard", False):
        return contextlib.nullcontext(None)
    return TensorBoardWriter(Path(out) / "tensorboard")


def report_stop(result) -> None:
    """After :func:`~lstm_jax.train.fit`: how to continue a run its time budget stopped."""
    if result.stop_reason == "time budget":
        print(f"stopped by --max-minutes at step {result.step}; the same command with --resume continues the run")


def match_params(args: argparse.Namespace, make_params: Callable[[str, int], Any]) -> None:
    """``--match-params CELL``: replace ``args.hidden`` by the parameter-matched hidden size of ``args.cell``.

    ``make_params(cell, hidden)`` builds the script's whole model (it is only
    traced). Sets ``args.matched`` to ``{"cell", "hidden", "params"}`` of the
    model matched against. A no-op without the flag.
    """
    if getattr(args, "match_params", None) is None:
        return
    target = count_params(jax.eval_shape(lambda: make_params(args.match_params, args.hidden)))
    args.matched = {"cell": args.match_params, "hidden": args.hidden, "params": target}
    args.hidden = hidden_for_params(lambda h: make_params(args.cell, h), target)
    print(f"--match-params {args.match_params}: hidden {args.hidden} (a {args.match_params} model at hidden "
          f"{args.matched['hidden']} has {target:,} params)", flush=True)


def choose_layer(cell: str, impl: str, precision: str, *, T: int, B: int, I: int, H: int) -> tuple[LayerImpl, dict]:
    """The layer implementation ``impl`` with the policy ``precision`` bound (and said on stdout), and the choice.

    ``default`` in either follows a fixed rule, ``auto`` is resolved by measuring one layer of ``cell`` at
    ``T, B, I, H`` (:func:`experiments.common.fastest.choose`, whose record,
    with its timings, is the second value: it goes into the run's results.json); process 0 decides for all.
    """
    choice = fastest.choose(cell, T, B, I, H, impl=impl, precision=precision)
    layer = layer_impl(choice["impl"], precision=choice["precision"])
    print(f"layers: {fastest.describe(choice)} [{get_precision(layer.precision).describe()}]", flush=True)
    return layer, choice


def layer_from_args(args: argparse.Namespace, *, T: int, B: int, I: int, H: int) -> LayerImpl:
    """:func:`choose_layer` for ``--cell``, ``--impl`` and ``--precision``; ``args.impl`` / ``args.precision``
    are then set to what was chosen (so the run's metadata records it), ``args.layer_choice`` to the choice, with
    ``"asked"``: the ``impl`` and ``precision`` the command line or config asked for (e.g. ``default``, ``auto``)."""
    asked = {"impl": args.impl, "precision": getattr(args, "precision", fastest.RULE)}
    layer, choice = choose_layer(args.cell, asked["impl"], asked["precision"], T=T, B=B, I=I, H=H)
    args.impl, args.precision, args.layer_choice = choice["impl"], choice["precision"], {**choice, "asked": asked}
    return layer


def recurrent_spec(args: argparse.Namespace) -> RecurrentSpec:
    """The :class:`~lstm_jax.models.spec.RecurrentSpec` of a run's model flags (after :func:`layer_from_args`
    resolved ``--impl`` and ``--precision``): what the models take and the checkpoints record."""
    return RecurrentSpec(cell=args.cell, hidden=args.hidden, layers=getattr(args, "layers", 1),
                         bidirectional=bool(getattr(args, "bidirectional", False)), impl=args.impl,
                         precision=getattr(args, "precision", "fp32"), dropout=getattr(args, "dropout", 0.0),
                         unroll=getattr(args, "unroll", 1))


def run(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], T], argv: Sequence[str] | None) -> T:
    """Parse ``argv`` (and ``--config``) and call ``main(args)``; a library error exits with one line.

    The :data:`LIBRARY_ERRORS` (bad values, missing or damaged checkpoints,
    divergence, missing files) end the program with ``error: <message>`` (exit
    status 1, via ``SystemExit``), followed by the :data:`ERROR_HINTS` of its type.
    Ctrl-C outside training ends it with one line and status 130, no traceback.
    """
    args = config.parse_args(parser, argv)  # with --config FILE's values as defaults where the script offers it
    try:
        return main(args)
    except KeyboardInterrupt:  # Ctrl-C outside fit (inside, fit stops at an agreed step with a checkpoint)
        who = f"process {jax.process_index()}: " if multiprocess.coordinator() else ""  # no JAX start-up
        print(f"{who}interrupted (SIGINT) outside training; no checkpoint written by it", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGINT) from None
    except LIBRARY_ERRORS as e:
        hint = next((h for kind, h in ERROR_HINTS.items() if isinstance(e, kind)), None)
        raise SystemExit(f"error: {e}" + (f" {hint}" if hint else "")) from None
