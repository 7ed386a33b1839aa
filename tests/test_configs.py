"""configs/*.toml: every file loads and validates against its script's parser, and each one that reproduces a
recorded result sets the values that record says defined the run (results/... are frozen; nothing is re-run).

Also the loader itself (experiments/common/config.py): flags override the file; an unknown key, a value of the
wrong type or outside a flag's choices, and a config for another script are refused in one line naming them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
from pathlib import Path

import pytest

from experiments.common import config as cfg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))

#: config file -> the record of the result it reproduces (None: a new result, recorded by the run itself;
#: a string starting "not compared": why the record cannot be compared).
RECORDS = {
    "shakespeare_quick.toml": "results/shakespeare_quick/results.json",
    "shakespeare_30min.toml": "results/char_30min_reg/lstm/seeds.json",
    "shakespeare_30min_min_gru.toml": "results/char_30min_reg/min_gru/seeds.json",
    "shakespeare_30min_min_lstm.toml": "results/char_30min_reg/min_lstm/seeds.json",
    "shakespeare_30min_min_gru_dropout0.1.toml": "results/char_30min_own/min_gru_dropout0.1/seeds.json",
    "shakespeare_nanogpt_split.toml": "results/char_30min_onednn/nanogpt_split.json",
    "shakespeare_9min_lstm.toml": "results/char_side_by_side/lstm/seeds.json",
    "shakespeare_9min_min_gru.toml": "results/char_side_by_side/min_gru/seeds.json",
    "shakespeare_9min_min_lstm.toml": "results/char_side_by_side/min_lstm/seeds.json",
    "fmnist_rows.toml": "results/fmnist_rows/lstm2x128_bidir_aug38/metadata.json",
    "fmnist_pixels.toml": "results/fmnist_pixels/lstm1x128_60min/metadata.json",
    "fmnist_rows_20min.toml": "results/fmnist_rows/onednn_26ep_seeds/seed_0/results.json",
    "fmnist_rows_20min_pooled.toml": "results/fmnist_rows/onednn_pooled_32ep_seeds/seed_0/results.json",
    "fmnist_pixels_60min.toml": "results/fmnist_pixels/onednn_60min/results.json",
    "fmnist_pixels_60min_31k.toml": "results/fmnist_pixels/onednn_60min_31k/results.json",
    "fmnist_pixels_60min_chrono.toml": "results/fmnist_pixels/onednn_60min_chrono/results.json",
    "fmnist_pixels_60min_chrono_shift1.toml": "results/fmnist_pixels/onednn_60min_chrono_shift1/results.json",
    "adding_t100_equal_time.toml": None,  # its record (docs/figures/long_range_adding_results.json) predates the flag names
    "adding_equal_steps_1500.toml": "results/long_range_equal_steps/results.json",
    "adding_10k.toml": "results/long_range_10k_adding/results.json",
    "copy_10k.toml": "results/long_range_10k_copy/results.json",
    "copy_t200_lstm_chrono_10k.toml": "results/long_range_10k_copy_chrono_h128/results.json",
    "copy_t200_lstm_chrono_20k.toml": "results/long_range_20k_copy_chrono_h128/results.json",
    "copy_t200_lstm_chrono_30k.toml": "results/long_range_30k_copy_chrono_h128/results.json",
    "copy_t200_lstm_40k.toml": "results/long_range_40k_copy_chrono_h128/results.json",
    "copy_t500_lstm_chrono.toml": "results/long_range_copy_t500_chrono_h128/results.json",
    "copy_t200_rnn_40k.toml": "results/long_range_40k_copy_h128_rnn/results.json",
    "benchmark_cpu.toml": "results/benchmark.json",
    "parallel_time_cpu.toml": "results/parallel_time.json",
    "parallel_time_h256_cpu.toml": "results/parallel_time_h256.json",
    "remat_cpu.toml": "results/remat_benchmark.json",
    "benchmark_h200_flashrnn.toml": "results/gpu_h200_2026-12-04/benchmark_flashrnn.json",
    "parallel_time_h200.toml": "results/gpu_h200_2026-12-04/parallel_time.json",
    "benchmark_onednn_cpu.toml": "results/benchmark_onednn_quiet.json",
    "benchmark_onednn_per_process.toml": "results/benchmark_onednn_per_process/benchmark.json",
    "benchmark_onednn_turns.toml": "results/benchmark_onednn_turns.json",
    "default_impl_cpu.toml": "results/default_impl.json",
}

#: Keys that do not define a run's result: where it is written, progress bars, appending to a record, the
#: allocator (recorded apart), and lengths/cells of sweeps a record joined from several invocations (compared as
#: the set of (cell, T) pairs it holds instead).
NOT_DEFINING = {"out", "progress", "append", "replot", "merge", "figure", "malloc", "config", "seed", "note",
                "no_plots", "lengths", "cells"}

_GIVEN = object()  # sentinel default: a value that is not it was given on the recorded command line


def parser_of(script: str) -> argparse.ArgumentParser:
    return importlib.import_module(script).build_parser()


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """The dests the recorded command line ``argv`` set explicitly, parsed by today's parser."""
    parser.set_defaults(**{a.dest: _GIVEN for a in parser._actions if a.dest != "help"})
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not _GIVEN}


