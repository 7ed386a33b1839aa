"""One record of the machine a result was measured on, the same keys in every script's JSON.

Results on a shared CPU depend on what else ran (load average), on the
allocator (``--malloc``) and on the JAX build and devices; every experiment
stores :func:`machine_info` next to its numbers, taken when it starts, and adds
the load average at the end with :func:`finish_machine_info`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

__all__ = ["PROCESS_ENV_VARS", "code_version", "finish_machine_info", "load_average", "machine_info"]

#: Environment variables that change what a measurement measures: allocation, threading, XLA, JAX's
#: platform and precision, oneDNN's kernels. A list of names, not prefixes, so that an unrelated variable
#: that shares a prefix (e.g. a tool's TF_CLI_CONFIG_FILE) does not end up in the records.
PROCESS_ENV_VARS = (
    # allocation (experiments.common.cli.apply_malloc and the allocators it can preload)
    "GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_", "MALLOC_CONF",
    # threading
    "OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_WAIT_POLICY", "OMP_DYNAMIC", "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    # XLA and JAX
    "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR",
    "JAX_PLATFORMS", "JAX_ENABLE_X64", "JAX_DEFAULT_MATMUL_PRECISION", "CUDA_VISIBLE_DEVICES",
    # oneDNN (impl="onednn", and TensorFlow's own use of it when TFDS imports TensorFlow)
    "LSTM_JAX_ONEDNN_WEIGHTS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_VERBOSE",
    "TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL",
)


def code_version() -> dict:
    """The code a result came from: ``lstm_jax`` (the package version), ``git_commit`` and ``git_dirty``.

    ``git_commit`` is the clone's ``HEAD`` (None outside a git checkout, or without git);
    ``git_dirty`` whether tracked files differed from it, so a record from uncommitted code says so.
    """
    import lstm_jax

    root = Path(__file__).resolve().parents[2]
    info: dict = {"lstm_jax": lstm_jax.__version__, "git_commit": None, "git_dirty": None}
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=30)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, rounded to 0.01 (None where the OS has none)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(
    *,
    malloc: dict | None = None,
    matmul_gflops: float | None = None,
    libraries: Sequence[str] = (),
    **extra,
) -> dict:
    """What the machine and process were like when a measurement started.

    Keys: ``date_utc``, ``platform``, ``python``, ``processor``, ``cpu_count``,
    ``load_average_at_start`` (1, 5, 15 min), ``jax``, ``jax_backend``,
    ``devices``, ``process_env`` (those of :data:`PROCESS_ENV_VARS` that are set),
    ``lstm_jax``, ``git_commit``, ``git_dirty`` (:func:`code_version`),
    ``transparent_hugepage`` (Linux); and, when
    given, ``malloc`` (what ``--malloc`` did, from :func:`experiments.common.cli.apply_malloc`),
    ``matmul_gflops`` (the measured fp32 matmul rate), ``<library>`` versions
    for each name in ``libraries`` that is installed (read from its metadata, not imported), and any
    ``extra`` items.
    """
    import jax

    info = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_average(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_env": {k: os.environ[k] for k in PROCESS_ENV_VARS if k in os.environ},
        **code_version(),
    }
    try:
        info["transparent_hugepage"] = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        pass
    if malloc is not None:
        info["malloc"] = malloc
    if matmul_gflops is not None:
        info["matmul_gflops"] = matmul_gflops
    for name in libraries:  # from the installed metadata, without importing: importing torch loads its own
        try:  # GNU OpenMP, which oneDNN then shares (docs/onednn.md#speed)
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    info.update(extra)
    return info


def finish_machine_info(info: dict, *, matmul_gflops: float | None = None) -> dict:
    """Add ``load_average_at_end`` (and, when given, ``matmul_gflops_at_end``) to a :func:`machine_info` record.

    In place; returns it. A run that measured the matmul rate at its start
    passes the rate measured again at its end, so a machine that got busier
    meanwhile shows.
    """
    info["load_average_at_end"] = load_average()
    if matmul_gflops is not None:
        info["matmul_gflops_at_end"] = matmul_gflops
    return info
