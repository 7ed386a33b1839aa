"""Make ``python experiments/<kind>/<script>.py`` import like ``python -m experiments.<kind>.<script>``.

Run as a file, a script has its own folder as ``sys.path[0]``, so neither
``lstm_jax`` (unless installed) nor ``experiments.common`` is importable. Each
script starts with the one guarded import::

    if __name__ == "__main__" and not __package__:  # run as a file
        import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

Under ``python -m`` or a normal import the guard is false and nothing changes.
"""

import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