def recorded_values(record: dict, parser: argparse.ArgumentParser) -> dict:
    """What a record says its run was given, by dest (each script's current record format)."""
    if isinstance(record.get("config"), dict) and "command" in record:  # the run epilogue's resolved arguments
        return record["config"]
    if isinstance(record.get("command"), (str, list)):  # char_lstm results.json / seeds.py's seeds.json
        command = record["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        return given_flags(parser, argv[1:])
    if "argv" in record:  # mnist_lstm metadata.json
        return given_flags(parser, record["argv"][1:])
    if "args" in record:  # long_range results.json
        return record["args"]
    if "environment" in record:  # benchmark.json
        return {k: v for k, v in record["environment"]["args"].items() if k != "cells"}
    if "config" in record:  # parallel_time / remat_benchmark: the problem sizes
        c = record["config"]
        keys = {"B": "batch_size", "I": "input", "H": "hidden", "repeats": "repeats", "lengths": "lengths",
                "compile_repeats": "compile_repeats"}
        return {keys[k]: v for k, v in c.items() if k in keys}
    raise AssertionError(f"no arguments found in the record (keys {sorted(record)})")


def _json_like(value):
    """``value`` as a JSON record holds it (tuples become lists)."""
    return json.loads(json.dumps(value)) if isinstance(value, (list, tuple)) else value


def resolved(path: Path) -> tuple[dict, argparse.Namespace]:
    """The config at ``path`` and the arguments its script would run with (no command-line flags)."""
    config = cfg.load_config(path)
    parser = parser_of(config["script"])
    return config, cfg.parse_args(parser, ["--config", str(path)])


def test_configs_exist_for_every_listed_result():
    names = {p.name for p in CONFIGS}
    assert set(RECORDS) <= names, f"missing configs: {sorted(set(RECORDS) - names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates_against_its_script(path):
    config, args = resolved(path)
    types = {a.dest: a.type for a in parser_of(config["script"])._actions}
    for key, value in config.items():
        if key != "script":  # a string for a flag with a type= (benchmark's --sizes) is given as on the command line
            expected = types[key](value) if isinstance(value, str) and callable(types.get(key)) else value
            assert getattr(args, key) == expected, key
    assert args.config == str(path)


#: Config keys that no record can confirm, per config, each with why (a flag added after the record, or a
#: default of the script that the record's command line did not give and whose value then is not recorded).
#: A key listed here that the record does confirm fails too, so the list cannot go stale.
NOT_IN_RECORD = {
    **{name: {"impl": "not on the recorded command line; metadata.json holds the choice (manual/bf16), "
                      "not how it was made",
              "precision": "as impl"} for name in ("fmnist_pixels.toml", "fmnist_rows.toml")},
    **{name: {"impl": "the record holds the impl the default rule picked (onednn) and that only the precision "
                      "was then measured, not that the rule was asked for"} for name in ("fmnist_rows_20min.toml",
                                                                                     "fmnist_pixels_60min.toml")},
    "adding_equal_steps_1500.toml": {"init": "--init came after the record (its runs used the standard init)"},
    "parallel_time_cpu.toml": {"max_jacobian_mib": "not recorded; DEER ran at T=16384, whose Jacobians take "
                                                   "1024 MiB at B=4, H=32, so the cap was at least that"},
    "parallel_time_h256_cpu.toml": {"max_jacobian_mib": "not recorded (no DEER case ran)"},
    "parallel_time_h200.toml": {"budget_minutes": "not recorded; its over_budget list (T=16384) shows a budget "
                                                  "ran out before the last length"},
}


def _rows_evidence(record: dict) -> dict:
    """Config keys that a benchmark record's rows confirm (the rows hold what was run, not the flags)."""
    if "environment" in record and "results" in record:  # benchmark.json: a row without a precision predates bf16
        precisions = {r.get("precision", "fp32") for e in record["results"] for r in e["rows"]}
        return {"precisions": sorted(precisions, key=["fp32", "bf16"].index)}
    rows = record.get("rows")
    if not isinstance(rows, list):
        return {}
    if rows and "name" in rows[0]:  # parallel_time: the cases that ran, and those the budget left out
        return {"cases": {r["name"] for r in rows} | {name for name, _ in record.get("over_budget", [])}}
    return {"impls": {r["impl"] for r in rows},  # remat_benchmark: the impls timed, the T with a peak RSS
            "rss_at": sorted({r["T"] for r in rows if r.get("peak_rss_mib") is not None})}


def _run_evidence(record: dict, record_path: Path) -> dict:
    """Config keys a training record confirms beyond its command line: mnist's metadata.json (train_config,
    model, data options) and how the layer was chosen, in the record or a seeds.json's first run ('auto' if
    measured, 'default' if by the rule)."""
    found = {}
    if "train_config" in record:
        found.update(record["train_config"])
        model = record["model"]
        found.update(cell=model["cell"], layers=model["num_layers"], bidirectional=model["bidirectional"],
                     dropout=model["dropout"], unroll=model["unroll"], perm_seed=record["perm_seed"],
                     augment_shift=record["augment"]["max_shift"], augment_flip=record["augment"]["flip"])
    runs = [record_path.parent / "seed_0" / "results.json", record_path.parent / "results_seed_0.json"]
    layer = record.get("layer") or next((json.loads(p.read_text()).get("layer") for p in runs if p.exists()), None)
    if isinstance((layer or {}).get("asked"), dict):  # the record says what the run asked for
        found.update(impl=layer["asked"]["impl"], precision=layer["asked"]["precision"])
        return found
    how = {"measured": "auto", "default rule": "default"}.get((layer or {}).get("chosen_by"))
    if how == "auto" and len({c.split("/")[0] for c in layer.get("candidates", [])}) == 1:
        found.update(precision=how)  # one impl, timed in each precision: the impl was fixed before the measurement
    elif how:  # what the run was asked for; the impl and precision it chose are not a config's to set
        found.update(impl=how, precision=how)
    return found


def _same(config_value, evidence) -> bool:
    if isinstance(evidence, set):
        return set(config_value) == evidence
    return _json_like(config_value) == _json_like(evidence)


@pytest.mark.parametrize("name", [n for n, r in RECORDS.items() if r], ids=str)
def test_config_matches_its_recorded_run(name):
    """Every key the config sets is confirmed by its record, with the same value: given on the recorded command
    line (or in its resolved arguments), shown by what the record holds (rows, metadata), or (a command-line
    record) left at the script's default, which the config then states. Any other key must be in
    NOT_IN_RECORD with why; a key listed there that the record confirms fails too."""
    record_path = REPO / RECORDS[name]
    if not record_path.exists():
        pytest.skip(f"{RECORDS[name]} not recorded yet")
    record = json.loads(record_path.read_text())
    config, args = resolved(REPO / "configs" / name)
    recorded = recorded_values(record, parser_of(config["script"]))
    # a record of the command line only (not of the resolved arguments): a flag it does not give was at its default
    command_line = recorded is not record.get("config") and (isinstance(record.get("command"), (str, list))
                                                             or "argv" in record)
    if recorded is record.get("config"):  # every resolved argument: compare the ones the file sets, where a rule
        # ("default") or a measurement ("auto") resolves impl/precision the record holds what it chose
        recorded = {k: v for k, v in recorded.items() if k in config and config[k] not in ("default", "auto")}
    differ = {k: (getattr(args, k, "<not a flag>"), v) for k, v in recorded.items()
              if k not in NOT_DEFINING and _json_like(getattr(args, k, "<not a flag>")) != v}
    assert not differ, f"{name} against {RECORDS[name]}: (config, record) {differ}"
    evidence = {**_rows_evidence(record), **_run_evidence(record, record_path)}
    differ = {k: (config[k], v) for k, v in evidence.items() if k in config and not _same(config[k], v)}
    assert not differ, f"{name} against what {RECORDS[name]} holds: (config, record) {differ}"
    defaults = {a.dest: a.default for a in parser_of(config["script"])._actions}
    unconfirmed = {k for k in config if k != "script" and k not in NOT_DEFINING and k not in recorded
                   and k not in evidence and not (command_line and _json_like(config[k]) == _json_like(defaults.get(k)))}
    listed = set(NOT_IN_RECORD.get(name, {}))
    assert unconfirmed <= listed, (f"{name}: {sorted(unconfirmed - listed)} set in the config, not confirmed by "
                                   f"{RECORDS[name]}; list in NOT_IN_RECORD with why if added after the record")
    assert listed <= unconfirmed, f"{name}: NOT_IN_RECORD lists {sorted(listed - unconfirmed)}, which the record confirms"
    runs = record.get("runs")
    if isinstance(runs, list) and runs and "cell" in runs[0]:  # a long_range sweep: the same (cell, T) pairs
        assert {(r["cell"], r["T"]) for r in runs} == {(c, t) for c in args.cells for t in args.lengths}


# --------------------------------------------------------------------------- the loader


def _toy_parser(tmp_path):
    import experiments.char_lm.char_lstm as script

    return script.build_parser(), tmp_path / "c.toml"


def test_flags_override_the_file(tmp_path):
    parser, path = _toy_parser(tmp_path)
    path.write_text('script = "experiments.char_lm.char_lstm"\nhidden = 96\nlearning_rate = 1e-3\nstateful = true\n')
    args = cfg.parse_args(parser, ["--config", str(path), "--hidden", "32"])
    assert (args.hidden, args.learning_rate, args.stateful) == (32, 1e-3, True)


def test_a_length_on_the_command_line_replaces_the_files_other_way_of_setting_it(tmp_path):
    """mnist_lstm's --epochs overrides --steps; a config's epochs must not silently beat a --steps typed after it."""
    import experiments.classification.mnist_lstm as script

    path = tmp_path / "rows.toml"
    path.write_text('script = "experiments.classification.mnist_lstm"\nepochs = 38.0\nhidden = 64\n')
    args = cfg.parse_args(script.build_parser(), ["--config", str(path), "--steps=300"])
    assert (args.steps, args.epochs, args.hidden) == (300, None, 64)
    args = cfg.parse_args(script.build_parser(), ["--config", str(path)])
    assert args.epochs == 38.0
    path.write_text('script = "experiments.classification.mnist_lstm"\nsteps = 500\n')
    args = cfg.parse_args(script.build_parser(), ["--config", str(path), "--epochs", "2"])
    assert (args.steps, args.epochs) == (2000, 2.0)  # the parser default for steps; epochs decides the length


@pytest.mark.parametrize("body, message", [
    ('hiden = 3', "unknown key 'hiden'"),
    ('hidden = "3"', "key 'hidden': expected an integer, got str"),
    ('hidden = 3.5', "key 'hidden': expected an integer, got float"),
    ('learning_rate = true', "key 'learning_rate': expected a number, got bool"),
    ('stateful = 1', "key 'stateful': expected true or false"),
    ('cell = "lstn"', "key 'cell': 'lstn' is not one of"),
    ('eval_context = "window"', "key 'eval_context': expected a list"),
    ('eval_context = ["sideways"]', "key 'eval_context': 'sideways' is not one of"),
])
def test_bad_values_are_refused_naming_file_and_key(tmp_path, capsys, body, message):
    parser, path = _toy_parser(tmp_path)
    path.write_text(f'script = "experiments.char_lm.char_lstm"\n{body}\n')
    with pytest.raises(SystemExit):
        cfg.parse_args(parser, ["--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: " + err[0].split(f"{path}: ", 1)[1]] and message in err[0], err


def test_a_config_for_another_script_or_none_is_refused(tmp_path, capsys):
    parser, path = _toy_parser(tmp_path)
    path.write_text('script = "experiments.classification.mnist_lstm"\nhidden = 8\n')
    with pytest.raises(SystemExit):
        cfg.parse_args(parser, ["--config", str(path)])
    assert "a config for experiments.classification.mnist_lstm, not for experiments.char_lm.char_lstm" in capsys.readouterr().err
    path.write_text("hidden = 8\n")
    with pytest.raises(SystemExit):
        cfg.parse_args(parser, ["--config", str(path)])
    assert "no 'script' key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cfg.parse_args(parser, ["--config", str(tmp_path / "missing.toml")])
    assert "config file not found" in capsys.readouterr().err


def test_script_name_from_file():
    import experiments.benchmarks.parallel_time as script

    assert cfg.script_name(script.__file__) == "experiments.benchmarks.parallel_time"
