"""The benchmark scripts run end to end in quick mode, so they never rot."""

import json
import os

import pytest

from experiments.benchmarks import benchmark
from experiments.benchmarks import turns
from experiments.common import harness


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (the turns test below runs the benchmark's worker processes in the default run)
def test_benchmark_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark.main(["--quick", "--cells", "lstm,gru,rnn", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["matmul_gflops_peak_used"] > 0
    cells = {e["cell"] for e in data["results"]}
    assert cells == {"lstm", "gru", "rnn"}
    for entry in data["results"]:
        names = [r["impl"] for r in entry["rows"]]
        assert any(n.startswith("lstm_jax manual") for n in names)
        assert any(n.startswith("flax") for n in names)
        assert any(n.startswith("torch") for n in names)
        for r in entry["rows"]:
            assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
            assert r["gflops"] > 0 and r["compile_s"] >= 0 and r["minflt_per_step"] >= 0
            assert len(r["times_ms"]) == 2
    assert result["results"]


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (the turns test below runs the benchmark's worker processes in the default run)
def test_per_impl_processes_time_each_impl_alone_and_merge_the_ratios(tmp_path):
    """--processes per-impl: one child process per implementation (its own JSON beside --out), one merged record
    whose torch ratio is computed across the two processes' medians."""
    out = tmp_path / "sep.json"
    result = benchmark.main(["--quick", "--cells", "lstm", "--impls", "lib:scan", "torch", "--precisions", "fp32",
                             "--processes", "per-impl", "--out", str(out)])
    children = [json.loads((tmp_path / f"sep.{name}.json").read_text()) for name in ("scan", "torch")]
    assert [c["environment"]["args"]["impls"] for c in children] == [["lib:scan"], ["torch"]]
    # torch is imported only where it is timed (it brings its own GNU OpenMP, which oneDNN would then share)
    assert [c["environment"]["torch_imported"] for c in children] == [False, True]
    (scan,), (torch,) = (c["results"][0]["rows"] for c in children)
    merged = json.loads(out.read_text())
    assert merged == json.loads(json.dumps(result)) and merged["processes"] == "per-impl"
    rows = {r["impl"]: r for r in merged["results"][0]["rows"]}
    assert set(rows) == {scan["impl"], torch["impl"]}
    assert rows[scan["impl"]]["speed_vs_torch"] == torch["median_ms"] / scan["median_ms"]
    assert merged["environment"]["args"]["processes"] == "per-impl"


@pytest.mark.slow  # an end-to-end script or process run of 5-20 s; CI's slow tier runs it
def test_turns_time_each_impl_in_its_own_process_one_block_at_a_time(tmp_path, monkeypatch):
    """--processes turns: one worker process per implementation, each block timed in its worker, the rounds
    interleaved as in one process; torch is imported only in torch's worker. Every worker reports each block's
    start and end (one monotonic clock on the machine): no two blocks overlap, and each round (the warm-up
    included) has one block of each worker."""
    blocks = []  # (start, end, impl), every block reply the parent received
    ask = turns.Worker.ask

    def ask_and_note(worker, **request):
        reply = ask(worker, **request)
        if request["op"] == "block":
            blocks.append((reply["start"], reply["end"], worker.impl))
        return reply

    monkeypatch.setattr(turns.Worker, "ask", ask_and_note)
    out = tmp_path / "turns.json"
    benchmark.main(["--quick", "--cells", "lstm", "--impls", "lib:scan", "torch", "--precisions", "fp32",
                    "--processes", "turns", "--sizes", "32x8x16x64", "--out", str(out)])
    record = json.loads(out.read_text())
    workers = record["environment"]["workers"]
    assert [w["impl"] for w in workers] == ["lib:scan", "torch"]
    assert len({w["pid"] for w in workers} | {os.getpid()}) == 3  # two processes besides this one
    assert [w["torch_imported"] for w in workers] == [False, True]
    rows = {r["impl"]: r for r in record["results"][0]["rows"]}
    scan, torch = rows["lstm_jax scan"], rows["torch nn.LSTM"]
    assert len(scan["times_ms"]) == len(torch["times_ms"]) == 2 and scan["median_ms"] > 0
    assert scan["speed_vs_torch"] == torch["median_ms"] / scan["median_ms"]
    blocks.sort()
    assert len(blocks) == 2 * 3, blocks  # 2 workers x (the warm-up + 2 timed rounds)
    assert all(s < e <= next_s for (s, e, _), (next_s, _, _) in zip(blocks, blocks[1:])), blocks  # no overlap
    order = [impl for _, _, impl in blocks]
    assert all(sorted(order[i:i + 2]) == ["lib:scan", "torch"] for i in range(0, len(order), 2)), order


def test_flop_model():
    assert harness.forward_flops("lstm", 2, 3, 4, 5) == 2 * 2 * 3 * (4 + 5) * 4 * 5
    assert harness.train_flops("gru", 1, 1, 1, 1) == 3 * 2 * 2 * 3


def test_parse_sizes():
    assert benchmark.parse_sizes("128,64,128,256;28x128x28x128") == [(128, 64, 128, 256), (28, 128, 28, 128)]
