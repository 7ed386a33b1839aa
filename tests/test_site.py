"""The reference site builds with ``mkdocs build --strict``: a broken link, a page missing from the
navigation, a docstring griffe cannot parse or a bad reference fails here (a few seconds)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_hooks():
    spec = importlib.util.spec_from_file_location("site_hooks", ROOT / "docs" / "_ext" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    home = (site / "index.html").read_text()
    assert "The idea in one screen" in home and 'href="tutorial/"' in home   # the README is the home page
    assert "lstm_step" in (site / "api" / "cells" / "index.html").read_text()  # rendered from the docstrings
    assert "TrainConfig" in (site / "api" / "train" / "index.html").read_text()
    assert ":func:" not in (site / "api" / "data" / "index.html").read_text()   # Sphinx roles read as code
    tutorial = (site / "tutorial" / "index.html").read_text()
    assert "An LSTM from scratch in JAX" in tutorial and 'href="bptt.md"' not in tutorial  # links go to pages


def test_links_outside_docs_must_exist():
    from mkdocs.exceptions import PluginError

    hooks = load_hooks()
    kept = hooks._rewrite("[cfg](../configs/shakespeare_quick.toml)", ROOT / "docs", None, None, "page")
    assert kept == "cfg"  # no source_url: the text alone
    linked = hooks._rewrite("[cfg](../configs/shakespeare_quick.toml#x)", ROOT / "docs", None, "https://h/r", "page")
    assert linked == "[cfg](https://h/r/configs/shakespeare_quick.toml#x)"
    with pytest.raises(PluginError, match="no_such.toml does not exist"):
        hooks._rewrite("[cfg](../configs/no_such.toml)", ROOT / "docs", None, None, "page")


def test_sphinx_roles_become_code():
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "_ext" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "See :func:`~lstm_jax.train.fit` and :data:`LSTM_GATES`.\n\nLayout::\n\n    a b\n"
    assert module.markdown_docstring(text) == "See ``fit`` and ``LSTM_GATES``.\n\nLayout:\n\n    a b\n"
