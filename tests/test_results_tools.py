"""The tools that turn runs into reported results: record paths, the seed runner, the results table, --impl auto."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from experiments.benchmarks import benchmark
from experiments.common import harness
from experiments.benchmarks import merge_benchmarks
from experiments.tools import results_table, seeds
from experiments.common import fastest
from experiments.tools.records import RecordError, lookup, split_path
from lstm_jax.impls import IMPLS

ROOT = Path(__file__).resolve().parents[1]

RECORD = {
    "final": {"test": {"nats_per_char": 1.5}},
    "runs": [{"cell": "lstm", "T": 100, "final_test": 0.001}, {"cell": "rnn", "T": 100, "final_test": 0.16},
             {"cell": "lstm", "T": 400, "final_test": 0.004}],
    "metrics": [{"path": "final.test.nats_per_char", "mean": 1.49}],
    "results": [{"size": {"T": 28, "H": 128}, "ms": 12.0}, {"size": {"T": 128, "H": 128}, "ms": 75.3}],
}


def test_lookup_follows_keys_selectors_and_indices():
    assert split_path("metrics[path=a.b].mean") == ["metrics[path=a.b]", "mean"]
    assert lookup(RECORD, "final.test.nats_per_char") == 1.5
    assert lookup(RECORD, "runs[cell=lstm,T=400].final_test") == 0.004
    assert lookup(RECORD, "runs[1].cell") == "rnn" and lookup(RECORD, "runs[-1].T") == 400
    assert lookup(RECORD, "metrics[path=final.test.nats_per_char].mean") == 1.49
    assert lookup(RECORD, "results[size.T=128,size.H=128].ms") == 75.3


@pytest.mark.parametrize("path, message", [
    ("final.val", r"no key 'val' in final \(has \['test'\]\)"),
    ("final.tests", r"no key 'tests' in final \(did you mean 'test'\?\)"),  # a near miss is named
    ("runs[cell=lstm].final_test", r"matches 2 of 3 entries"),
    ("runs[cell=gru].final_test", r"matches 0 of 3"),
    ("runs[7]", r"index 7 out of range"),
    ("final[0]", r"selects from a list, found dict"),
    ("runs[cell].T", r"not key=value"),
    ("final..test", r"empty key"),
    ("runs[cell=lstm", r"unbalanced"),
])
def test_lookup_names_what_is_wrong(path, message):
    with pytest.raises(RecordError, match=message):
        lookup(RECORD, path)


# --------------------------------------------------------------------------- seed runner

# The documented form of a multi-seed result: seeds.py -- -m <script> --config FILE [overrides].
QUICK_CONFIG = ROOT / "configs" / "shakespeare_quick.toml"
CHAR_QUICK = ["-m", "experiments.char_lm.char_lstm", "--config", str(QUICK_CONFIG), "--dataset", "zen", "--steps", "12",
              "--hidden", "8", "--seq-len", "8", "--batch-size", "4", "--no-progress", "--eval-every", "12",
              "--length", "10", "--impl", "scan", "--precision", "fp32"]


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (the refusal test below runs the seed runner in the default run)
def test_seed_runner_reports_each_seed_and_their_mean(tmp_path, capsys):
    out = tmp_path / "sweep"
    summary = seeds.main(["--seeds", "3,5", "--metrics", "final.test.nats_per_char", "steps_done",
                          "--out", str(out), "--", *CHAR_QUICK])
    per_seed = [json.loads((out / f"seed_{s}" / "results.json").read_text()) for s in (3, 5)]
    losses = [r["final"]["test"]["nats_per_char"] for r in per_seed]
    assert losses[0] != losses[1]  # the seed reached the run: different init and data order
    saved = json.loads((out / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    loss = saved["metrics"][0]
    assert loss["path"] == "final.test.nats_per_char" and loss["values"] == losses and loss["n"] == 2
    assert loss["mean"] == pytest.approx(statistics.fmean(losses))
    assert loss["std"] == pytest.approx(statistics.stdev(losses))
    assert saved["metrics"][1]["values"] == [12, 12] and saved["metrics"][1]["std"] == 0.0
    assert [r["seed"] for r in saved["runs"]] == [3, 5]
    # the config file reached each run, and the flags after it override it
    config = per_seed[1]["config"]
    assert config["config"] == str(QUICK_CONFIG)
    assert (config["seed"], config["hidden"], config["learning_rate"]) == (5, 8, 0.015)
    table = (out / "seeds.md").read_text()
    assert f"{loss['mean']:.4g} ± {loss['std']:.4g} (2)" in table and "| seed 3 | seed 5 |" in table
    assert "[seed 5] " in capsys.readouterr().out  # each run's output, prefixed

    # --reuse keeps finished seeds (no rerun: the file is not rewritten) and runs the rest
    before = (out / "seed_3" / "results.json").stat().st_mtime_ns
    again = seeds.main(["--seeds", "3", "--metrics", "steps_done", "--out", str(out), "--reuse", "--", *CHAR_QUICK])
    assert (out / "seed_3" / "results.json").stat().st_mtime_ns == before
    assert again["metrics"][0]["values"] == [12]
    # --name writes a second summary beside the first (here: the full-context loss every run also reports)
    first = (out / "seeds.json").read_text()
    stream = seeds.main(["--seeds", "3,5", "--metrics", "final.test.stream_nats_per_char", "--name", "stream",
                         "--out", str(out), "--reuse", "--", *CHAR_QUICK])
    assert (out / "seeds.json").read_text() == first
    assert stream["metrics"][0]["values"] == [r["final"]["test"]["stream_nats_per_char"] for r in per_seed]
    assert "`final.test.stream_nats_per_char`" in (out / "stream.md").read_text()
    # a metric path the results do not have: one line naming the seed and the path
    with pytest.raises(SystemExit, match=r"seed 3: final.nope: no key 'nope'"):
        seeds.main(["--seeds", "3", "--metrics", "final.nope", "--out", str(out), "--reuse", "--", *CHAR_QUICK])


def test_seed_runner_refuses_bad_commands_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match="must not set --seed"):
        seeds.main(["--metrics", "x", "--out", str(tmp_path), "--", "-m", "experiments.char_lm.char_lstm", "--seed", "1"])
    with pytest.raises(SystemExit, match="no experiment script"):
        seeds.main(["--metrics", "x", "--out", str(tmp_path), "--", "experiments/nope.py"])
    # a run that fails stops the sweep, naming the seed and its log
    with pytest.raises(SystemExit, match=r"seed 0: -m experiments.char_lm.char_lstm exited with status 1 \(log: .*seeds_stdout.log\)"):
        seeds.main(["--seeds", "0", "--metrics", "x", "--out", str(tmp_path / "f"), "--",
                    "-m", "experiments.char_lm.char_lstm", "--hidden", "0"])


def test_summaries_leave_missing_values_out_of_the_mean():
    s = seeds.summarize([1.0, None, 3.0])
    assert (s["n"], s["missing"], s["mean"], s["min"], s["max"]) == (2, 1, 2.0, 1.0, 3.0)
    assert seeds.summarize([None])["n"] == 0 and "mean" not in seeds.summarize([None])


# --------------------------------------------------------------------------- the results table (docs/results.md)


def _manifest(tmp_path, entries):
    path = tmp_path / "glance.json"
    path.write_text(json.dumps(entries))
    return path


def test_results_table_is_built_from_the_json_it_reads(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text(json.dumps(RECORD))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "char.toml").write_text("hidden = 8\n")
    entries = [
        {"experiment": "char", "file": "r/a.json", "config": "configs/char.toml", "values": {"test": "final.test.nats_per_char"},
         "result": "test {test:.3f} nats/char", "target": "≤ 1.50", "goal": {"value": "test", "max": 1.50},
         "section": "[s](#s)"},
        {"experiment": "adding T=400", "file": "r/a.json",
         "values": {"lstm": "runs[cell=lstm,T=400].final_test", "rnn": "runs[cell=rnn,T=100].final_test",
                    "worst": {"max": ["runs[0].final_test", "runs[2].final_test"]},
                    "ratio": {"ratio": ["results[1].ms", "results[0].ms"]}},
         "result": "LSTM {lstm:.4f}, RNN {rnn:.3f}, worst {worst:.3f}, {ratio:.2f}x", "target": "≤ 0.01", "goal": {"value": "lstm", "max": 0.001},
         "section": "[t](#t)"},
    ]
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text(f"intro\n{results_table.START}\nold table\n{results_table.END}\nrest\n")
    args = ["--manifest", str(_manifest(tmp_path, entries)), "--doc", str(page), "--root", str(tmp_path)]
    with pytest.raises(SystemExit, match="differs"):
        results_table.main([*args, "--check"])
    results_table.main(args)
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{results_table.END}\nrest\n") and "old table" not in text
    # file and config are linked relative to the page's folder (docs/), not the repository root
    assert ("| char | test 1.500 nats/char | ≤ 1.50 | met | [s](#s) | [char.toml](../configs/char.toml) "
            "| [a.json](../r/a.json) |") in text
    assert "| adding T=400 | LSTM 0.0040, RNN 0.160, worst 0.004, 6.27x | ≤ 0.01 | **not met** | [t](#t) | – |" in text
    results_table.main([*args, "--check"])  # now up to date

    # a value that changes in the run's JSON makes the page stale
    changed = dict(RECORD, final={"test": {"nats_per_char": 1.7}})
    (tmp_path / "r" / "a.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit, match="differs"):
        results_table.main([*args, "--check"])


@pytest.mark.parametrize("entry, message", [
    ({"file": "r/a.json"}, r"lacks \["),
    ({"experiment": "x", "file": "r/none.json", "values": {}, "result": "", "target": "", "section": ""},
     r"none.json: no such file"),
    ({"experiment": "x", "file": "r/a.json", "values": {"v": "final.val"}, "result": "{v}", "target": "",
      "section": ""}, r"'x': r/a.json: final.val: no key 'val'"),
    ({"experiment": "x", "file": "r/a.json", "values": {"v": "final.test.nats_per_char"}, "result": "{w}",
      "target": "", "section": ""}, r"does not fit the values"),
    ({"experiment": "x", "file": "r/a.json", "values": {"v": {"median": ["final"]}}, "result": "{v}",
      "target": "", "section": ""}, r"a value is a path or one of \{min, max, mean, ratio"),
    ({"experiment": "x", "file": "r/a.json", "config": "configs/gone.toml", "values": {}, "result": "",
      "target": "", "section": ""}, r"'x': config configs/gone.toml does not exist"),
])
def test_results_table_names_a_broken_entry(tmp_path, entry, message):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "a.json").write_text(json.dumps(RECORD))
    with pytest.raises(SystemExit, match=message):
        results_table.main(["--manifest", str(_manifest(tmp_path, [entry])), "--root", str(tmp_path), "--print"])


BENCH = {"results": [
    {"cell": "lstm", "size": {"T": 28, "B": 4, "I": 8, "H": 16}, "rows": [
        {"impl": "lstm_jax manual", "median_ms": 10.0, "fraction_of_matmul_peak": 0.25},
        {"impl": "lstm_jax onednn", "median_ms": 5.0}, {"impl": "torch nn.LSTM", "median_ms": 6.0},
        {"impl": "lstm_jax onednn bf16", "median_ms": 4.0}, {"impl": "torch nn.LSTM autocast-bf16", "median_ms": 2.0}]},
    {"cell": "lstm", "size": {"T": 100, "B": 4, "I": 8, "H": 16}, "rows": [
        {"impl": "lstm_jax manual", "median_ms": 30.0, "fraction_of_matmul_peak": 0.5},
        {"impl": "lstm_jax onednn", "median_ms": 20.0}]},
]}


def _tables_repo(tmp_path, tables, page_text):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench.json").write_text(json.dumps(BENCH))
    (tmp_path / "results" / "a.json").write_text(json.dumps(RECORD))
    (tmp_path / "results" / "tables.json").write_text(json.dumps(tables))
    (tmp_path / "results" / "glance.json").write_text(json.dumps([
        {"experiment": "x", "file": "results/a.json", "values": {}, "result": "r", "target": "t", "section": "s"}]))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text(f"{results_table.START}\n{results_table.END}\n")
    (tmp_path / "docs" / "speed.md").write_text(page_text)
    return ["--root", str(tmp_path), "--manifest", str(tmp_path / "results" / "glance.json"),
            "--doc", str(tmp_path / "docs" / "results.md")]


def test_generated_speed_and_rows_tables_follow_their_records(tmp_path):
    """The speed tables and free rows (results/tables.json) are computed from the benchmark records, and
    --check fails when a page or a record changes (one figure per fact)."""
    tables = [
        {"id": "speed", "page": "docs/speed.md", "kind": "speed", "file": "results/bench.json", "cells": ["lstm"],
         "precisions": ["fp32", "bf16"],
         "columns": [{"head": "manual ms", "ms": "manual"}, {"head": "torch ms", "ms": "torch"},
                     {"head": "onednn vs torch", "speedup": ["onednn", "torch"], "bold": True},
                     {"head": "peak", "peak": "manual"}]},
        {"id": "ranges", "page": "docs/speed.md", "kind": "rows", "files": {"b": "results/bench.json", "a": "results/a.json"},
         "header": ["what", "value"],
         "rows": [{"cells": ["onednn vs manual", "{lo:.2f}–{hi:.2f}× (test {t})"],
                   "values": {"lo": {"min_speedup": {"file": "b", "cell": "lstm", "impl": "onednn", "over": "manual"}},
                              "hi": {"max_speedup": {"file": "b", "cell": "lstm", "impl": "onednn", "over": "manual"}},
                              "t": "a:final.test.nats_per_char"}}]},
    ]
    page = ("intro\n<!-- table:speed:start -->\nstale\n<!-- table:speed:end -->\nmiddle\n"
            "<!-- table:ranges:start -->\n<!-- table:ranges:end -->\nend\n")
    args = _tables_repo(tmp_path, tables, page)
    with pytest.raises(SystemExit, match="differs"):
        results_table.main([*args, "--check"])
    results_table.main(args)
    text = (tmp_path / "docs" / "speed.md").read_text()
    assert "| lstm | 28,4,8,16 | fp32 | 10.0 | 6.0 | **1.20×** | 25% |" in text
    assert "| lstm | 28,4,8,16 | bf16 | – | 2.0 | **0.50×** | – |" in text  # rows the record lacks are dashes
    assert "| lstm | 100,4,8,16 | fp32 | 30.0 | – | – | 50% |" in text
    assert "| onednn vs manual | 1.50–2.00× (test 1.5) |" in text
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n") and "stale" not in text
    results_table.main([*args, "--check"])
    # a figure edited by hand on the page, or a record that changes, fails the check
    (tmp_path / "docs" / "speed.md").write_text(text.replace("**1.20×**", "**1.30×**"))
    with pytest.raises(SystemExit, match="differs"):
        results_table.main([*args, "--check"])
    results_table.main(args)
    BENCH_CHANGED = json.loads(json.dumps(BENCH))
    BENCH_CHANGED["results"][1]["rows"][1]["median_ms"] = 10.0
    (tmp_path / "results" / "bench.json").write_text(json.dumps(BENCH_CHANGED))
    with pytest.raises(SystemExit, match="differs"):
        results_table.main([*args, "--check"])


SWEEP = {"runs": [{"cell": "lstm", "T": 100, "final_test": 0.0007, "solved_at_step": 1900},
                  {"cell": "rnn", "T": 100, "final_test": 0.1624, "solved_at_step": None},
                  {"cell": "lstm", "T": 200, "final_test": 0.1662, "solved_at_step": None}]}
GRID = {"id": "grid", "page": "docs/speed.md", "kind": "grid", "file": "results/sweep.json",
        "select": "runs[cell={row},T={column}]", "rows": ["lstm"], "columns": [100, 200], "row_head": "cell",
        "column_label": "T={column}", "values": {"err": "final_test", "at": "solved_at_step"},
        "cell": "{err:.4f} ({at})", "bold": {"value": "err", "max": 0.01}, "bold_cell": "**{err:.4f}** ({at})"}


def test_a_grid_table_reads_one_entry_per_row_and_column(tmp_path):
    """A long_range sweep as a cell x T grid: bold where the value meets the bound, a null as a dash, and a
    (row, column) the record lacks is an error naming the selection, not an empty cell."""
    args = _tables_repo(tmp_path, [GRID], "<!-- table:grid:start -->\n<!-- table:grid:end -->\n")
    (tmp_path / "results" / "sweep.json").write_text(json.dumps(SWEEP))
    results_table.main(args)
    text = (tmp_path / "docs" / "speed.md").read_text()
    assert "| cell | T=100 | T=200 |\n|---|---|---|\n| lstm | **0.0007** (1900) | 0.1662 (—) |\n" in text
    (tmp_path / "results" / "tables.json").write_text(json.dumps([{**GRID, "rows": ["lstm", "rnn"]}]))
    with pytest.raises(SystemExit, match=r"table 'grid': runs\[cell=rnn,T=200\].*matches 0 of 3"):
        results_table.main(args)


@pytest.mark.parametrize("table, message", [
    ({"id": "t", "page": "docs/speed.md", "kind": "pie"}, r"table 't': kind is one of"),
    ({"id": "t", "page": "docs/gone.md", "kind": "rows", "header": ["a"], "rows": []}, r"page 'docs/gone.md' does not exist"),
    ({"id": "t", "page": "docs/speed.md", "kind": "rows", "files": {"b": "results/bench.json"}, "header": ["a"],
      "rows": [{"cells": ["{x}"], "values": {"x": {"min_speedup": {"file": "b", "cell": "gru", "impl": "onednn",
                                                                   "over": "manual"}}}}]}, r"no gru entries"),
    ({"id": "t", "page": "docs/speed.md", "kind": "rows", "header": ["a", "b"], "rows": [{"cells": ["x"]}]},
     r"row 0 has 1 cells for 2 columns"),
    ({"id": "t", "page": "docs/speed.md", "kind": "speed", "file": "results/bench.json", "cells": ["lstm"],
      "columns": [{"head": "x", "mean": "manual"}]}, r"a speed column is"),
])
def test_a_broken_generated_table_is_named(tmp_path, table, message):
    args = _tables_repo(tmp_path, [table], "<!-- table:t:start -->\n<!-- table:t:end -->\n")
    with pytest.raises(SystemExit, match=message):
        results_table.main([*args, "--check"])


def test_the_results_page_table_matches_the_committed_runs():
    """docs/results.md's table is exactly what results/glance.json's runs give, and every table of
    results/tables.json (the speed tables of performance.md and onednn.md, the README's results rows) is
    exactly what its records give."""
    results_table.main(["--check"])


def test_every_results_row_names_an_existing_config_file():
    """Each row of the results table is reproducible from one config file (issue 29)."""
    manifest = json.loads((ROOT / "results" / "glance.json").read_text())
    missing = [e["experiment"] for e in manifest if not (ROOT / e.get("config", "-")).is_file()]
    assert not missing, f"results rows without a config file: {missing}"


# --------------------------------------------------------------------------- --impl auto


def test_auto_times_every_candidate_and_takes_the_fastest(monkeypatch):
    """Real candidates, compiled and run, with scripted step times through a patched timer: ``scan/bf16``, the
    last in preference, has the smallest median (despite one slow call) and must be chosen; ``manual/fp32`` has
    the smallest single call but not the smallest median. Each call's candidate is read from the loss it
    returns (a constant offset per candidate, so the gradient is the real one), not from the call order."""
    pairs = fastest.candidates("lstm")
    labels = [f"{i}/{p}" for i, p in pairs]
    assert {"manual/fp32", "manual/bf16", "scan/fp32", "scan/bf16"} <= set(labels) and labels[-1] == "scan/bf16"
    script = {label: [50.0] * 5 for label in labels}
    script["manual/fp32"] = [5.0, 60.0, 60.0, 60.0, 60.0]
    script["scan/bf16"] = [30.0, 30.0, 300.0, 30.0, 30.0]
    built, calls = [], {label: 0 for label in labels}
    real_problem = fastest.layer_problem

    def tagged_problem(cell, impl, T, B, I, H):
        loss, params, xs = real_problem(cell, impl, T, B, I, H)
        built.append(f"{impl.name}/{impl.precision}")
        k = len(built) - 1
        return (lambda p, x: loss(p, x) + 1000.0 * k), params, xs  # mean(ys**2) < 1: k = value // 1000

    def scripted_timer(fn, repeats):
        times = []
        for _ in range(repeats):
            value, _grads = fn()
            label = built[int(float(value) // 1000)]
            times.append(script[label][calls[label]] / 1e3)
            calls[label] += 1
        return times

    monkeypatch.setattr(fastest, "layer_problem", tagged_problem)
    monkeypatch.setattr(fastest, "time_calls", scripted_timer)
    choice = fastest.choose("lstm", 32, 16, 32, 96)
    assert sorted(built) == sorted(labels) and calls == {label: 5 for label in labels}  # every one, every round
    assert choice["step_ms"] == {label: statistics.median(t) for label, t in script.items()}
    assert (choice["impl"], choice["precision"], choice["chosen_by"]) == ("scan", "bf16", "measured")
    given = fastest.choose("lstm", 32, 16, 32, 96, impl="scan", precision="fp32")
    assert (given["impl"], given["precision"], given["chosen_by"], given["step_ms"]) == ("scan", "fp32", "given", {})


def test_auto_prefers_the_earlier_candidate_unless_a_later_one_wins_by_more_than_noise():
    pairs = [("manual", "fp32"), ("manual", "bf16"), ("scan", "fp32")]
    ms = {"manual/fp32": 100.0, "manual/bf16": 99.0, "scan/fp32": 60.0}
    assert fastest.pick(pairs, ms) == ("scan", "fp32")  # 40% faster: measured, not noise
    ms["scan/fp32"] = 98.0
    assert fastest.pick(pairs, ms) == ("manual", "fp32")  # within 3% of the fastest: the preferred one
    ms["manual/fp32"] = 110.0
    assert fastest.pick(pairs, ms) == ("manual", "bf16")


def test_auto_candidates_follow_the_cell():
    assert fastest.candidates("min_gru")[0] == ("parallel", "fp32")
    onednn = ["onednn"] * len(IMPLS["onednn"].precisions) if IMPLS["onednn"].unavailable() is None else []
    assert [i for i, _ in fastest.candidates("gru")] == onednn + ["manual", "manual", "scan", "scan"]
    assert fastest.candidates("lstm", impl="scan") == [("scan", "fp32"), ("scan", "bf16")]
    assert fastest.candidates("lstm", impl="cudnn") == [("cudnn", "fp32")]  # the only policy it offers
    assert fastest.candidates("lstm", impl="manual", precision="bf16") == [("manual", "bf16")]
    tiny = fastest.choose("min_lstm", 8, 2, 4, 8)
    assert (tiny["impl"], tiny["precision"], tiny["chosen_by"]) == ("parallel", "fp32", "rule")


# --------------------------------------------------------------------------- merge_benchmarks


def _bench_record(peak, *rows):
    size = {"T": 4, "B": 2, "I": 3, "H": 5}
    return {"matmul_gflops_peak_used": peak, "environment": {"load": peak},
            "results": [{"cell": "lstm", "size": size,
                         "rows": [{"impl": i, "precision": p, "median_ms": ms, "gflops": 1.0} for i, p, ms in rows]}]}


def test_merge_benchmarks_recomputes_ratios_across_processes():
    ours = _bench_record(100.0, ("lstm_jax onednn", "fp32", 40.0), ("lstm_jax onednn bf16", "bf16", 20.0))
    torch = _bench_record(200.0, ("torch nn.LSTM", "fp32", 50.0), ("torch nn.LSTM autocast-bf16", "bf16", 30.0))
    merged = benchmark.merge_records([ours, torch], ["ours.json", "torch.json"])
    rows = {r["impl"]: r for r in merged["results"][0]["rows"]}
    assert rows["lstm_jax onednn"]["speed_vs_torch"] == pytest.approx(50 / 40)
    assert rows["lstm_jax onednn bf16"]["speed_vs_torch"] == pytest.approx(30 / 20)  # bf16 against torch's bf16
    assert rows["lstm_jax onednn bf16"]["speed_vs_own_fp32"] == pytest.approx(40 / 20)
    assert rows["lstm_jax onednn"]["fraction_of_matmul_peak"] == pytest.approx(1 / 200)
    assert [r["environment"] for r in merged["runs"]] == [{"load": 100.0}, {"load": 200.0}]
    with pytest.raises(ValueError, match="timed twice"):
        benchmark.merge_records([ours, ours], ["a", "b"])


def test_rounds_of_one_impl_pool_their_timed_blocks():
    """--process-rounds: the median over every block of every round, not a median of medians."""
    first = _bench_record(100.0, ("lstm_jax onednn", "fp32", 40.0))
    second = _bench_record(120.0, ("lstm_jax onednn", "fp32", 60.0))
    first["results"][0]["rows"][0]["times_ms"] = [39.0, 40.0, 41.0]
    second["results"][0]["rows"][0]["times_ms"] = [58.0, 60.0, 44.0]
    row = benchmark.pool_rounds([first, second])["results"][0]["rows"][0]
    assert row["times_ms"] == [39.0, 40.0, 41.0, 58.0, 60.0, 44.0]
    assert (row["median_ms"], row["min_ms"], row["max_ms"]) == (42.5, 39.0, 60.0)
    assert row["round_medians_ms"] == [40.0, 60.0]
    flops = harness.train_flops("lstm", 4, 2, 3, 5)
    assert row["gflops"] == pytest.approx(flops / 42.5e-3 / 1e9)
    assert benchmark.pool_rounds([first, second])["matmul_gflops_peak_used"] == 120.0


# --------------------------------------------------------------------------- learning curves (experiments/tools/curves.py)


def _metrics_file(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_put_each_evaluation_at_its_training_time(tmp_path):
    from experiments.tools import curves

    slow = _metrics_file(tmp_path / "slow", [
        {"kind": "train", "step": 50, "elapsed_s": 30.0, "loss": 1.0}, {"kind": "train", "step": 100, "elapsed_s": 60.0},
        {"kind": "eval", "step": 100, "val_accuracy": 0.5}, {"kind": "train", "step": 150, "elapsed_s": 120.0},
        {"kind": "train", "step": 200, "elapsed_s": 180.0}, {"kind": "eval", "step": 200, "val_accuracy": 0.7}])
    fast = _metrics_file(tmp_path / "fast", [
        {"kind": "train", "step": 100, "elapsed_s": 30.0}, {"kind": "eval", "step": 100, "val_accuracy": 0.55}])
    out = tmp_path / "fig" / "curves.png"
    record = curves.main([str(slow), str(fast / "metrics.jsonl"), "--labels", "slow", "fast", "--metric",
                          "val_accuracy", "--x", "minutes", "--budget-minutes", "3", "--target", "0.9",
                          "--out", str(out)])
    assert record["series"] == {"slow": [[1.0, 0.5], [3.0, 0.7]], "fast": [[0.5, 0.55]]}
    assert json.loads(out.with_suffix(".json").read_text())["series"] == record["series"]
    assert out.stat().st_size > 1000  # the figure was drawn
    by_step = curves.main([str(slow), "--metric", "val_accuracy", "--out", str(tmp_path / "s.png")])
    assert list(by_step["series"].values()) == [[[100.0, 0.5], [200.0, 0.7]]]


@pytest.mark.parametrize("rows, argv, message", [
    ([{"kind": "eval", "step": 1, "val_loss": 2.0}], ["--metric", "val_accuracy"], r"run: no 'val_accuracy' in its metrics \(has \['val_loss'\]\)"),
    ([{"kind": "eval", "step": 1, "val_loss": 2.0}], ["--x", "minutes"], r"run: no elapsed_s in its metrics"),
    ([{"kind": "eval", "step": 1, "val_loss": 2.0}], ["--labels", "a", "b"], r"--labels gives 2 labels for 1 runs"),
    ([{"kind": "eval", "step": 1, "val_loss": 2.0}], ["--budget-minutes", "3"], r"--budget-minutes needs --x minutes"),
    (None, [], r"metrics.jsonl:2: not a JSON line"),
])
def test_curves_name_what_is_wrong_in_one_line(tmp_path, rows, argv, message):
    from experiments.tools import curves

    run = tmp_path / "run"
    if rows is None:
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n')
    else:
        _metrics_file(run, rows)
    with pytest.raises(SystemExit, match=message):
        curves.main([str(run), *argv, "--out", str(tmp_path / "c.png")])
    assert not (tmp_path / "c.png").exists()
