"""Where the read-only shared data lives: the one place that reads ``$LSTM_JAX_DATA``.

The shared data root holds one folder per dataset (``tinyshakespeare/``,
``mnist/``, ...). Text (:mod:`lstm_jax.data.text`) and image
(:mod:`lstm_jax.data.images`) loaders both find their offline copies under it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DATA_ENV_VAR", "DOWNLOAD_HOST", "DataUnavailable", "REPO_ROOT", "data_dir", "reachable", "tfds_data_dir",
    "tfds_prepared",
]

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


# ---------------------------------------------------------------------------
# Offline detection: fail in seconds instead of minutes of download retries

#: Where TFDS downloads MNIST-family and other public datasets from.
DOWNLOAD_HOST = "storage.googleapis.com"


class DataUnavailable(FileNotFoundError):
    """The data is neither on disk nor downloadable (no network); the message says what exists locally."""


def reachable(host: str = DOWNLOAD_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Without a network the name lookup fails at once; a firewalled network
    costs at most ``timeout``. (TFDS would instead retry each file for minutes.)
    """
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder TFDS reads prepared datasets from: ``data_dir``, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def tfds_prepared(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether some version of TFDS dataset ``name`` is prepared under :func:`tfds_data_dir`.

    Looks for ``<dir>/<name>/<version>/dataset_info.json`` on disk, so the answer
    comes without importing TensorFlow (which alone takes seconds).
    """
    return any(tfds_data_dir(data_dir).glob(f"{name}/*/dataset_info.json"))
