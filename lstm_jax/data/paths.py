"""Where offline copies of datasets live: the one place that reads ``$LSTM_JAX_DATA``.

The data root holds one folder per dataset (``mnist/``, ``fashion_mnist/``,
...). The image loaders (:mod:`lstm_jax.data.images`) look for IDX files under
it; Tiny Shakespeare needs no data root (it ships in the package). The root is,
in order:

1. ``$LSTM_JAX_DATA`` when set (any folder, e.g. a read-only shared copy);
2. else the user cache folder: ``$XDG_CACHE_HOME/lstm_jax``, or
   ``~/.cache/lstm_jax`` when ``XDG_CACHE_HOME`` is unset (the XDG base
   directory convention).

A development checkout may have a ``shared/data`` folder beside the clone;
:func:`checkout_shared_data` finds it, and it is used only when named, e.g.
``LSTM_JAX_DATA=../shared/data`` (the test suite does so when it exists).

Example::

    >>> from lstm_jax.data.paths import data_dir, user_cache_dir
    >>> user_cache_dir().name
    'lstm_jax'
    >>> (data_dir() / "mnist").name       # where the MNIST IDX files are looked for
    'mnist'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DATA_ENV_VAR", "DOWNLOAD_HOST", "DataUnavailable", "REPO_ROOT", "checkout_shared_data", "data_dir", "reachable",
    "tfds_data_dir", "tfds_prepared", "user_cache_dir",
]

DATA_ENV_VAR = "LSTM_JAX_DATA"
"""Environment variable naming the data root."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The folder above the package: the clone's root for an editable install."""


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lstm_jax`` (an absolute ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/lstm_jax``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "lstm_jax"


def data_dir() -> Path:
    """The data root: ``$LSTM_JAX_DATA`` if set, else :func:`user_cache_dir`.

    The folder need not exist: loaders that look under it report what they did
    not find.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return user_cache_dir()


def checkout_shared_data() -> Path | None:
    """A development checkout's ``<clone>/../shared/data`` (or one level further up, for a git worktree), or None.

    Never a default: pass it as ``LSTM_JAX_DATA`` to use it.
    """
    for up in (REPO_ROOT / "..", REPO_ROOT / ".." / ".."):
        candidate = (up / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


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
