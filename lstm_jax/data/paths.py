"""Where the read-only shared data lives: the one place that reads ``$LSTM_JAX_DATA``.

The shared data root holds one folder per dataset (``tinyshakespeare/``,
``mnist/``, ...). Text (:mod:`lstm_jax.data.text`) and image
(:mod:`lstm_jax.data.images`) loaders both find their offline copies under it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV_VAR", "REPO_ROOT", "data_dir"]

DATA_ENV_VAR = "LSTM_JAX_DATA"
"""Environment variable overriding the shared data root."""

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Root of the shared data: ``$LSTM_JAX_DATA`` if set, else ``<repo>/../shared/data``.

    If ``<repo>/../shared/data`` does not exist but ``<repo>/../../shared/data``
    does (a git worktree checked out one level deeper), the latter is used.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    primary = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not primary.is_dir():
        fallback = (REPO_ROOT / ".." / ".." / "shared" / "data").resolve()
        if fallback.is_dir():
            return fallback
    return primary
