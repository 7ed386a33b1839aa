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
(:mod:`experiments.tools.records`), or to ``{"min" | "max" | "mean": [paths]}``,
``{"ratio": [numerator, denominator]}``, ``{"mib": [bytes path]}``, ``{"ms": [seconds path]}`` or
``{"minutes": [seconds path]}``; ``result`` is a :meth:`str.format`
template over them; ``goal`` (optional) says which value must be at most
``max`` / at least ``min`` for the "met" column; ``config`` (optional) is the
config file that reproduces the run. The table replaces the text between the
markers ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` of
the page::

    python -m experiments.tools.results_table              # rewrite docs/results.md's table and results/tables.json's
    python -m experiments.tools.results_table --check      # exit 1 if a page's table differs (the test suite runs this)
    python -m experiments.tools.results_table --print      # print the table only

A missing file or path is an error naming the entry, not an empty cell.

**Every other generated table** (the speed tables of docs/performance.md and
docs/onednn.md, the README's results rows) is declared in ``results/tables.json``
(under ``--root``): a list of tables, each ``{"id", "page", "kind", ...}``,
written between ``<!-- table:ID:start -->`` and ``<!-- table:ID:end -->`` on its
page. Three kinds:

* ``"speed"``: one row per cell, size and precision of a ``benchmark.py`` record
  (``"file"``; ``"cells"``, ``"precisions"`` default ``["fp32"]``), with
  ``"columns"`` ``{"head", "ms": IMPL}`` (median ms), ``{"head", "speedup":
  [IMPL, OVER]}`` (OVER's median ÷ IMPL's: how many times faster IMPL ran) or
  ``{"head", "peak": IMPL}`` (fraction of the run's matmul peak). IMPL is
  ``scan``, ``hoisted``, ``manual``, ``onednn`` (lstm_jax's) or ``torch``,
  ``flax``, ``equinox`` (the cell's row of that library); ``"bold": true`` bolds
  a column; a row the record lacks is ``–``.
* ``"rows"``: free rows, ``{"header": [...], "files": {ALIAS: path},
  "rows": [{"values": {...}, "cells": [template, ...]}]}``: values as in the
  results manifest, a path prefixed ``ALIAS:`` read from that file, plus
  ``{"min_speedup" | "max_speedup": {"file", "cell", "impl", "over",
  "precision"}}`` over the sizes of a benchmark record.

* ``"grid"``: a value per (row, column) of one record, e.g. per cell and T of a
  long_range sweep: ``{"file", "select": "runs[cell={row},T={column}]", "rows",
  "columns", "row_head", "column_label": "T={column}", "values": {NAME: path in
  the selected entry}, "cell": template}``, optionally ``"bold": {"value", "max" |
  "min"}`` with ``"bold_cell"``, the template used where the value is within it;
  a ``null`` value shows as ``—``.

``--check`` compares every table; a page that differs names its table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


from experiments.common import cli
from experiments.common.harness import REPO_ROOT
from experiments.tools.records import RecordError, lookup, read_json

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
REQUIRED = ("experiment", "file", "values", "result", "target", "section")


OPS = {"min": min, "max": max, "mean": lambda xs: sum(xs) / len(xs), "ratio": lambda xs: xs[0] / xs[1],
       "mib": lambda xs: xs[0] / 2**20, "ms": lambda xs: 1000 * xs[0], "minutes": lambda xs: xs[0] / 60}


def value(record, spec, files: dict | None = None):
    """A path's value, or an :data:`OPS` entry over several paths' values.

    ``files`` (the ``"rows"`` kind): ``{alias: record}``; a path ``"alias:path"`` reads that record, and the
    ``min_speedup`` / ``max_speedup`` ops read a benchmark record's sizes.
    """
    if isinstance(spec, str):
        alias, sep, path = spec.partition(":")
        if sep and files is not None and alias in files:
            return lookup(files[alias], path)
        return lookup(record, spec)
    if isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPEEDUP_OPS and files is not None:
        (op, args), = spec.items()
        return SPEEDUP_OPS[op](speedups(files, args))
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in OPS):
        raise RecordError(f"a value is a path or one of {{{', '.join(OPS)}: [paths]}}, got {spec!r}")
    (op, paths), = spec.items()
    if not isinstance(paths, list) or not paths or (op == "ratio" and len(paths) != 2) or (
            op in ("mib", "ms", "minutes") and len(paths) != 1):
        raise RecordError(f"{op} needs a list of paths{' (two)' if op == 'ratio' else ''}, got {paths!r}")
    return OPS[op]([value(record, p, files) for p in paths])


# --------------------------------------------------------------------------- benchmark records (benchmark.py)

#: The row names of the other libraries in a benchmark record, per cell.
LIBRARY_ROWS = {
    "torch": {"lstm": "torch nn.LSTM", "gru": "torch nn.GRU", "rnn": "torch nn.RNN"},
    "flax": {"lstm": "flax RNN(OptimizedLSTMCell)", "gru": "flax RNN(GRUCell)", "rnn": "flax RNN(SimpleCell)"},
    "equinox": {"lstm": "equinox LSTMCell scan", "gru": "equinox GRUCell scan"},
}
LIBRARY_BF16 = {"torch": " autocast-bf16"}
SPEEDUP_OPS = {"min_speedup": min, "max_speedup": max}


def impl_row_name(impl: str, cell: str, precision: str = "fp32") -> str | None:
    """The benchmark record's row name for ``impl`` (an lstm_jax impl or a library) at ``cell``/``precision``."""
    if impl in LIBRARY_ROWS:
        name = LIBRARY_ROWS[impl].get(cell)
        return None if name is None else name + (LIBRARY_BF16.get(impl, " bf16") if precision == "bf16" else "")
    return f"lstm_jax {impl}" + (" bf16" if precision == "bf16" else "")


def size_label(size: dict) -> str:
    return ",".join(str(size[k]) for k in ("T", "B", "I", "H"))


def benchmark_row(entry: dict, impl: str, precision: str) -> dict | None:
    """The row of ``impl`` in one (cell, size) entry of a benchmark record, or None where it was not run."""
    name = impl_row_name(impl, entry["cell"], precision)
    rows = [r for r in entry["rows"] if r.get("impl") == name]
    return rows[0] if rows else None


def speedups(files: dict, args: dict) -> list[float]:
    """``over``'s median ÷ ``impl``'s at every size of ``cell`` in the benchmark record ``files[args["file"]]``."""
    try:
        record, cell = files[args["file"]], args["cell"]
        impl, over, precision = args["impl"], args["over"], args.get("precision", "fp32")
    except KeyError as err:
        raise RecordError(f"a speedup needs file, cell, impl and over (and a file alias that exists): {err}") from None
    out = []
    for entry in record["results"]:
        if entry["cell"] != cell:
            continue
        a, b = benchmark_row(entry, impl, precision), benchmark_row(entry, over, precision)
        if a is None or b is None:
            raise RecordError(f"{args['file']}: no {impl if a is None else over}/{precision} row for {cell} "
                              f"at {size_label(entry['size'])}")
        out.append(b["median_ms"] / a["median_ms"])
    if not out:
        raise RecordError(f"{args['file']}: no {cell} entries")
    return out


def md_row(cells) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def md_head(header, align) -> list[str]:
    """A Markdown table's header and alignment rows."""
    return [md_row(header), "|" + "|".join(align) + "|"]


def speed_table(spec: dict, root: Path) -> str:
    """A ``"speed"`` table (module docstring): one row per cell, size and precision of a benchmark record."""
    record = read_json(Path(root) / spec["file"])
    precisions, columns = spec.get("precisions", ["fp32"]), spec["columns"]
    head = ["cell", "T,B,I,H"] + (["precision"] if len(precisions) > 1 else []) + [c["head"] for c in columns]
    align = ["---"] * (len(head) - len(columns)) + ["---:"] * len(columns)
    lines = md_head(head, align)
    for cell in spec["cells"]:
        entries = [e for e in record["results"] if e["cell"] == cell]
        if not entries:
            raise RecordError(f"{spec['file']}: no {cell} entries")
        for entry, precision in ((e, p) for e in entries for p in precisions):
            cells = [cell, size_label(entry["size"])] + ([precision] if len(precisions) > 1 else [])
            for col in columns:
                cells.append(_speed_cell(entry, precision, col))
            lines.append(md_row(cells))
    return "\n".join(lines)


def _speed_cell(entry: dict, precision: str, col: dict) -> str:
    if "ms" in col:
        row = benchmark_row(entry, col["ms"], precision)
        text = "–" if row is None else f"{row['median_ms']:.1f}"
    elif "speedup" in col:
        impl, over = col["speedup"]
        a, b = benchmark_row(entry, impl, precision), benchmark_row(entry, over, precision)
        text = "–" if a is None or b is None else f"{b['median_ms'] / a['median_ms']:.2f}×"
    elif "peak" in col:
        row = benchmark_row(entry, col["peak"], precision)
        text = "–" if row is None else f"{100 * row['fraction_of_matmul_peak']:.0f}%"
    else:
        raise RecordError(f"a speed column is {{head, ms | speedup | peak}}, got {col!r}")
    return f"**{text}**" if col.get("bold") and text != "–" else text


def rows_table(spec: dict, root: Path) -> str:
    """A ``"rows"`` table (module docstring): a header and one templated row per entry."""
    files = {alias: read_json(Path(root) / path) for alias, path in spec.get("files", {}).items()}
    header = spec["header"]
    lines = md_head(header, spec.get("align", ["---"] * len(header)))
    for i, row in enumerate(spec["rows"]):
        try:
            values = {k: value(None, v, files) for k, v in row.get("values", {}).items()}
            cells = [c.format(**values) for c in row["cells"]]
        except (KeyError, ValueError, TypeError) as err:
            raise RecordError(f"row {i} ({row.get('cells', ['?'])[0]!r}): {err}") from None
        if len(cells) != len(header):
            raise RecordError(f"row {i} has {len(cells)} cells for {len(header)} columns")
        lines.append(md_row(cells))
    return "\n".join(lines)


def grid_table(spec: dict, root: Path) -> str:
    """A ``"grid"`` table (module docstring): one row per ``rows`` entry, one column per ``columns`` entry."""
    record = read_json(Path(root) / spec["file"])
    label = spec.get("column_label", "{column}")
    lines = md_head([spec.get("row_head", "")] + [label.format(column=c) for c in spec["columns"]],
                    ["---"] * (1 + len(spec["columns"])))
    bold = spec.get("bold")
    for row in spec["rows"]:
        cells = [str(row)]
        for column in spec["columns"]:
            entry = lookup(record, spec["select"].format(row=row, column=column))
            values = {k: value(entry, v) for k, v in spec["values"].items()}
            values = {k: "—" if v is None else v for k, v in values.items()}  # e.g. a task never solved
            template = spec["cell"]
            if bold:
                v = values.get(bold.get("value"))
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise RecordError(f"{row}, {column}: bold value {bold.get('value')!r} is {v!r}, not a number")
                if (bold.get("max") is None or v <= bold["max"]) and (bold.get("min") is None or v >= bold["min"]):
                    template = spec["bold_cell"]
            try:
                cells.append(template.format(**values))
            except (KeyError, ValueError, TypeError) as err:
                raise RecordError(f"{row}, {column}: template {template!r} does not fit {values}: {err}") from None
        lines.append(md_row(cells))
    return "\n".join(lines)


TABLE_KINDS = {"speed": speed_table, "rows": rows_table, "grid": grid_table}


def table_markers(table_id: str) -> tuple[str, str]:
    return f"<!-- table:{table_id}:start -->", f"<!-- table:{table_id}:end -->"


def render_table(spec: dict, root: Path) -> str:
    """One table of ``results/tables.json``, its errors naming the table."""
    name = spec.get("id", "?")
    try:
        if spec.get("kind") not in TABLE_KINDS:
            raise RecordError(f"kind is one of {sorted(TABLE_KINDS)}, got {spec.get('kind')!r}")
        return TABLE_KINDS[spec["kind"]](spec, root)
    except RecordError as err:
        raise RecordError(f"table {name!r}: {err}") from None
    except KeyError as err:
        raise RecordError(f"table {name!r}: missing key {err}") from None


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
    return md_row([name, result, entry["target"], met, entry["section"], config_cell, source])


def render(manifest: list, root: Path, page_dir: Path | None = None) -> str:
    """The whole table (header and one row per manifest entry), links relative to ``page_dir``."""
    if not isinstance(manifest, list) or not manifest:
        raise RecordError("the manifest must be a non-empty JSON list of entries")
    lines = ["| experiment | result | target | | section | config | from |", "|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [entry_row(e, root, page_dir) for e in manifest])


def replace_table(page: str, table: str, start: str = START, end: str = END) -> str:
    """``page`` with the text between the markers replaced by ``table``."""
    if page.count(start) != 1 or page.count(end) != 1 or page.index(start) > page.index(end):
        raise RecordError(f"the page needs exactly one {start} ... {end} pair, in that order")
    head, rest = page.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{table}\n{end}{tail}"


def build_parser():
    p = cli.make_parser(__doc__, first_paragraph=True)
    p.add_argument("--manifest", default=str(REPO_ROOT / "results" / "glance.json"), help="the rows (JSON list)")
    p.add_argument("--doc", default=str(REPO_ROOT / "docs" / "results.md"), help="the page whose table to update")
    p.add_argument("--root", default=str(REPO_ROOT), help="directory the entries' file paths are relative to")
    p.add_argument("--tables", default=None,
                   help="the other generated tables (default: ROOT/results/tables.json, where it exists)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only compare; exit 1 if a page's table differs")
    mode.add_argument("--print", action="store_true", help="only print the results table")
    return p


def _update(path: Path, updated: str, page: str, what: str, check: bool) -> bool:
    """Write (or with ``check`` only compare) one page; True when it was up to date."""
    if updated == page:
        print(f"{path}: {what} up to date")
        return True
    if check:
        print(f"{path}: {what} differs from the records", file=sys.stderr)
        return False
    path.write_text(updated)
    print(f"updated {path} ({what})")
    return True


def results_table(args) -> str:
    doc_path, root = Path(args.doc), Path(args.root)
    tables_path = Path(args.tables) if args.tables else root / "results" / "tables.json"
    ok = True
    try:
        table = render(read_json(args.manifest), root, doc_path.resolve().parent)
        if args.print:
            print(table)
            return table
        if not doc_path.is_file():
            raise RecordError(f"{doc_path}: no such file (the page the table goes into)")
        page = doc_path.read_text()
        ok &= _update(doc_path, replace_table(page, table), page, "results table", args.check)
        specs = read_json(tables_path) if (args.tables or tables_path.is_file()) else []
        originals: dict[Path, str] = {}  # page -> its text as read
        pages: dict[Path, str] = {}  # page -> its text with the tables rendered so far
        for spec in specs:
            path = root / spec.get("page", "?")
            if path not in pages:
                if not path.is_file():
                    raise RecordError(f"table {spec.get('id')!r}: page {spec.get('page')!r} does not exist")
                originals[path] = pages[path] = path.read_text()
            pages[path] = replace_table(pages[path], render_table(spec, root), *table_markers(spec.get("id", "?")))
        for path, updated in pages.items():
            ids = [s["id"] for s in specs if root / s["page"] == path]
            ok &= _update(path, updated, originals[path], f"tables {', '.join(ids)}", args.check)
    except RecordError as err:
        raise SystemExit(f"error: {err}") from None
    if not ok:
        raise SystemExit("error: a generated table differs from the records it is made from; "
                         "run python -m experiments.tools.results_table")
    return table


def main(argv=None):
    return cli.run(build_parser(), results_table, argv)


if __name__ == "__main__":
    main()
