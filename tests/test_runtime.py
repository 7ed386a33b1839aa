"""tune_malloc: argument checks, and the effect it exists for (page faults per training step)."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_jax.runtime import MALLOPT_PARAMS, tune_malloc

ROOT = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# One training step of a 1-layer LSTM whose XLA scratch (~100 MiB of stacked
# residuals) is far above glibc's 32 MiB dynamic mmap threshold; prints the
# median of minor page faults per step over five steps after two warm-up
# steps. The median, because with the tuned heap an occasional step still
# grows it once (fragmentation: seen as one brk call in the third step of
# some runs) before it reaches its steady size; the claim is about the steady
# state, where the default keeps paying for fresh pages on every step.
PROBE = r"""
import json, resource, sys
if sys.argv[1] == "tuned":
    from lstm_jax.runtime import tune_malloc
    tune_malloc()
import jax, jax.numpy as jnp
from lstm_jax.layers import apply_stack, init_stack
params = init_stack(jax.random.PRNGKey(0), "lstm", 64, 512)
xs = jax.random.normal(jax.random.PRNGKey(1), (64, 96, 64))
grad = jax.jit(jax.grad(lambda p, x: jnp.mean(apply_stack("lstm", p, x, impl="scan")[0] ** 2)))
for _ in range(2):
    jax.block_until_ready(grad(params, xs))
faults = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(grad(params, xs))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps(sorted(faults)[2]))
"""


def _faults_per_step(mode):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # end-to-end; `python -m pytest -m slow`
@pytest.mark.skipif(not GLIBC, reason="mallopt needs glibc")
def test_tuned_malloc_removes_per_step_page_faults():
    default = _faults_per_step("default")
    tuned = _faults_per_step("tuned")
    # ~100 MiB of fresh pages per step by default is ~25k faults; tuned reuses the heap.
    assert default > 5000, default
    assert tuned < 0.05 * default, (tuned, default)


@pytest.mark.skipif(not GLIBC, reason="mallopt needs glibc")
def test_tune_malloc_reports_what_it_set():
    info = tune_malloc(dict(MALLOPT_PARAMS))
    assert info["applied"] and info["libc"].startswith("glibc")
    assert info["params"] == MALLOPT_PARAMS
    assert tune_malloc() is info  # same params again: nothing to do


@pytest.mark.parametrize(
    "params, match",
    [({"M_MMAP_MAX": 0}, "unknown malloc parameter 'M_MMAP_MAX'"), ({"M_ARENA_MAX": 0}, "M_ARENA_MAX must be"),
     ({"M_TRIM_THRESHOLD": 2.5}, "M_TRIM_THRESHOLD must be")],
)
def test_bad_params_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        tune_malloc(params)


LATE_PROBE = r"""
import json, sys, warnings
if sys.argv[1] == "late":
    import jax
    jax.devices()  # starts the backend (XLA's threads)
from lstm_jax.runtime import tune_malloc
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    info = tune_malloc()
print(json.dumps({"late": info["late"], "warnings": [str(w.message) for w in caught]}))
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt needs glibc")
@pytest.mark.parametrize("order", ["first", "late"])
def test_tune_malloc_after_jax_started_says_so(order):
    """Called after JAX's backend started, the settings miss XLA's threads' arenas: one warning, ``late`` recorded."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", LATE_PROBE, order], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["late"] is (order == "late")
    if order == "late":
        assert len(got["warnings"]) == 1 and "after JAX started its backend" in got["warnings"][0]
    else:
        assert got["warnings"] == []


@pytest.mark.skipif(not GLIBC, reason="mallopt needs glibc")
@pytest.mark.parametrize("command", [
    ["experiments.classification.mnist_lstm", "--source", "idx", "--data-dir", "/nonexistent/idx"],
    ["experiments.char_lm.char_lstm", "--text-file", "/nonexistent/corpus.txt"],
    ["experiments.long_range.long_range", "--replot"],
])
def test_training_scripts_tune_malloc_before_jax_starts(command, tmp_path):
    """Each training script sets malloc first: a late call would add tune_malloc's warning to the one error line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", *command, "--out", str(tmp_path / "run")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "tune_malloc" not in proc.stderr, proc.stderr[-2000:]
