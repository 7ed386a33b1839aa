"""The documentation cannot lag the code: lists, examples and links are checked here.

* every list of cells and layer implementations in the README and in the
  package's and ``layers.py``'s docstrings names exactly ``CELLS`` / ``IMPLS``;
* the README stays a front door (at most 250 lines, no lab-notebook phrases);
* the README's Python examples run, and so do the ``>>>`` examples in the
  docstrings of the public names (:data:`DOCTEST_MODULES`);
* every figure of the README's results table is in the generated results table
  (docs/results.md, from the records) for the same config;
* every relative link in the README, ``docs/*.md``, the changelog and the
  journal points to an existing file, and a ``#anchor`` into a Markdown file to
  one of its headings.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

import lstm_jax
from lstm_jax import layers
from lstm_jax.cells import CELLS
from lstm_jax.impls import IMPLS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "JOURNAL.md"]

#: Modules whose docstring examples run here (the public names: cell steps, init_stack, apply_stack, layer_impl, fit).
DOCTEST_MODULES = (
    "lstm_jax.cells.rnn", "lstm_jax.cells.lstm", "lstm_jax.cells.gru", "lstm_jax.cells.min_gru",
    "lstm_jax.cells.min_lstm", "lstm_jax.stack", "lstm_jax.layers", "lstm_jax.impls", "lstm_jax.train.loop",
    "lstm_jax.train.optim", "lstm_jax.models.evaluation", "lstm_jax.models.task", "lstm_jax.models.spec",
    "lstm_jax.models.char_model", "lstm_jax.flax",
)


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def without_code(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


# --------------------------------------------------------------------------- lists of cells and impls


def marked_table_names(text: str, marker: str) -> set[str]:
    """The backticked names in the first column of the table between ``<!-- marker:start/end -->``."""
    found = re.findall(rf"<!-- {marker}:start -->(.*?)<!-- {marker}:end -->", text, re.S)
    assert len(found) == 1, f"README.md needs one <!-- {marker}:start --> ... <!-- {marker}:end --> block"
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", found[0], re.M))


def docstring_list(doc: str, label: str, registry: str, where: str) -> set[str]:
    """The names of a ``Label (``REGISTRY``): ``a``, ``b``, ... .`` sentence of a docstring."""
    found = re.findall(rf"{label} \(``{registry}``\):(.*?)\.\n", doc, re.S)
    assert len(found) == 1, f"{where}'s docstring needs one sentence '{label} (``{registry}``): ``name``, ...'"
    return set(re.findall(r"``([a-z0-9_]+)``", found[0]))


def test_readme_lists_every_cell_and_impl():
    text = README.read_text()
    assert marked_table_names(text, "cells") == set(CELLS), "README.md's cell table differs from lstm_jax.cells.CELLS"
    assert marked_table_names(text, "impls") == set(IMPLS), "README.md's impl table differs from lstm_jax.impls.IMPLS"


@pytest.mark.parametrize("module", [lstm_jax, layers], ids=["lstm_jax", "lstm_jax.layers"])
def test_docstrings_list_every_cell_and_impl(module):
    doc = module.__doc__
    cells = docstring_list(doc, "Cells", "CELLS", module.__name__)
    impls = docstring_list(doc, "Implementations", "IMPLS", module.__name__)
    assert cells == set(CELLS), f"{module.__name__}'s docstring lists cells {sorted(cells)}, CELLS has {sorted(CELLS)}"
    assert impls == set(IMPLS), f"{module.__name__}'s docstring lists impls {sorted(impls)}, IMPLS has {sorted(IMPLS)}"


def test_impls_docstring_table_and_performance_page_name_every_impl():
    import lstm_jax.impls as impls

    table = set(re.findall(r"^``([a-z0-9_]+)`` ", impls.__doc__, re.M))
    assert table == set(IMPLS), "lstm_jax/impls/__init__.py's table differs from IMPLS"
    page = (ROOT / "docs" / "performance.md").read_text()
    assert set(re.findall(r'^\| `"([a-z0-9_]+)"` \|', page, re.M)) == set(IMPLS), \
        "docs/performance.md's implementation table differs from IMPLS"


def test_architecture_page_names_every_cell():
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert set(re.findall(r"^\| `([a-z0-9_]+)` \| `[a-z0-9_]+_step` \|", page, re.M)) == set(CELLS), \
        "docs/architecture.md's cell table differs from CELLS"


def test_the_package_exports_every_registered_cell():
    for name, cell in CELLS.items():
        for public in (f"{name}_step", f"init_{name}", name.upper()):
            assert public in lstm_jax.__all__ and hasattr(lstm_jax, public), f"lstm_jax does not export {public}"
        assert getattr(lstm_jax, name.upper()) is cell


# --------------------------------------------------------------------------- the README is a front door


def test_readme_is_a_front_door():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/ (at most 250)"
    for phrase in ("load average", "matmul probe", "this session", "a later session"):
        assert phrase not in text.lower(), f"README.md: lab-notebook phrase {phrase!r} belongs in results/JOURNAL.md"
    dated = [line for line in lines if re.search(r"\b20\d\d-\d\d\b", line) and not line.startswith("|")]
    assert not dated, f"README.md: dates belong on result rows only: {dated}"


def test_readme_examples_run():
    """The README's ```python blocks run in order in one namespace (registries restored afterwards)."""
    cells, impls = dict(CELLS), dict(IMPLS)
    namespace: dict = {}
    try:
        for block in fenced_blocks(README.read_text(), "python"):
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        CELLS.clear(), CELLS.update(cells)
        IMPLS.clear(), IMPLS.update(impls)
    assert namespace["ys"].shape == (4, 20, 8)
    assert namespace["result"].history[-1]["loss"] < 0.01  # the fit example learned its target


