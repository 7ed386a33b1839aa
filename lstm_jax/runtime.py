"""Process settings that make training steps faster on CPU: glibc's malloc.

Why this exists (measured with ``experiments/benchmarks/benchmark.py``, see the README's
performance section): a jitted training step on XLA:CPU allocates its
scratch buffers (the scan's stacked residuals, gradient temporaries) afresh on
every call. With glibc's defaults, buffers above the dynamic mmap threshold
(at most 32 MiB) are ``mmap``-ed and unmapped again on every step, and memory
freed by XLA's worker threads lives in per-thread arenas that glibc hands back
to the kernel; either way the next step touches fresh pages and pays one minor
page fault (a zeroed 4 KiB page) per page. At T=128, B=64, H=512 that is
60k-90k page faults per step for every JAX implementation and for PyTorch
alike; removing them made those steps 1.2-1.5x faster.

:func:`tune_malloc` keeps that memory in the process instead: one malloc
arena for all threads (``M_ARENA_MAX=1``), large blocks from the heap rather
than fresh ``mmap`` calls (``M_MMAP_THRESHOLD``), and freed heap memory not
trimmed back to the kernel (``M_TRIM_THRESHOLD``). After the first step the
process reuses the same pages and takes no page faults. The price is that the
process keeps its peak memory (RSS does not shrink after a large step), which
is what a training process wants anyway.

These are process-wide settings. Call :func:`tune_malloc` at the start of a
program, before JAX starts its backend (the first computation, or a call such
as ``jax.devices()`` or ``jax.process_index()``): XLA's worker threads pick
their arena when they first allocate and keep it. Called later, it still
applies but warns, and its record says ``"late": True``: the BiLSTM 2x128
Fashion-MNIST rows step (oneDNN, bf16, 2-core Zen 4) then ran at 9-10 steps/s
instead of 17-18. The experiment scripts call it first, unless run with
``--malloc default`` (:func:`add_malloc_argument`). In a benchmark every
implementation in the process sees the same settings, so comparisons stay
fair. The same effect without code, set before the process starts (checked
with ``tests/test_runtime.py``'s probe: ~43k page faults per step -> 0)::

    GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647

``mallopt`` is used here so that a script can choose from its own arguments.

On systems without glibc (macOS, musl) this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
import warnings

__all__ = ["tune_malloc", "MALLOPT_PARAMS", "add_malloc_argument", "apply_malloc_argument"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: What :func:`tune_malloc` sets by default: name -> value.
MALLOPT_PARAMS = {
    "M_ARENA_MAX": 1,
    "M_MMAP_THRESHOLD": 1 << 30,  # 1 GiB: every XLA scratch buffer comes from the heap
    "M_TRIM_THRESHOLD": (1 << 31) - 1,  # never give freed heap memory back
}
_NUMBERS = {"M_ARENA_MAX": _M_ARENA_MAX, "M_MMAP_THRESHOLD": _M_MMAP_THRESHOLD, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD}

_applied: dict | None = None


def _libc():
    if platform.system() != "Linux":
        return None, f"not Linux ({platform.system()})"
    libc_name, version = platform.libc_ver()
    if libc_name != "glibc":
        return None, f"C library is {libc_name or 'unknown'}, not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError) as e:
        return None, f"cannot load glibc's mallopt: {e}"
    return libc, f"glibc {version}"


def tune_malloc(params: dict | None = None) -> dict:
    """Set glibc's malloc so that repeated large JAX/XLA steps reuse memory (see module docstring).

    Args:
        params: ``{"M_ARENA_MAX": int, "M_MMAP_THRESHOLD": int, "M_TRIM_THRESHOLD": int}``
            (any subset); default :data:`MALLOPT_PARAMS`.

    Returns:
        ``{"applied": bool, "libc": str, "params": {name: value}, "reason": str, "late": bool}``;
        ``applied`` is False where glibc is absent (nothing changed) and the
        dict says why; ``late`` is True when JAX's backend had already started
        (then a one-line ``RuntimeWarning`` says so). Calling it again with the
        same params is a no-op.

    Raises:
        ValueError: an unknown parameter name or a non-positive value.
        RuntimeError: glibc rejected a value (``mallopt`` returned 0).
    """
    global _applied
    params = dict(MALLOPT_PARAMS if params is None else params)
    for name, value in params.items():
        if name not in _NUMBERS:
            raise ValueError(f"unknown malloc parameter {name!r}; choose from {sorted(_NUMBERS)}")
        if not isinstance(value, int) or value <= 0 or value >= 1 << 31:
            raise ValueError(f"{name} must be an int in [1, 2**31), got {value!r}")
    if _applied is not None and _applied["params"] == params:
        return _applied
    libc, desc = _libc()
    if libc is None:
        return {"applied": False, "libc": desc, "params": {}, "reason": f"left malloc alone: {desc}", "late": False}
    for name, value in params.items():
        if libc.mallopt(_NUMBERS[name], value) != 1:
            raise RuntimeError(f"{desc} rejected mallopt({name}, {value})")
    late = jax_backend_started()
    _applied = {"applied": True, "libc": desc, "params": params, "reason": "mallopt", "late": late}
    if late:
        warnings.warn("tune_malloc() was called after JAX started its backend: XLA's threads keep the malloc arenas "
                      "they already chose, and steps can run ~1.8x slower; call it first in the program",
                      RuntimeWarning, stacklevel=2)
    return _applied


def jax_backend_started() -> bool:
    """Whether JAX has started a backend in this process (read without importing JAX)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started()) if callable(started) else bool(getattr(bridge, "_backends", None))


def add_malloc_argument(parser) -> None:
    """Add ``--malloc {tuned,default}`` to an experiment's ``argparse`` parser (default ``tuned``)."""
    parser.add_argument(
        "--malloc", choices=("tuned", "default"), default="tuned",
        help="tuned: call lstm_jax.runtime.tune_malloc() first (no per-step page faults from XLA's scratch "
        "buffers; the process keeps its peak memory); default: leave glibc's malloc settings alone",
    )


def apply_malloc_argument(args) -> dict:
    """Act on ``args.malloc`` from :func:`add_malloc_argument`; returns what was done (for logs/JSON)."""
    if args.malloc == "tuned":
        return tune_malloc()
    return {"applied": False, "libc": _libc()[1], "params": {}, "reason": "--malloc default", "late": False}
