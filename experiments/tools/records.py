"""Reading values out of the experiments' JSON records by path: one syntax for the seed runner and the README table.

A path is dot-separated keys; a list is entered by selecting the one element
whose fields match, ``name[key=value,key2=value2]`` (values compared as text;
a dotted key reaches into the element, ``[size.T=128]``),
or by position, ``name[3]``::

    final.test.nats_per_char                       # char_lstm.py's results.json
    test_accuracy                                  # mnist_lstm.py's
    runs[cell=lstm,T=400].final_test               # long_range.py's
    results[cell=lstm,size.H=512,size.T=128].rows[impl=lstm_jax manual].median_ms   # benchmark.py's
    metrics[path=final.test.nats_per_char].mean    # seeds.py's summary

Dots inside brackets belong to the selector. A missing key, no match or more
than one match is a :class:`RecordError` naming the path and what was there.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

_PART = re.compile(r"^([^\[\]]+)?((?:\[[^\[\]]*\])*)$")


class RecordError(ValueError):
    """A path that does not lead to a value in a record."""


def split_path(path: str) -> list[str]:
    """``"a.b[x=1.5].c"`` -> ``["a", "b[x=1.5]", "c"]``: dots inside brackets do not split."""
    parts, depth, current = [], 0, ""
    for ch in path:
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            raise RecordError(f"unbalanced ']' in path {path!r}")
        current += ch
    if depth:
        raise RecordError(f"unbalanced '[' in path {path!r}")
    parts.append(current)
    if any(not p for p in parts):
        raise RecordError(f"empty key in path {path!r}")
    return parts


def _field(item: dict, key: str) -> Any:
    """``item[key]``, following dots (``size.T``); ``None`` where it is absent."""
    for part in key.split("."):
        if not isinstance(item, dict) or part not in item:
            return None
        item = item[part]
    return item


def _select(items: Any, selector: str, where: str) -> Any:
    if not isinstance(items, list):
        raise RecordError(f"{where}: [{selector}] selects from a list, found {type(items).__name__}")
    if selector.lstrip("-").isdigit():
        index = int(selector)
        if not -len(items) <= index < len(items):
            raise RecordError(f"{where}: index {index} out of range for a list of {len(items)}")
        return items[index]
    wanted = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            raise RecordError(f"{where}: selector term {term!r} is not key=value")
        wanted[key.strip()] = value.strip()
    matches = [x for x in items if isinstance(x, dict) and all(str(_field(x, k)) == v for k, v in wanted.items())]
    if len(matches) != 1:
        raise RecordError(f"{where}: [{selector}] matches {len(matches)} of {len(items)} entries (needs exactly 1)")
    return matches[0]


def lookup(record: Any, path: str) -> Any:
    """The value at ``path`` in ``record`` (see the module docstring for the syntax)."""
    value, done = record, []
    for part in split_path(path):
        m = _PART.match(part)
        if not m:
            raise RecordError(f"bad path component {part!r} in {path!r}")
        key, selectors = m.group(1), re.findall(r"\[([^\[\]]*)\]", m.group(2))
        if key is not None:
            where = ".".join(done) or "the record"
            if not isinstance(value, dict) or key not in value:
                close = difflib.get_close_matches(key, list(value), n=3) if isinstance(value, dict) else []
                have = (f"did you mean {' or '.join(map(repr, close))}?" if close else
                        f"has {sorted(value)[:12]}" if isinstance(value, dict) else f"a {type(value).__name__}")
                raise RecordError(f"{path}: no key {key!r} in {where} ({have})")
            value = value[key]
        done.append(part)
        for selector in selectors:
            value = _select(value, selector, ".".join(done))
    return value


def read_json(path: str | Path) -> Any:
    """A JSON file, or a :class:`RecordError` saying it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}: not JSON ({err})") from None
