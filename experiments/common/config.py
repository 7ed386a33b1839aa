"""Run configs as TOML files: ``--config configs/NAME.toml``, flags on the command line override the file.

A config is flat: its keys are the script's argparse ``dest`` names (``hidden``,
``batch_size``, ``learning_rate``, ``max_minutes``; the names in ``--help``
with dashes as underscores, except ``--lr`` -> ``learning_rate`` and
``--no-progress`` -> ``progress``), plus one required key naming the script
the config is for::

    script = "experiments.char_lm.char_lstm"
    layers = 2
    hidden = 512
    learning_rate = 3e-3

    python -m experiments.char_lm.char_lstm --config configs/shakespeare_30min.toml --seed 1

:func:`parse_args` parses the command line once for ``--config``, validates the
file against the parser (an unknown key, a value of the wrong type or outside a
flag's choices, or a config for another script is refused in one line naming
the file and the key), makes its values the parser's defaults and parses again,
so a flag given on the command line wins. A script may name flags that set the
same thing two ways (``parser.config_alternatives``, e.g. ``[("steps", "epochs")]``):
one of them on the command line also replaces the file's value for the others, so
``--steps 300`` shortens a config that sets ``epochs``. ``args.config`` holds the file's path,
so ``vars(args)`` (which every script records) is the resolved config and says
where it came from.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

__all__ = ["ConfigError", "REPO_ROOT", "add_config_flag", "check_options", "load_config", "parse_args", "script_name",
           "validate_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: Keys of a config that are not flags.
SCRIPT_KEY = "script"
#: Parser dests a config may not set: they are not part of a run's definition.
_NOT_CONFIGURABLE = ("help", "config")


class ConfigError(ValueError):
    """A config file that does not fit its script (the message names the file and the key)."""


def script_name(file: str | Path) -> str:
    """The dotted module name of a script from its ``__file__``: ``experiments.char_lm.char_lstm``."""
    path = Path(file).resolve().with_suffix("")
    return ".".join(path.relative_to(REPO_ROOT).parts)


def add_config_flag(parser: argparse.ArgumentParser, file: str | Path) -> None:
    """Give ``parser`` a ``--config PATH`` flag for the script at ``file`` (pass ``__file__``)."""
    parser.add_argument("--config", default=None, metavar="PATH",
                        help="TOML file of flag values (keys: the flags' dest names, e.g. batch_size, "
                             "learning_rate; see configs/); flags given here override it")
    parser.config_script = script_name(file)


def load_config(path: str | Path) -> dict[str, Any]:
    """The TOML file at ``path`` as a dict; ``ConfigError`` naming the file if it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _check_scalar(value, action: argparse.Action, item_type, where: str):
    """``value`` converted as the flag would convert its text; ``ConfigError`` if its TOML type does not fit."""
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a single value, got {type(value).__name__}")
    if item_type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
    elif item_type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value, want = (float(value) if ok else value), "a number"
    elif item_type in (None, str):
        ok, want = isinstance(value, str), "a string"
    else:  # a converter such as checkpoint_which: give it the text the command line would
        if isinstance(value, bool):
            ok, want = False, "a string or a number"
        else:
            try:
                value, ok = item_type(str(value)), True
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: {value!r} is not valid: {e}") from None
    if not ok:
        raise ConfigError(f"{where}: expected {want}, got {type(value).__name__} {value!r}")
    choices = getattr(action, "item_choices", None) or action.choices
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


def _check_value(value, action: argparse.Action, where: str):
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    item_type = getattr(action, "item_type", None) or action.type
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if action.nargs == "+" and not value:
            raise ConfigError(f"{where}: expected a non-empty list")
        return [_check_scalar(v, action, item_type, where) for v in value]
    return _check_scalar(value, action, item_type, where)


def validate_config(parser: argparse.ArgumentParser, config: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``config`` checked against ``parser`` (and its ``config_script``): the values to set as defaults.

    Raises :class:`ConfigError` (one line naming ``path`` and the key) for a missing or wrong ``script``,
    a key that is no flag of this parser, or a value of the wrong type or outside the flag's choices.
    """
    expected = getattr(parser, "config_script", None)
    script = config.get(SCRIPT_KEY)
    if script is None:
        raise ConfigError(f"{path}: no 'script' key (e.g. script = \"{expected}\")")
    if script != expected:
        raise ConfigError(f"{path}: a config for {script}, not for {expected}")
    actions = {a.dest: a for a in parser._actions if a.dest not in _NOT_CONFIGURABLE}
    values = {}
    for key, value in config.items():
        if key == SCRIPT_KEY:
            continue
        if key not in actions:
            raise ConfigError(f"{path}: unknown key {key!r} (not a flag of {expected}; keys are the flags' dest "
                              "names, e.g. batch_size for --batch-size)")
        values[key] = _check_value(value, actions[key], f"{path}: key {key!r}")
    return values


def _option_names(argv: Sequence[str] | None) -> list[str]:
    """The option part (before any ``=``) of each token of ``argv`` up to a bare ``--``: after it are values."""
    names = []
    for token in sys.argv[1:] if argv is None else argv:
        if token == "--":
            break
        names.append(token.split("=", 1)[0])
    return names


def check_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> None:
    """``SystemExit`` (one line naming it) at the first ``--option`` in ``argv`` that ``parser`` does not define.

    Checked before argparse parses: otherwise a removed flag's value can reach a positional argument first
    (``char_lstm --warmup 5`` would fail as "argument mode: invalid choice: '5'", naming neither the flag nor
    the cause). Tokens after a bare ``--`` are values, not options.
    """
    for option in _option_names(argv):
        if option.startswith("--") and option not in parser._option_string_actions:
            parser.exit(2, f"error: unknown option {option} ({parser.prog} --help lists the options)\n")


def _command_line_dests(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` of every option given in ``argv`` (up to a bare ``--``)."""
    actions = parser._option_string_actions
    return {actions[name].dest for name in _option_names(argv) if name in actions}


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--config``'s values as defaults; ``SystemExit`` (one line) on a bad file
    or an unknown option (:func:`check_options`)."""
    check_options(parser, argv)
    if getattr(parser, "config_script", None) is None:
        return parser.parse_args(argv)
    pre = argparse.ArgumentParser(add_help=False)  # only --config: the script's required flags may be in the file
    pre.add_argument("--config", default=None)
    first, _ = pre.parse_known_args(argv)
    if first.config is not None:
        try:
            values = validate_config(parser, load_config(first.config), first.config)
        except ConfigError as e:
            parser.exit(2, f"error: {e}\n")
        given = _command_line_dests(parser, argv)
        for group in getattr(parser, "config_alternatives", ()):  # the command line's way replaces the file's
            if given & set(group):
                values = {k: v for k, v in values.items() if k not in group or k in given}
        parser.set_defaults(**values)
        for action in parser._actions:  # a required flag the file sets is no longer required on the command line
            if action.dest in values:
                action.required = False
    return parser.parse_args(argv)
