"""``impl="onednn"`` holds its input contract: no input reaches oneDNN unless it is what the plan expects.

Inputs the public API accepts and ``scan`` handles once crashed the process
(a 1-D ``w_x`` under ``jax.grad``: a heap overflow; ``B = 0``: SIGFPE), hung
it (a call in a child forked after one in the parent) or gave a silently
different answer (a bfloat16 bias, a float64 carry under x64). Each runs here
for the LSTM, the GRU and the RNN in one child process
(``tests/onednn_cases.py``, which says what each case checks), so a crash or
a hang fails these tests, bounded by a timeout, instead of the suite. Direct
FFI calls with buffers that do not fit the plan must come back as the FFI's
error naming the operand. The build cache's rules are checked in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from lstm_jax.cells import get_cell
from lstm_jax.impls import IMPLS, layer_impl, onednn
from lstm_jax.impls._onednn import build

ROOT = Path(__file__).resolve().parents[1]
REASON = IMPLS["onednn"].unavailable()
needs_onednn = pytest.mark.skipif(REASON is not None, reason=str(REASON))
CELLS = ("lstm", "gru", "rnn")
# Order matters only for what a crash hides: the cheap checks first, fork (which forks this child) last.
CASES = ("ffi_sizes", "bf16_bias", "f64_carry", "w_x_1d", "empty", "fork")
TIMEOUT_S = 240  # about 15 s on an idle 2-core machine; the fork case bounds its own child at 30 s


@pytest.fixture(scope="module")
def case_lines():
    """Runs every case in one child (an interpreter start and a jax import cost seconds each) -> its lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "onednn_cases.py"), *CASES], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"the cases' child hung past {TIMEOUT_S} s; its last lines:\n{out[-2000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in ("ok", "refused", "FAIL")]
    status = "" if proc.returncode == 0 else (
        f"the child exited with {proc.returncode} (a negative number is the signal that killed it) after:\n"
        + "\n".join(lines[-3:]) + "\nstderr: " + proc.stderr[-1500:]
    )
    return lines, status


def _lines_for(case_lines, case, cell):
    lines, status = case_lines
    mine = [line for line in lines if line.split(" ")[1:3] == [case, cell] or line.split(":")[0].split(" ")[1:3] == [case, cell]]
    assert mine, f"no result for {case} {cell}: {status or 'the child never ran it'}"
    return mine


@needs_onednn
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("case", ["bf16_bias", "f64_carry", "empty", "fork"])
def test_once_crashing_inputs_now_equal_scan(case_lines, case, cell):
    """bfloat16 bias, float64 carry (x64), an empty batch (forward and gradient), a forked child's call."""
    for line in _lines_for(case_lines, case, cell):
        assert line.startswith("ok "), line


@needs_onednn
@pytest.mark.parametrize("cell", CELLS)
def test_a_1d_w_x_under_grad_is_one_clear_error(case_lines, cell):
    width = {"lstm": "4 * hidden", "gru": "3 * hidden", "rnn": "hidden"}[cell]
    (line,) = _lines_for(case_lines, "w_x_1d", cell)
    assert line.startswith(f"refused w_x_1d {cell}: ValueError: {cell}: params['w_x'] must be 2-D, "
                           f"(input_size, {width}); got shape ("), line


@needs_onednn
@pytest.mark.parametrize("cell", CELLS)
def test_direct_ffi_calls_with_wrong_buffers_return_the_ffi_error(case_lines, cell):
    lines = _lines_for(case_lines, "ffi_sizes", cell)
    assert [line.split(" ")[3].rstrip(":") for line in lines] == ["bias", "h0", "w_layer", "y", "workspace", "dy"]
    for line in lines:
        assert line.startswith("ok "), line


def test_a_1d_w_x_is_refused_by_every_impl():
    """``check_params`` runs for every impl before any core: one line naming the param and its shape."""
    cell = get_cell("lstm")
    params = cell.init(jax.random.PRNGKey(0), 8, 2)  # I = 4H: w_x[0] has the length a 2-D w_x's width has
    params["w_x"] = params["w_x"][0]
    for name in IMPLS:
        if IMPLS[name].supports(cell):
            with pytest.raises(ValueError, match=r"^lstm: params\['w_x'\] must be 2-D, \(input_size, 4 \* hidden\); "
                                                 r"got shape \(8,\)$"):
                layer_impl(name)(cell, params, jnp.ones((1, 3, 8)), cell.zeros_carry(2, (1,)))


# --------------------------------------------------------------------------- plans


