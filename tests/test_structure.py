"""The layout rules of the library, read from the source: imports run downward, one home per idea.

* no import cycle between modules of ``lstm_jax`` (nor through ``importlib``);
* no module imports another module's private name (``from .x import _y``);
* no library file over 450 lines;
* no ``if name == "lstm"``-style switch on cell names outside the cell definitions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lstm_jax"
MAX_LINES = 450
CELL_NAMES = {"rnn", "lstm", "gru"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]):
    """(imported lstm_jax module, imported names) for every import statement of a module."""
    tree = ast.parse(path.read_text())
    base = name if _is_package(path) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lstm_jax"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            yield target, [n for n in names if f"{target}.{n}" not in known]
            for sub in submodules:
                yield sub, []
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lstm_jax"):
                    yield alias.name, []


def _graph():
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target, _ in _imports(name, path, known):
            # Importing a.b.c also runs a.b's __init__; an edge to the deepest known module is enough.
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's own __init__ is imported before its submodules; a submodule
            # importing a sibling through the package is the only allowed "up" edge.
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_importlib_and_no_private_imports_across_modules():
    modules = _modules()
    known = set(modules)
    for name, path in modules.items():
        source = path.read_text()
        assert "importlib" not in source, f"{name} uses importlib"
        for target, names in _imports(name, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{name} imports private {private} from {target}"


def test_no_library_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_switch_on_cell_names_outside_the_cells():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "cells" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(isinstance(v, str) and v in CELL_NAMES for v in consts):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


MAX_FUNCTION_LINES = 80


def _code_lines(node) -> int:
    """Lines of a function's code: from its ``def`` to its end, less its docstring."""
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
            and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


def test_no_function_over_80_lines_of_code():
    """Small functions in the library and the experiments (docstrings, with their examples, do not count)."""
    long = []
    for folder in (PACKAGE, ROOT / "experiments"):
        for path in sorted(folder.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    assert not long, long


MAX_SCRIPT_LINES = 160


#: The training scripts, one per task folder that trains (analysis trains small models too).
TRAINING_SCRIPTS = ("char_lm/char_lstm.py", "classification/mnist_lstm.py", "long_range/long_range.py",
                    "analysis/gradient_flow.py", "analysis/gate_activity.py")


def test_no_training_script_over_about_150_lines():
    """Every training script is about 150 lines at most (160 with slack): a parser and a run of library calls;
    model, data and report logic live in lstm_jax/, the task's own helpers and experiments/common/."""
    scripts = [ROOT / "experiments" / s for s in TRAINING_SCRIPTS]
    assert all(p.is_file() for p in scripts), scripts
    long = {p.name: n for p in scripts if (n := len(p.read_text().splitlines())) > MAX_SCRIPT_LINES}
    assert not long, f"training scripts over {MAX_SCRIPT_LINES} lines: {long}"


# --------------------------------------------------------------------------- the wings

#: lstm_jax in wings: the recurrent library at the top of the package, and four sub-packages. A module
#: belongs to the wing of its first sub-package (``lstm_jax.train.loop`` -> train); anything else is the
#: library. Each wing may import only the wings listed for it: recurrent library <- models <- train, with
#: data below models and distributed beside the library, used only by train.
WINGS = ("data", "distributed", "models", "train")
MAY_IMPORT = {
    "library": {"library"},
    "data": {"data"},
    "distributed": {"distributed"},
    "models": {"models", "library", "data"},
    "train": {"train", "models", "distributed", "library", "data"},
}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else "library"


def test_wings_import_only_the_wings_below_them():
    upward = [f"{name} ({_wing(name)}) imports {target} ({_wing(target)})"
              for name, edges in _graph().items() for target in edges
              if _wing(target) not in MAY_IMPORT[_wing(name)] and not name.startswith(target + ".")]
    assert not upward, upward


def test_every_wing_is_a_package_that_says_what_lives_there_and_what_it_may_import():
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text())) or ""
        assert len(doc.splitlines()) >= 3, f"lstm_jax/{wing}/__init__.py needs a docstring saying what lives there"
        assert "import" in doc.lower(), f"lstm_jax/{wing}/__init__.py: say what the wing may import"


def test_the_top_of_the_package_is_the_recurrent_library():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    # the layer front and what it needs: nothing of training or of several processes sits at the top
    assert not {"train", "train_step", "checkpoint", "resume", "launch", "sharding", "multiprocess",
                "stopping", "optim", "evaluation", "reporting", "divergence"} & set(top), top
