"""The public API is typed (PEP 561): mypy checks a user's file against it with zero errors.

``lstm_jax/py.typed`` marks the package as typed; tests/typing_user_model.py uses the public functions the way
a user's project would, with ``assert_type`` on their results, so a lost return annotation (``Any``) fails. mypy
runs as a user's would on an installed package: errors are reported for the user's file only
(``--follow-imports=silent``). A second file with a deliberate type error shows the check can fail.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
USER_FILE = ROOT / "tests" / "typing_user_model.py"

pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")


def _mypy(*files: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mypy", "--follow-imports=silent", "--python-version=3.11", "--no-color-output",
               "--cache-dir", str(ROOT / ".mypy_cache"), *map(str, files)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_package_is_marked_typed():
    assert (ROOT / "lstm_jax" / "py.typed").is_file()
    assert '"lstm_jax" = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()  # shipped in the wheel too


def test_a_users_typed_file_checks_with_zero_errors_and_a_wrong_type_is_caught(tmp_path):
    done = _mypy(USER_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from lstm_jax import default_impl\nfrom lstm_jax.train import TrainConfig\n"
                     "n: int = default_impl('lstm')\nTrainConfig(steps='ten')\n")
    done = _mypy(wrong)
    assert done.returncode == 1, done.stdout + done.stderr
    assert 'wrong.py:3: error: Incompatible types in assignment (expression has type "str", variable has type "int")' \
        in done.stdout, done.stdout
    assert "wrong.py:4: error: Argument" in done.stdout, done.stdout