@needs_onednn
def test_the_plan_cache_is_bounded_and_clear_frees_it():
    lib = build.load()
    onednn.clear()
    assert lib.cached_plans() == (0, 64)
    for T in range(1, 67):  # 66 shapes: the two least recently used are evicted
        lib.workspace_bytes(2, False, False, False, T, 1, 1, 1)
    assert lib.cached_plans() == (64, 64)
    onednn.clear()
    assert lib.cached_plans()[0] == 0
    cell = get_cell("rnn")
    params = cell.init(jax.random.PRNGKey(0), 2, 3)
    ys, _ = layer_impl("onednn")(cell, params, jnp.ones((1, 4, 2)), cell.zeros_carry(3, (1,)))  # plans anew
    ys_ref, _ = layer_impl("scan")(cell, params, jnp.ones((1, 4, 2)), cell.zeros_carry(3, (1,)))
    assert float(jnp.max(jnp.abs(ys - ys_ref))) < 1e-5 and lib.cached_plans()[0] == 1


@needs_onednn
def test_a_refused_plan_says_its_cause():
    with pytest.raises(ValueError, match=r"^layer impl 'onednn': oneDNN could not plan the 7 layer \(T=1, B=1, I=1, "
                                         r"H=1, fp32\): invalid shape or dtype: cell 7"):
        build.load().workspace_bytes(7, False, False, False, 1, 1, 1, 1)


# --------------------------------------------------------------------------- the build cache


def _onednn_found() -> bool:
    try:
        build.find_onednn()
    except build.OnednnUnavailable:
        return False
    return True


needs_headers = pytest.mark.skipif(not _onednn_found(), reason="needs oneDNN's headers (the onednn extra)")


@needs_headers
def test_a_group_writable_cache_is_refused(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o775)
    monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(cache))
    with pytest.raises(build.OnednnUnavailable, match=rf"^refuses its build cache {cache}: writable by group or "
                                                      rf"others \(mode 0775\); chmod go-w it"):
        build.build()
    assert not list(cache.iterdir())  # refused before anything was written into it


@needs_headers
@pytest.mark.skipif(os.getuid() != 0, reason="handing a directory to another user needs root")
def test_a_cache_owned_by_another_user_is_refused(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 4321, -1)
    monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(cache))
    with pytest.raises(build.OnednnUnavailable, match=rf"^refuses its build cache {cache}: owned by uid 4321, not by"):
        build.build()


@needs_headers
def test_new_cache_directories_are_private(monkeypatch, tmp_path):
    """Made 0700; a compiler that fails (here a script that answers --version only) leaves its log there."""
    fake = tmp_path / "fake-cxx"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "fake-cxx 1.0"; exit 0; }\necho "fake: no" >&2\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "a" / "b"))
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(build.OnednnUnavailable, match=r"could not compile its FFI library \(fake-cxx exit 3\); log: "):
        build.build()
    for directory in (tmp_path / "a", tmp_path / "a" / "b", *(tmp_path / "a" / "b").iterdir()):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    (log,) = (tmp_path / "a" / "b").glob("onednn-*/build.log")
    assert "fake: no" in log.read_text() and log.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.rglob("ffi_rnn*"))  # neither the library nor the temporary file is left


@needs_headers
def test_the_log_is_not_written_through_a_symlink(monkeypatch, tmp_path):
    fake = tmp_path / "fake-cxx"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "fake-cxx 1.0"; exit 0; }\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(fake))
    with pytest.raises(build.OnednnUnavailable, match="exit 3"):
        build.build()
    (log,) = (tmp_path / "cache").glob("onednn-*/build.log")
    log.unlink()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    log.symlink_to(victim)
    with pytest.raises(build.OnednnUnavailable, match=r"could not build its FFI library in .*: \[Errno 40\]"):
        build.build()
    assert victim.read_text() == "keep"


@needs_onednn
def test_a_corrupt_cached_library_is_rebuilt_once_with_a_warning(tmp_path):
    """A child with a private cache holding a corrupt library of the right key: a warning, a rebuild, a load."""
    good = build.load().path
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / good.parent.name).mkdir(mode=0o700)
    corrupt = cache / good.parent.name / good.name
    corrupt.write_bytes(b"not a shared library")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "from lstm_jax.impls._onednn import build\n"
            "lib = build.load(); print('loaded', lib.path, lib.describe())")
    env = {**os.environ, "LSTM_JAX_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"the cached oneDNN FFI library {corrupt} did not load (" in proc.stderr
    assert "); rebuilding it" in proc.stderr
    assert proc.stdout.startswith(f"loaded {corrupt} oneDNN ")
    assert corrupt.read_bytes()[:4] == b"\x7fELF"


@needs_headers
def test_an_unreadable_header_makes_the_impl_unavailable_not_an_import_error(monkeypatch, tmp_path):
    (tmp_path / "include" / "oneapi" / "dnnl").mkdir(parents=True)
    (tmp_path / "include" / "oneapi" / "dnnl" / "dnnl.hpp").write_text("")
    (tmp_path / "include" / "oneapi" / "dnnl" / "dnnl_version.h").mkdir()  # reading it raises IsADirectoryError
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libdnnl.so").write_text("")
    monkeypatch.setenv("DNNLROOT", str(tmp_path))
    with pytest.raises(build.OnednnUnavailable, match=rf"^could not read oneDNN's headers under {tmp_path}: IsADirectoryError"):
        build.find_onednn()
    assert onednn.precisions() == ("fp32",)
