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
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

__all__ = ["PROCESS_ENV_PREFIXES", "finish_machine_info", "load_average", "machine_info"]

#: Environment variables that change allocation or threading of the whole process.
PROCESS_ENV_PREFIXES = ("GLIBC_", "MALLOC_", "XLA_", "OMP_", "TF_")


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
    ``devices``, ``process_env`` (allocation/threading variables, see
    :data:`PROCESS_ENV_PREFIXES`), ``transparent_hugepage`` (Linux); and, when
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
        "process_env": {k: v for k, v in os.environ.items() if k.startswith(PROCESS_ENV_PREFIXES)},
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
