"""The full results table of docs/results.md, generated from the runs' JSON files so that it cannot drift from them.

The rows are declared in a manifest (default ``results/glance.json``), a JSON
list of entries::

    {"experiment": "Tiny Shakespeare, 2xLSTM-512, 30 min, 3 seeds",
     "file": "results/char_30min_reg/lstm/seeds.json",
     "config": "configs/shakespeare_30min.toml",
     "values": {"test": "metrics[path=final.test.nats_per_char].mean",
                "std": "metrics[path=final.test.nats_per_char].std"},
     "result": "test {test:.3f} ± {std:.3f} nats/char",
     "target": "≤ 1.50 in 30 min",
     "goal": {"value": "test", "max": 1.50},
     "section": "[char LM](char_lm.md#the-lstm-512-in-30-minutes-3-seeds)"}

``file`` and ``config`` are paths from the repository root (the table links
them relative to the page it is written into); ``section`` is a Markdown link
as it should appear on that page. ``values`` maps names to paths into the file
(:mod:`experiments.tools.records`), or to ``{"min" | "max" | "mean": [paths]}``
or ``{"ratio": [numerator, denominator]}``; ``result`` is a :meth:`str.format`
template over them; ``goal`` (optional) says which value must be at most
``max`` / at least ``min`` for the "met" column; ``config`` (optional) is the
config file that reproduces the run. The table replaces the text between the
markers ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` of
the page::

    python -m experiments.tools.results_table              # rewrite docs/results.md's table from results/glance.json
    python -m experiments.tools.results_table --check      # exit 1 if the page's table differs (the test suite runs this)
    python -m experiments.tools.results_table --print      # print the table only

A missing file or path is an error naming the entry, not an empty cell.
"""

from __future__ import annotations

import os
from pathlib import Path


from experiments.common import cli
from experiments.common.harness import REPO_ROOT
from experiments.tools.records import RecordError, lookup, read_json

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
REQUIRED = ("experiment", "file", "values", "result", "target", "section")


OPS = {"min": min, "max": max, "mean": lambda xs: sum(xs) / len(xs), "ratio": lambda xs: xs[0] / xs[1]}


def value(record, spec):
    """A path's value, or an :data:`OPS` entry over several paths' values."""
    if isinstance(spec, str):
        return lookup(record, spec)
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in OPS):
        raise RecordError(f"a value is a path or one of {{{', '.join(OPS)}: [paths]}}, got {spec!r}")
    (op, paths), = spec.items()
    if not isinstance(paths, list) or not paths or (op == "ratio" and len(paths) != 2):
        raise RecordError(f"{op} needs a list of paths{' (two)' if op == 'ratio' else ''}, got {paths!r}")
    return OPS[op]([lookup(record, p) for p in paths])


def link(path: str, root: Path, page_dir: Path) -> str:
    """A Markdown link to ``path`` (relative to ``root``) as seen from a page in ``page_dir``."""
    target = os.path.relpath(Path(root) / path, Path(page_dir)).replace(os.sep, "/")
    return f"[{Path(path).name}]({target})"


def entry_row(entry: dict, root: Path, page_dir: Path | None = None) -> str:
    """One markdown row for a manifest entry (its values read from its file under ``root``;
    links relative to ``page_dir``, by default ``root``)."""
    page_dir = root if page_dir is None else page_dir
    name = entry.get("experiment", "?")
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise RecordError(f"manifest entry {name!r} lacks {missing}")
    record = read_json(root / entry["file"])
    try:
        values = {k: value(record, spec) for k, spec in entry["values"].items()}
    except RecordError as err:
        raise RecordError(f"{name!r}: {entry['file']}: {err}") from None
    try:
        result = entry["result"].format(**values)
    except (KeyError, ValueError, TypeError) as err:
        raise RecordError(f"{name!r}: result template {entry['result']!r} does not fit the values {values}: {err}") from None
    met = ""
    goal = entry.get("goal")
    if goal:
        v = values.get(goal.get("value"))
        if not isinstance(v, (int, float)):
            raise RecordError(f"{name!r}: goal value {goal.get('value')!r} is {v!r}, not a number")
        ok = (goal.get("max") is None or v <= goal["max"]) and (goal.get("min") is None or v >= goal["min"])
        met = "met" if ok else "**not met**"
    config = entry.get("config")
    if config is not None and not (Path(root) / config).is_file():
        raise RecordError(f"{name!r}: config {config} does not exist")
    config_cell = link(config, root, page_dir) if config else "–"
    source = link(entry["file"], root, page_dir)
    return f"| {name} | {result} | {entry['target']} | {met} | {entry['section']} | {config_cell} | {source} |"


def render(manifest: list, root: Path, page_dir: Path | None = None) -> str:
    """The whole table (header and one row per manifest entry), links relative to ``page_dir``."""
    if not isinstance(manifest, list) or not manifest:
        raise RecordError("the manifest must be a non-empty JSON list of entries")
    lines = ["| experiment | result | target | | section | config | from |", "|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [entry_row(e, root, page_dir) for e in manifest])


def replace_table(page: str, table: str) -> str:
    """``page`` with the text between the markers replaced by ``table``."""
    if page.count(START) != 1 or page.count(END) != 1 or page.index(START) > page.index(END):
        raise RecordError(f"the page needs exactly one {START} ... {END} pair, in that order")
    head, rest = page.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True)
    p.add_argument("--manifest", default=str(REPO_ROOT / "results" / "glance.json"), help="the rows (JSON list)")
    p.add_argument("--doc", default=str(REPO_ROOT / "docs" / "results.md"), help="the page whose table to update")
    p.add_argument("--root", default=str(REPO_ROOT), help="directory the entries' file paths are relative to")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare; exit 1 if the page's table differs")
    mode.add_argument("--print", action="store_true", help="only print the table")
    return p


def results_table(args) -> str:
    doc_path = Path(args.doc)
    try:
        table = render(read_json(args.manifest), Path(args.root), doc_path.resolve().parent)
        if args.print:
            print(table)
            return table
        if not doc_path.is_file():
            raise RecordError(f"{doc_path}: no such file (the page the table goes into)")
        page = doc_path.read_text()
        updated = replace_table(page, table)
    except RecordError as err:
        raise SystemExit(f"error: {err}") from None
    if args.check:
        if updated != page:
            raise SystemExit(f"error: {doc_path}'s results table differs from {args.manifest}'s runs; "
                             f"run python -m experiments.tools.results_table")
        print(f"{doc_path}: results table up to date")
    elif updated != page:
        doc_path.write_text(updated)
        print(f"updated {doc_path}")
    else:
        print(f"{doc_path}: results table already up to date")
    return table


def main(argv=None):
    return cli.run(build_parser(), results_table, argv)


if __name__ == "__main__":
    main()
