"""``experiments/benchmarks/gpu_check.sh``, the one-shot GPU run, stays runnable: it parses, and it measures what the issue asked."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from experiments.benchmarks import benchmark
from lstm_jax.impls import IMPLS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "gpu_check.sh"
# T, B, I, H of the GPU issue, the last FlashRNN's published configuration (T=1024, B=16, H=768).
ISSUE_SIZES = [
    (100, 256, 65, 1024), (512, 128, 256, 512), (256, 512, 512, 1024), (784, 256, 1, 128), (28, 1024, 28, 128),
    (1024, 16, 768, 768),
]


def _assignment(name: str) -> str:
    match = re.search(rf'^{name}="([^"]*)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{SCRIPT.name} has no line {name}=\"...\""
    return match.group(1)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_benchmark_sizes_and_impls_are_the_issues():
    assert benchmark.parse_sizes(_assignment("SIZES")) == ISSUE_SIZES
    impls = _assignment("BENCH_IMPLS").split(",")
    assert impls == ["lib:scan", "lib:manual", "lib:cudnn", "flax", "torch-cuda", "jax-cudnn"]
    assert all(spec[4:] in IMPLS for spec in impls if spec.startswith("lib:"))
    for test_file in _assignment("GPU_TESTS").split():
        assert (ROOT / test_file).is_file(), test_file


def test_header_documents_the_quick_mode_and_the_output_folder():
    header = SCRIPT.read_text().split("\nset -u", 1)[0]
    assert "GPU_CHECK_QUICK=1" in header and "runs/gpu_check" in header and "$OUT" in header
