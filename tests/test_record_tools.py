"""The A/B tools: two source trees timed in turn, and before/after tables from benchmark JSON files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks import ab_trees
from experiments.benchmarks import compare_benchmarks

ROOT = Path(__file__).resolve().parents[1]
REFACTOR = ROOT / "results" / "refactor_benchmark"


def test_compare_benchmarks_rebuilds_the_recorded_refactor_table(capsys):
    before, after = sorted(map(str, REFACTOR.glob("before_?.json"))), sorted(map(str, REFACTOR.glob("after_?.json")))
    compare_benchmarks.main(["--before", *before, "--after", *after])
    printed = capsys.readouterr().out
    recorded = [l for l in (REFACTOR / "summary.md").read_text().splitlines() if l.startswith("| 1") or l.startswith("| 7")
                or l.startswith("| 2")]
    assert recorded and all(line in printed for line in recorded), printed


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_ab_trees_times_each_tree_in_its_own_process(tmp_path):
    out = tmp_path / "ab.json"
    ab_trees.main(["--trees", str(ROOT), ".", "--sizes", "4,2,3,8", "--rounds", "1", "--repeats", "1", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [r["tree"] for r in runs] == [str(ROOT), "."]
    assert all(r["fp32_ms"] > 0 and r["bf16_ms"] > 0 and r["matmul_gflops"] > 0 for r in runs)


def test_ab_trees_refuses_a_tree_without_the_library_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.ab_trees", "--trees",
                           str(tmp_path), str(ROOT), "--sizes", "4,2,3,8", "--rounds", "1", "--repeats", "1",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and str(tmp_path) in done.stderr, done.stderr
