"""Find oneDNN, compile ``ffi_rnn.cc`` once into a cache, load it and register its XLA FFI targets.

Where things come from:

* oneDNN: the PyPI wheels ``onednn-cpu-gomp`` (``libdnnl.so``, GNU OpenMP
  threading, CPU only) and ``onednn-devel-cpu-gomp`` (headers), the extra
  ``pip install -e ".[onednn]"``. Their files land under the environment's
  prefix (``<prefix>/lib``, ``<prefix>/include``); ``$DNNLROOT`` (oneDNN's own
  convention) names another install to use instead (and only it is searched).
* the XLA FFI headers: ``jax.ffi.include_dir()`` (shipped with jaxlib).
* the compiler: ``$CXX``, else ``g++``, else ``c++`` on the ``PATH``.

The library is built as ``<cache>/onednn-<key>/ffi_rnn-<compiler>.so`` where
``<cache>`` is ``$LSTM_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/lstm_jax``, else
``~/.cache/lstm_jax``; ``<key>`` hashes the source, the jaxlib and oneDNN
versions and paths and the compiler flags, ``<compiler>`` the first line of
``$CXX --version``, so a change of any of them builds anew (about 3 s with
g++ -O2). A process whose compiler cannot be run (``CXX=false``) uses the
newest build of its key rather than none.

The cache trusts nothing it did not make: its directories are created ``0700``
and one not owned by the user, or writable by group or others, is refused with
one line (as pip refuses such a cache); the compiler writes to a ``mkstemp``
file that appears under its final name by an atomic rename, so a reader never
sees a half-written library; the lock and the log are opened without following
symlinks. A cached library that fails to load is rebuilt once, with a warning;
a library whose loaded ``libdnnl`` reports another version than the headers it
was compiled against is refused. Concurrent builders (pytest-xdist workers)
serialise on the file lock. Any failure becomes :class:`OnednnUnavailable` with
a one-line reason (and the build log's path for a compiler error), never an
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
import stat
import subprocess
import sys
import tempfile
import threading
import warnings
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
        try:
            if header.is_file() and any(lib.glob("libdnnl.so*")):
                text = (include / "oneapi" / "dnnl" / "dnnl_version.h").read_text()
            else:
                continue
        except (OSError, UnicodeError) as err:  # an unreadable header or directory: unavailable, not an ImportError
            raise OnednnUnavailable(f"could not read oneDNN's headers under {prefix}: {type(err).__name__}: {err}") from None
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


def compiler_version(compiler: str) -> str | None:
    """The first line of ``compiler --version``, or ``None`` when it does not run or says nothing."""
    try:
        proc = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (proc.stdout.splitlines() or [""])[0].strip()
    return first if proc.returncode == 0 and first else None


def cache_root() -> Path:
    if env := os.environ.get("LSTM_JAX_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lstm_jax"


def private_dir(path: Path, *, check_parent: bool = True) -> Path:
    """``path`` created ``0700`` if missing (its missing parents too), then checked: a directory owned by this
    user and not writable by group or others, else :class:`OnednnUnavailable` (another user could plant a
    library there). ``check_parent``: the directory above (the cache root above a build's) is checked first,
    so nothing is created inside a refused one."""
    for directory in ([path.parent, path] if check_parent else [path]):
        missing = []
        at = directory
        while not os.path.lexists(at) and at != at.parent:
            missing.append(at)
            at = at.parent
        for new in reversed(missing):
            try:
                os.mkdir(new, 0o700)
            except FileExistsError:
                pass  # made meanwhile by another process: checked below like any other
        info = os.stat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise OnednnUnavailable(f"refuses its build cache {directory}: not a directory")
        if info.st_uid != os.getuid():
            raise OnednnUnavailable(
                f"refuses its build cache {directory}: owned by uid {info.st_uid}, not by this user "
                f"(uid {os.getuid()}); set LSTM_JAX_CACHE_DIR to a directory of your own"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise OnednnUnavailable(
                f"refuses its build cache {directory}: writable by group or others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); chmod go-w it or set LSTM_JAX_CACHE_DIR"
            )
    return path


def _command(compiler: str, include: Path, lib: Path, out: Path | str) -> list[str]:
    import jax

    return [
        compiler, "-std=c++17", "-O2", "-fPIC", "-shared", "-w",
        f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE), "-o", str(out),
        f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}",
    ]


def _open_nofollow(path: Path, flags: int):
    """``open`` that refuses a symlink at ``path`` (O_NOFOLLOW), created 0600."""
    return os.fdopen(os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "r+" if flags & os.O_RDWR else "w")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _newest_build(directory: Path) -> Path | None:
    try:
        builds = [p for p in directory.glob("ffi_rnn-*.so") if p.is_file() and not p.is_symlink()]
    except OSError:
        return None
    return max(builds, key=lambda p: p.stat().st_mtime, default=None)


def build(force: bool = False) -> Path:
    """The compiled library's path, building it if this configuration has none yet (see the module docstring);
    ``force`` builds anew even if one is cached (after a cached one failed to load)."""
    import jaxlib

    include, lib, version = find_onednn()
    compiler = find_compiler()
    flags = " ".join(_command("<cxx>", include, lib, "<out>"))
    key = _short_hash("\n".join([SOURCE.read_text(), jaxlib.__version__, version, str(include), str(lib), flags]))
    try:
        directory = private_dir(cache_root() / f"onednn-{key}")
    except OSError as err:
        raise OnednnUnavailable(f"could not create its build cache under {cache_root()}: {err}") from None
    identity = compiler_version(compiler)
    if identity is None:  # a compiler that does not run cannot build: the newest build there is, if any
        if not force and (cached := _newest_build(directory)) is not None:
            return cached
        raise OnednnUnavailable(f"needs a working C++ compiler to build its FFI library; {compiler} --version failed")
    target = directory / f"ffi_rnn-{_short_hash(compiler + chr(10) + identity)}.so"
    if target.is_file() and not force:
        return target
    try:
        with _open_nofollow(directory / ".lock", os.O_RDWR | os.O_CREAT) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same thing
            if force:
                target.unlink(missing_ok=True)
            elif target.is_file():
                return target
            return _compile(compiler, include, lib, directory, target)
    except OSError as err:
        raise OnednnUnavailable(f"could not build its FFI library in {directory}: {err}") from None


def _compile(compiler: str, include: Path, lib: Path, directory: Path, target: Path) -> Path:
    """Compile into a ``mkstemp`` file in ``directory`` and rename it to ``target`` (under the caller's lock)."""
    fd, tmp = tempfile.mkstemp(prefix="ffi_rnn.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        log = directory / "build.log"
        cmd = _command(compiler, include, lib, tmp)
        print(f"lstm_jax: building the oneDNN kernel (impl='onednn'), once: {target}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        with _open_nofollow(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as out:
            out.write(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise OnednnUnavailable(
                f"could not compile its FFI library ({Path(compiler).name} exit {proc.returncode}); log: {log}"
            )
        os.chmod(tmp, 0o700)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class Library:
    """The loaded FFI library: its targets registered with XLA, and the trace-time queries."""

    def __init__(self, path: Path):
        import jax

        self.path = path
        self.lib = lib = ctypes.CDLL(str(path))
        for name in ("last_error", "describe", "built_version", "running_version"):
            getattr(lib, f"lstm_jax_onednn_{name}").restype = ctypes.c_char_p
        built, running = self.versions()
        if built != running:
            raise OnednnUnavailable(
                f"runs oneDNN {running} but its FFI library was built against oneDNN {built}'s headers "
                f"({path}); reinstall one oneDNN version ({WHEELS}) or point DNNLROOT at one install"
            )
        lib.lstm_jax_onednn_workspace_bytes.restype = ctypes.c_int64
        lib.lstm_jax_onednn_workspace_bytes.argtypes = [ctypes.c_int32] * 4 + [ctypes.c_int64] * 4
        for name in ("cached_plans", "max_plans"):
            getattr(lib, f"lstm_jax_onednn_{name}").restype = ctypes.c_int64
        jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(lib.LstmJaxOnednnForward), platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(lib.LstmJaxOnednnBackward), platform="cpu")

    def versions(self) -> tuple[str, str]:
        """``(built, running)``: the oneDNN version of the headers it was compiled with, and of the loaded libdnnl."""
        return self.lib.lstm_jax_onednn_built_version().decode(), self.lib.lstm_jax_onednn_running_version().decode()

    def workspace_bytes(self, kind: int, reverse: bool, bf16: bool, blocked: bool, T: int, B: int, I: int, H: int) -> int:
        """Bytes of oneDNN's training workspace for one layer (builds and caches the primitives)."""
        n = self.lib.lstm_jax_onednn_workspace_bytes(kind, int(reverse), int(bf16), int(blocked), T, B, I, H)
        if n < 0:
            reason = self.lib.lstm_jax_onednn_last_error().decode()
            cell = {0: "lstm", 1: "gru", 2: "rnn"}.get(kind, kind)
            raise ValueError(
                f"layer impl 'onednn': oneDNN could not plan the {cell} layer (T={T}, B={B}, I={I}, H={H}, "
                f"{'bf16' if bf16 else 'fp32'}): {reason}"
            )
        return int(n)

    def clear(self) -> None:
        """Frees every cached plan (primitives, kernels) and the pooled scratch memory."""
        self.lib.lstm_jax_onednn_clear()

    def cached_plans(self) -> tuple[int, int]:
        """``(plans cached now, the most it keeps)``."""
        return int(self.lib.lstm_jax_onednn_cached_plans()), int(self.lib.lstm_jax_onednn_max_plans())

    def describe(self) -> str:
        """oneDNN's version, CPU runtime and the ISA its kernels use (``isa=231`` is avx512_core_bf16)."""
        return self.lib.lstm_jax_onednn_describe().decode()


_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}


def _build_and_load() -> Library:
    """Build (or find) and load; a cached library that fails to load is rebuilt once, with a warning."""
    path = build()
    try:
        return Library(path)
    except OSError as err:  # ctypes could not load it: truncated or corrupt
        first_line = (str(err).splitlines() or [""])[0]
        warnings.warn(f"lstm_jax: the cached oneDNN FFI library {path} did not load ({first_line}); rebuilding it",
                      RuntimeWarning, stacklevel=3)
        return Library(build(force=True))


def load() -> Library:
    """The library, built and loaded once per process; raises :class:`OnednnUnavailable` (the same one each time)."""
    with _LOCK:
        if "result" not in _LOADED:
            try:
                _LOADED["result"] = _build_and_load()
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
