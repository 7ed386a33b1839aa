"""Find oneDNN, compile ``ffi_rnn.cc`` once into a cache, load it and register its XLA FFI targets.

Where things come from:

* oneDNN: the PyPI wheels ``onednn-cpu-gomp`` (``libdnnl.so``, GNU OpenMP
  threading, CPU only) and ``onednn-devel-cpu-gomp`` (headers), the extra
  ``pip install -e ".[onednn]"``. Their files land under the environment's
  prefix (``<prefix>/lib``, ``<prefix>/include``); ``$DNNLROOT`` (oneDNN's own
  convention) names another install to use instead (and only it is searched).
* the XLA FFI headers: ``jax.ffi.include_dir()`` (shipped with jaxlib).
* the compiler: ``$CXX``, else ``g++``, else ``c++`` on the ``PATH``.

The library is built as ``<cache>/onednn-<key>/ffi_rnn.so`` where ``<cache>``
is ``$LSTM_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/lstm_jax``, else
``~/.cache/lstm_jax``, and ``<key>`` hashes the source, the jaxlib and oneDNN
versions and paths and the compiler, so a change of any of them builds anew
(about 3 s with g++ -O2). Concurrent builders (pytest-xdist workers) serialise
on a file lock there; the ``.so`` appears by an atomic rename, so a reader never
sees a half-written one. Any failure becomes :class:`OnednnUnavailable` with a
one-line reason (and the build log's path for a compiler error), never an
ImportError.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import site
import subprocess
import sys
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("ffi_rnn.cc")
FORWARD_TARGET = "lstm_jax_onednn_rnn_forward"
BACKWARD_TARGET = "lstm_jax_onednn_rnn_backward"
#: The wheels the ``onednn`` extra installs (named in the refusal when oneDNN is missing).
WHEELS = "onednn-cpu-gomp and onednn-devel-cpu-gomp"


class OnednnUnavailable(RuntimeError):
    """oneDNN, a compiler or the build is missing or failed; the message is one line saying which."""


def _prefixes() -> list[Path]:
    """Where to look: ``$DNNLROOT`` alone if set (an explicit choice), else this environment's prefixes."""
    if root := os.environ.get("DNNLROOT"):
        return [Path(root)]
    return [Path(r) for r in dict.fromkeys((sys.prefix, sys.base_prefix, site.getuserbase()))]


def find_onednn() -> tuple[Path, Path, str]:
    """``(include_dir, lib_dir, version)`` of the first prefix holding both ``libdnnl.so*`` and ``dnnl.hpp``."""
    for prefix in _prefixes():
        include, lib = prefix / "include", prefix / "lib"
        header = include / "oneapi" / "dnnl" / "dnnl.hpp"
        if header.is_file() and any(lib.glob("libdnnl.so*")):
            text = (include / "oneapi" / "dnnl" / "dnnl_version.h").read_text()
            parts = [re.search(rf"DNNL_VERSION_{p}\s+(\d+)", text) for p in ("MAJOR", "MINOR", "PATCH")]
            version = ".".join(m.group(1) if m else "?" for m in parts)
            return include, lib, version
    searched = ", ".join(str(p) for p in _prefixes())
    raise OnednnUnavailable(
        f"needs oneDNN's library and headers (pip install {WHEELS}, or the extra: pip install -e '.[onednn]'); "
        f"none under {searched}"
    )


def find_compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and (path := shutil.which(name)):
            return path
    raise OnednnUnavailable("needs a C++ compiler to build its FFI library ($CXX, g++ or c++ on the PATH); none found")


def cache_root() -> Path:
    if env := os.environ.get("LSTM_JAX_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lstm_jax"


def _command(compiler: str, include: Path, lib: Path, out: Path) -> list[str]:
    import jax

    return [
        compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-w",
        f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE), "-o", str(out),
        f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}",
    ]


def build() -> Path:
    """The compiled library's path, building it if this configuration has none yet (see the module docstring)."""
    import jaxlib

    include, lib, version = find_onednn()
    compiler = find_compiler()
    key_text = "\n".join([SOURCE.read_text(), jaxlib.__version__, version, str(include), str(lib), compiler])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    directory = cache_root() / f"onednn-{key}"
    target = directory / "ffi_rnn.so"
    if target.is_file():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same thing
            if target.is_file():
                return target
            tmp = directory / f"ffi_rnn.{os.getpid()}.so"
            log = directory / "build.log"
            cmd = _command(compiler, include, lib, tmp)
            print(f"lstm_jax: building the oneDNN kernel (impl='onednn'), once: {target}", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
            if proc.returncode != 0:
                raise OnednnUnavailable(
                    f"could not compile its FFI library ({Path(compiler).name} exit {proc.returncode}); log: {log}"
                )
            os.replace(tmp, target)
    except OSError as err:
        raise OnednnUnavailable(f"could not build its FFI library in {directory}: {err}") from None
    return target


class Library:
    """The loaded FFI library: its targets registered with XLA, and the trace-time queries."""

    def __init__(self, path: Path):
        import jax

        self.path = path
        self.lib = lib = ctypes.CDLL(str(path))
        lib.lstm_jax_onednn_workspace_bytes.restype = ctypes.c_int64
        lib.lstm_jax_onednn_workspace_bytes.argtypes = [ctypes.c_int32] * 4 + [ctypes.c_int64] * 4
        lib.lstm_jax_onednn_last_error.restype = ctypes.c_char_p
        lib.lstm_jax_onednn_describe.restype = ctypes.c_char_p
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(lib.LstmJaxOnednnForward), platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(lib.LstmJaxOnednnBackward), platform="cpu")

    def workspace_bytes(self, kind: int, reverse: bool, bf16: bool, blocked: bool, T: int, B: int, I: int, H: int) -> int:
        """Bytes of oneDNN's training workspace for one layer (builds and caches the primitives)."""
        n = self.lib.lstm_jax_onednn_workspace_bytes(kind, int(reverse), int(bf16), int(blocked), T, B, I, H)
        if n < 0:
            reason = self.lib.lstm_jax_onednn_last_error().decode()
            raise ValueError(f"layer impl 'onednn': oneDNN refused the shape (T={T}, B={B}, I={I}, H={H}): {reason}")
        return int(n)

    def describe(self) -> str:
        """oneDNN's version, CPU runtime and the ISA its kernels use (``isa=231`` is avx512_core_bf16)."""
        return self.lib.lstm_jax_onednn_describe().decode()


_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}


def load() -> Library:
    """The library, built and loaded once per process; raises :class:`OnednnUnavailable` (the same one each time)."""
    with _LOCK:
        if "result" not in _LOADED:
            try:
                _LOADED["result"] = Library(build())
            except OnednnUnavailable as err:
                _LOADED["result"] = err
            except Exception as err:  # noqa: BLE001 - e.g. a jax without jax.ffi, a library that will not load
                first_line = (str(err).splitlines() or [""])[0]
                _LOADED["result"] = OnednnUnavailable(
                    f"could not build or load its FFI library: {type(err).__name__}: {first_line}"
                )
        result = _LOADED["result"]
    if isinstance(result, OnednnUnavailable):
        raise result
    return result
