"""A griffe extension for the reference site: the docstrings' reST markup, read as Markdown.

The docstrings are written for ``help()`` and for reading in the source, with
Sphinx roles (``:func:`~lstm_jax.train.fit```), double-backtick literals and
``::`` literal blocks. mkdocstrings renders docstrings as Markdown, where a role
would print as ``:func:`` before the name. This extension rewrites each role to
its name in code (``~a.b.c`` to ``c``, as Sphinx shows it) and ``Text::`` to
``Text:`` (the indented block after it is already a Markdown code block).
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const|term|ref|doc):`(~?)([^`]+)`")
LITERAL_BLOCK = re.compile(r"(\S)::\n")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :ref:`text <target>`
        target = target[: target.index("<")].strip()
    if tilde:
        target = target.split(".")[-1]
    return f"``{target}``"


def markdown_docstring(text: str) -> str:
    """``text`` with Sphinx roles as code and ``::`` literal-block markers as ``:``."""
    return LITERAL_BLOCK.sub(r"\1:\n", ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = markdown_docstring(obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
