"""Every shell command in the README and docs/ runs as printed from the clone's root.

The shell blocks (fenced ``bash``/``sh``/``console`` blocks, and untagged or
indented blocks whose lines start with a command) are split into commands. Each
must start with a known program; each ``python -m MODULE ARGS`` (or ``python
SCRIPT.py ARGS``) must name a module or file that exists, and its arguments must
parse with the script's own parser (``--config FILE`` read and checked as the
script reads it), in this process, without running anything. Commands after
``--`` (the launcher's, ``seeds``') are checked the same way. A few seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}
#: Programs a shell block may start a command with (after VAR=value assignments).
PROGRAMS = {"python", "pip", "bash", "apt-get", "sudo", "mkdocs", "kill", "sleep", "srun", "cd", "export", "taskset"}
COMMAND_START = re.compile(r"^\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(" + "|".join(PROGRAMS) + r")\b")


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of each shell block of a Markdown page."""
    lines, found, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```|~~~)\s*([\w+-]*)", lines[i])
        if fence:
            indent, mark, language = fence.groups()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            body = [line[len(indent):] for line in lines[i + 1:j]]
            if language in SHELL_LANGUAGES or (not language and any(COMMAND_START.match(b) for b in body)):
                found.append((i + 1, "\n".join(body)))
            i = j + 1
        elif lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            j, body = i, []
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                body.append(lines[j][4:])
                j += 1
            if COMMAND_START.match(next(b for b in body if b.strip())) or \
                    (body[0].lstrip().startswith("#") and any(COMMAND_START.match(b) for b in body)):
                found.append((i + 1, "\n".join(body)))
            i = j
        else:
            i += 1
    return found


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped, split at ; & && || |."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if set(token) <= set(";&|"):
                if current:
                    out.append(current)
                current = []
            else:
                current.append(token)
    return out


#: Flags whose value is an input that must exist in the clone as printed.
INPUT_FLAGS = ("--text-file", "--manual-dir", "--config")


def parse_script(module_name: str, args: list[str]) -> str | None:
    """Parse ``args`` with the module's ``build_parser()`` (and ``--config``); the error text, or None."""
    from experiments.common import config

    module = importlib.import_module(module_name)
    if not hasattr(module, "build_parser"):
        return None if module_name == "pytest" or "--help" in args or not args else \
            f"{module_name} has no build_parser() to check its arguments with"
    parser = module.build_parser()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            config.parse_args(parser, args)
    except SystemExit as e:
        if e.code not in (0, None):
            return (err.getvalue() or str(e.code)).strip().splitlines()[-1]
    return None


def check_python(args: list[str]) -> str | None:
    """``python ARGS`` as printed: the module or script exists and its arguments parse."""
    if not args:
        return "python with no module or script"
    if args[0] == "-m":
        if len(args) < 2:
            return "-m with no module"
        module_name, rest = args[1], args[2:]
        if module_name in ("pytest", "pip"):
            return None
        if importlib.util.find_spec(module_name) is None:
            return f"no module {module_name}"
    elif args[0].endswith(".py"):
        script = ROOT / args[0]
        if not script.is_file():
            return f"no script {args[0]}"
        module_name, rest = ".".join(script.relative_to(ROOT).with_suffix("").parts), args[1:]
    else:
        return f"python {args[0]}: neither -m MODULE nor a script"
    for flag, value in zip(rest, rest[1:]):
        if flag in INPUT_FLAGS and not (ROOT / value).exists():
            return f"{flag} {value}: no such file in the clone"
    inner = None
    if "--" in rest and module_name.rsplit(".", 1)[-1] in ("launch", "seeds"):
        split = rest.index("--")
        rest, inner = (rest[:split], rest[split + 1:]) if module_name.endswith("launch") else (rest, rest[split + 1:])
    problem = parse_script(module_name, rest)
    if problem is None and inner is not None:
        problem = check_python(inner)
    return problem


def check_command(tokens: list[str]) -> str | None:
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]  # VAR=value before the program
    if not tokens:
        return None
    program = tokens[0]
    if program not in PROGRAMS:
        return f"{program!r} is not a command (a fragment, or output printed as if it were one?)"
    if program == "python":
        return check_python(tokens[1:])
    if program == "bash" and len(tokens) > 1 and not tokens[1].startswith("-"):
        return None if (ROOT / tokens[1]).is_file() else f"no script {tokens[1]}"
    if program in ("srun", "taskset", "sudo") and "python" in tokens:
        return check_python(tokens[tokens.index("python") + 1:])
    return None


CASES = [(page, line, block) for page in PAGES for line, block in shell_blocks(page.read_text())]


def test_the_pages_have_shell_blocks():
    assert len(CASES) >= 20, [f"{p.name}:{n}" for p, n, _ in CASES]


def test_every_shell_command_runs_as_printed():
    problems = []
    for page, line, block in CASES:
        for tokens in commands(block):
            problem = check_command(tokens)
            if problem:
                problems.append(f"{page.relative_to(ROOT)}:{line}: {' '.join(tokens)[:90]}: {problem}")
    assert not problems, "shell commands that do not run as printed:\n" + "\n".join(problems)


@pytest.mark.parametrize("command, expected", [
    ("python -m experiments.char_lm.char_lstm --steps 10", None),
    ("python -m experiments.char_lm.char_lstm --no-such-flag", "no-such-flag"),
    ("python -m experiments.char_lm.char_lstm --config configs/no_such.toml", "no_such.toml"),
    ("python -m experiments.no_such_script", "no module"),
    ("-> results/x/", "not a command"),
])
def test_the_checker_catches(command, expected):
    problem = check_command(shlex.split(command))
    assert (problem is None) if expected is None else (expected in problem), problem