def test_docstring_examples_run():
    """``>>>`` examples of the public names, one process, tiny shapes (a few seconds in all)."""
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    for name in DOCTEST_MODULES:
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=flags, verbose=False, report=True)
        assert result.attempted > 0, f"{name} has no docstring examples"
        assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed (above)"


# --------------------------------------------------------------------------- one figure per fact


def test_readme_results_are_the_generated_tables_figures():
    """Each figure of the README's results table is in docs/results.md's generated row for the same config.

    docs/results.md's table is generated from the records (``tests/test_results_tools.py`` checks it), so a
    README figure found there comes from a record. Exempt: a comparison from outside (after "≈") and the
    adding problem's constant baseline (1/6).
    """
    text = README.read_text()
    section = text[text.index("## Results"):text.index("\n## ", text.index("## Results") + 3)]
    page = (ROOT / "docs" / "results.md").read_text()
    generated = page[page.index("<!-- results-table:start -->"):page.index("<!-- results-table:end -->")]
    rows = [line for line in generated.splitlines() if "configs/" in line]
    checked, missing = 0, []
    for line in section.splitlines():
        configs = re.findall(r"\(configs/([\w.-]+\.toml)\)", line)
        if not line.startswith("| ") or not configs:
            continue
        same = [r for r in rows if any(f"configs/{c})" in r for c in configs)]
        result = re.sub(r"(≈ |baseline )\d+\.\d+", "", line.split("|")[1])
        for number in re.findall(r"(?<![\w.])\d+\.\d+", result):
            checked += 1
            if not any(re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", r) for r in same):
                missing.append(f"{number} ({', '.join(configs)})")
    assert checked >= 20, f"only {checked} figures found in the README's results table"
    assert not missing, f"README.md results figures not in docs/results.md's generated rows: {missing}"


# --------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("Parallel in time: minimal cells and `impl=\"deer\"`") == "parallel-in-time-minimal-cells-and-impldeer"
    assert slug("10,000 equal steps: adding to T=800, and the copy task") == "10000-equal-steps-adding-to-t800-and-the-copy-task"
    assert slug("The minimal cells at the LSTM's parameter count") == "the-minimal-cells-at-the-lstms-parameter-count"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target} (no heading with that anchor in {file.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


# --------------------------------------------------------------------------- the layout, written once


def _layout_block(page: Path) -> list[str]:
    """The code block under a page's ``## Layout`` heading, as lines."""
    text = page.read_text()
    section = text[text.index("## Layout\n"):]
    return section.split("```")[1].splitlines()[1:]


def _subtree(lines: list[str], folder: str, indent: int) -> tuple[str, int]:
    """The text of ``folder/``'s line and of every line after it indented more than it (its entries
    and the wrapped lines of their descriptions), and the folder's indent."""
    def depth(line):
        return len(line) - len(line.lstrip())

    for i, line in enumerate(lines):
        if depth(line) == indent and line.lstrip().startswith(folder + "/"):
            out = [line]
            for rest in lines[i + 1:]:
                if rest.strip() and depth(rest) <= indent:
                    break
                out.append(rest)
            return "\n".join(out), indent
    raise AssertionError(f"no line for {folder}/ at indent {indent}")


def _tree_names(folder: Path) -> list[str]:
    """Modules (``x.py``) and sub-folders (``x/``) of a source folder, as a reader would look for them."""
    skip = {"__init__.py", "__pycache__", "corpora", "_onednn"}
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                  if p.name not in skip and (p.is_dir() or p.suffix in (".py", ".sh")) and not p.name.startswith("."))


def test_architecture_layout_names_every_folder_and_module():
    lines = _layout_block(ROOT / "docs" / "architecture.md")
    missing = []
    for top in ("lstm_jax", "experiments"):
        text, _ = _subtree(lines, top, 0)
        for name in _tree_names(ROOT / top):
            if not re.search(rf"(?<![\w/.]){re.escape(name.rstrip('/'))}(\.py)?/?(?![\w])", text):
                missing.append(f"{top}/{name}")
            if name.endswith("/"):
                sub, _ = _subtree(text.splitlines(), name.rstrip("/"), 2)
                missing += [f"{top}/{name}{n}" for n in _tree_names(ROOT / top / name) if n.rstrip("/") not in sub]
    assert not missing, f"docs/architecture.md's layout block misses: {missing}"


def test_readme_layout_names_every_folder_and_nothing_else():
    block = "\n".join(_layout_block(ROOT / "README.md"))
    named = set(re.findall(r"(?<![\w.])([a-z_]+)/", block))
    folders = {p.name for top in ("lstm_jax", "experiments") for p in (ROOT / top).iterdir()
               if p.is_dir() and not p.name.startswith(("_", "."))} - {"corpora"}
    top_level = {"lstm_jax", "experiments", "configs", "docs", "results"}
    assert folders - named == set(), f"README's layout block misses {sorted(folders - named)}"
    unknown = named - folders - top_level - {"cells", "bptt", "impls"}
    assert not unknown, f"README's layout block names folders that do not exist: {sorted(unknown)}"
    for name in ("cells", "bptt", "impls"):
        assert (ROOT / "lstm_jax" / name).is_dir()


def test_package_docstring_names_every_wing_and_top_module():
    import lstm_jax

    doc = lstm_jax.__doc__
    for p in (ROOT / "lstm_jax").iterdir():
        if p.name.startswith(("_", ".")) or not (p.is_dir() or p.suffix == ".py"):
            continue
        name = p.name + "/" if p.is_dir() else p.stem
        assert f"``{name}``" in doc or f"{name} " in doc, f"lstm_jax's docstring does not name {name}"


def test_every_name_the_pages_import_exists():
    """Each ``from lstm_jax... import a, b`` and ``import lstm_jax...`` in the README's and the docs' code
    blocks names something that exists (the layout can move; the names users copy stay)."""
    missing = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text(), "python"):
            for module, names in re.findall(r"^\s*from (lstm_jax[\w.]*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$", block, re.M):
                mod = importlib.import_module(module)
                missing += [f"{page.name}: {module}.{n}" for n in (x.strip() for x in names.split(","))
                            if n and not hasattr(mod, n.split(" as ")[0])
                            and importlib.util.find_spec(f"{module}.{n.split(' as ')[0]}") is None]
            for module in re.findall(r"^\s*import (lstm_jax[\w.]*)", block, re.M):
                if importlib.util.find_spec(module) is None:
                    missing.append(f"{page.name}: {module}")
    assert not missing, missing
