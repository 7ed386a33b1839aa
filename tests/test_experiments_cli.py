"""The experiments' shared command line (experiments.common.cli) and how the scripts are run."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.common import cli, figures, machine

ROOT = Path(__file__).resolve().parents[1]
#: The task folders of experiments/ (each with its scripts and the helpers only it uses) and the shared one.
TASKS = ("char_lm", "classification", "long_range", "analysis", "benchmarks", "tools")
#: Every script as ``<task>.<name>`` (``char_lm.char_lstm``): a module of a task folder that builds a parser.
SCRIPTS = sorted(
    f"{p.parent.name}.{p.stem}" for p in (ROOT / "experiments").glob("*/*.py")
    if not p.stem.startswith("_") and p.parent.name in TASKS and "def build_parser" in p.read_text()
)
#: Every flag has one spelling: these older ones (hidden aliases once) are refused now.
OLD_SPELLINGS = {"--warmup", "--minutes-per-run", "--minutes-per-cell", "--batch", "--keep"}


KINDS = {p.split(".")[1]: p.split(".")[0] for p in SCRIPTS}


def script(name):
    """The script module ``name`` (``char_lstm`` or ``char_lm.char_lstm``)."""
    return importlib.import_module(f"experiments.{name if '.' in name else KINDS[name] + '.' + name}")


# --------------------------------------------------------------------------- one spelling per flag


def test_every_script_builds_one_plain_parser_without_old_spellings():
    assert len(SCRIPTS) >= 14, SCRIPTS  # gpu_diagnose.py is the fourteenth
    for name in SCRIPTS:
        parser = script(name).build_parser()  # argparse refuses conflicting option strings here
        options = {opt for a in parser._actions for opt in a.option_strings}
        assert not options & OLD_SPELLINGS, (name, options & OLD_SPELLINGS)
        assert all(a.help is not cli.argparse.SUPPRESS for a in parser._actions if a.dest != "help"), name
        dests = [a.dest for a in parser._actions]
        assert len(dests) == len(set(dests)), (name, "two flags set one dest")
        assert "--help" in options


def test_a_shared_flag_has_one_spelling_across_scripts():
    """Every visible option that sets a dest of cli.FLAGS is spelled as FLAGS says, in every script."""
    for name in SCRIPTS:
        for action in script(name).build_parser()._actions:
            if action.dest in cli.FLAGS and action.help is not cli.argparse.SUPPRESS:
                assert action.option_strings == [cli.FLAGS[action.dest].option], (name, action.option_strings)


def test_the_one_spelling_builds_the_train_config_and_old_ones_are_refused(capsys):
    char = script("char_lstm").build_parser()
    new = char.parse_args(["--warmup-steps", "7", "--keep-checkpoints", "2", "--lr", "3e-3", "--no-progress",
                           "--max-minutes", "4"])
    cfg = cli.train_config(new)
    assert (cfg.warmup_steps, cfg.keep_checkpoints, cfg.learning_rate, cfg.progress, cfg.max_minutes) == (
        7, 2, 3e-3, False, 4.0)
    quick = char.parse_args([])  # the script's own defaults: the quick start's
    assert (cli.train_config(quick).steps, cli.train_config(quick).eval_every) == (quick.steps, quick.eval_every)
    for argv in (["--warmup", "7"], ["--keep", "2"]):
        with pytest.raises(SystemExit):
            char.parse_args(argv)

    long_range = script("long_range").build_parser()
    new = long_range.parse_args(["--max-minutes", "1.5", "--batch-size", "8", "--warmup-steps", "3"])
    assert new.batch_size == 8 and cli.train_config(new, progress=False).max_minutes == 1.5
    for argv in (["--minutes-per-run", "1.5"], ["--batch", "8"], ["--warmup", "3"]):
        with pytest.raises(SystemExit):
            long_range.parse_args(argv)
    flow = script("gradient_flow").build_parser()
    assert flow.parse_args(["--max-minutes", "2"]).max_minutes == 2.0
    with pytest.raises(SystemExit):
        flow.parse_args(["--minutes-per-cell", "2"])
    bptt = script("bptt_benchmark").build_parser()
    args = bptt.parse_args(["--budget-minutes", "3", "--warmup-calls", "1"])
    assert (args.budget_minutes, args.warmup_calls) == (3.0, 1)
    for argv in (["--max-minutes", "3"], ["--warmup", "1"]):
        with pytest.raises(SystemExit):
            bptt.parse_args(argv)
    capsys.readouterr()


def test_an_unknown_option_is_named_in_one_line_before_a_positional_takes_its_value(capsys):
    """char_lstm has a positional mode: without the check, '--warmup 5' failed as "argument mode: invalid
    choice: '5'", naming neither the removed flag nor the cause."""
    for name, argv in (("char_lstm", ["--warmup", "5"]), ("char_lstm", ["sample", "--warmup=5", "--length", "3"]),
                       ("long_range", ["--lengths", "5", "--minutes-per-run", "1"])):
        with pytest.raises(SystemExit) as exit_:
            script(name).main(argv)
        assert exit_.value.code == 2, (name, argv)
        lines = capsys.readouterr().err.splitlines()
        bad = argv[-2].split("=")[0] if name == "long_range" else "--warmup"
        assert len(lines) == 1 and lines[0].startswith(f"error: unknown option {bad} ("), lines
        assert "invalid choice" not in lines[0]


def test_script_defaults_kept_from_before_the_shared_parser():
    """Defaults that order runs and outputs, or size them, are each script's own, as before."""
    assert script("long_range").build_parser().parse_args([]).cells == ["rnn", "gru", "lstm"]
    assert script("gradient_flow").build_parser().parse_args([]).cells == ["rnn", "gru", "lstm"]
    assert script("benchmark").build_parser().parse_args([]).cells == ["lstm", "gru", "rnn"]
    assert script("bptt_benchmark").build_parser().parse_args([]).cells == ["rnn", "lstm", "gru"]
    flow = script("gradient_flow").build_parser().parse_args([])
    assert (flow.batch_size, flow.hidden, flow.max_minutes, flow.steps) == (64, 64, 3.0, 3000)
    remat = script("remat_benchmark").build_parser().parse_args([])
    assert remat.lengths == [2**k for k in range(5, 14)] and remat.rss_at == [8192] and remat.batch_size == 16


def test_unset_alias_keeps_the_default_and_fixed_fields_win():
    args = script("mnist_lstm").build_parser().parse_args(["--out", "x"])
    assert args.warmup_steps == 200 and args.batch_size == 128
    cfg = cli.train_config(args, checkpoint_every=args.eval_every, steps=10)
    assert cfg.checkpoint_every == 500 and cfg.steps == 10


def test_list_flags_take_spaces_and_commas():
    p = script("long_range").build_parser()
    assert p.parse_args(["--cells", "rnn,gru", "lstm", "--lengths", "4,8", "16"]).cells == ["rnn", "gru", "lstm"]
    assert p.parse_args(["--lengths", "4,8", "16"]).lengths == [4, 8, 16]
    with pytest.raises(SystemExit):
        p.parse_args(["--cells", "lstm,transformer"])
    remat = script("remat_benchmark").build_parser()
    assert remat.parse_args(["--rss-at", ""]).rss_at == []


# --------------------------------------------------------------------------- errors speak of flags


def test_a_refused_train_config_field_is_named_by_its_flag_and_library_errors_are_one_line():
    parser = script("char_lstm").build_parser()
    with pytest.raises(ValueError, match=r"^--clip-norm: TrainConfig.clip_norm must be > 0"):
        cli.train_config(parser.parse_args(["--clip-norm", "-1"]))
    # A field the script sets itself is the script's to explain: the library's words, unchanged.
    with pytest.raises(ValueError, match=r"^TrainConfig.keep_checkpoints must be a positive integer, got 0$"):
        cli.train_config(parser.parse_args([]), keep_checkpoints=0)

    def body(args):
        raise ValueError("TrainConfig.keep_checkpoints must be a positive integer, got 0")

    with pytest.raises(SystemExit, match=r"^error: TrainConfig.keep_checkpoints must be a positive integer, got 0$"):
        cli.run(parser, body, [])

    def checkpoint_body(args):
        raise cli.CheckpointError("resume=True: no checkpoint to resume from in /x")

    with pytest.raises(SystemExit, match=r"^error: resume=True: no checkpoint to resume from in /x \(--out is the "
                       r"run directory; --resume continues the run in it\)$"):
        cli.run(parser, checkpoint_body, [])


def test_script_reports_a_bad_config_value_by_its_flag(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --lr: TrainConfig.learning_rate must be a positive finite number, "
                       r"got 0.0$"):
        script("char_lstm").main(["--lr", "0", "--steps", "2", "--no-progress", "--dataset", "zen",
                                  "--out", str(tmp_path / "r")])


# --------------------------------------------------------------------------- layout


def test_the_experiment_folders_are_the_tasks():
    folders = {p.name for p in (ROOT / "experiments").iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == {*TASKS, "common"}, folders


def test_a_task_folder_imports_itself_common_and_the_library_only():
    """Every file of experiments/: a task folder imports its own modules, experiments.common and lstm_jax;
    common imports only itself and lstm_jax. So tasks never lean on each other."""
    offenders = []
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        folder = path.relative_to(ROOT / "experiments").parts[0] if path.parent != ROOT / "experiments" else None
        allowed = {f"experiments.{folder}", "experiments.common"} if folder and folder != "common" else {"experiments.common"}
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level:
                names = []  # relative imports stay inside the folder
            for name in names:
                if name.startswith("experiments") and not any(name == a or name.startswith(a + ".") for a in allowed):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, offenders


def _common_imports(path):
    """The experiments.common modules a file imports (``from experiments.common import a`` or ``.a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "experiments.common":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("experiments.common."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and path.parent.name == "common":
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_every_common_module_serves_two_tasks():
    """experiments/common/ holds what two or more task folders share (directly or through another common
    module); a helper of one task lives in that task's folder."""
    common = {p.stem: _common_imports(p) for p in (ROOT / "experiments" / "common").glob("*.py") if p.stem != "__init__"}
    tasks = {m: set() for m in common}
    for path in (ROOT / "experiments").glob("*/*.py"):
        task = path.parent.name
        if task == "common":
            continue
        todo = list(_common_imports(path))
        seen = set()
        while todo:  # a common module used by a common module serves that one's tasks too
            m = todo.pop()
            if m in seen or m not in common:
                continue
            seen.add(m)
            tasks[m].add(task)
            todo.extend(common[m])
    lonely = {m: sorted(t) for m, t in tasks.items() if len(t) < 2}
    assert not lonely, f"common modules with fewer than two task folders using them: {lonely}"


def test_no_sys_path_manipulation_anywhere():
    hits = [f"{p.relative_to(ROOT)}" for folder in ("experiments", "lstm_jax", "tests")
            for p in (ROOT / folder).rglob("*.py") if "sys.path" in p.read_text() and p.name != "test_experiments_cli.py"]
    assert not hits, hits
    assert not list((ROOT / "experiments").rglob("_bootstrap.py"))


def test_script_runs_as_a_module_from_the_root():
    """``python -m experiments.char_lm.char_lstm --help`` from the clone's root, with no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "experiments.char_lm.char_lstm", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--warmup-steps" in proc.stdout and "--max-minutes" in proc.stdout and "--keep-checkpoints" in proc.stdout
    assert "--minutes-per-run" not in proc.stdout and "--config" in proc.stdout


# --------------------------------------------------------------------------- machine record, figures


def test_machine_info_has_the_same_keys_everywhere():
    info = machine.machine_info(malloc={"applied": False}, matmul_gflops=12.5, libraries=("numpy", "no_such_lib"),
                                note="x")
    for key in ("date_utc", "platform", "cpu_count", "load_average_at_start", "jax", "jax_backend", "devices",
                "process_env"):
        assert key in info, key
    assert info["malloc"] == {"applied": False} and info["matmul_gflops"] == 12.5 and info["note"] == "x"
    assert "numpy" in info and "no_such_lib" not in info
    import lstm_jax

    assert info["lstm_jax"] == lstm_jax.__version__
    assert info["git_commit"] is None or len(info["git_commit"]) == 40

    assert len(info["load_average_at_start"]) == 3
    assert len(machine.finish_machine_info(info)["load_average_at_end"]) == 3
    json.dumps(info)  # goes into results JSON as it is


def test_machine_info_records_known_variables_only(monkeypatch):
    """The environment capture is a list of names: a variable that only shares a prefix stays out."""
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", "/home/someone/.terraformrc")
    monkeypatch.setenv("XLA_SOMETHING_UNKNOWN", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    env = machine.machine_info()["process_env"]
    assert env.get("OMP_NUM_THREADS") == "2"
    assert "TF_CLI_CONFIG_FILE" not in env and "XLA_SOMETHING_UNKNOWN" not in env


def test_copy_figures_keeps_or_renames(tmp_path):
    (tmp_path / "a.png").write_bytes(b"A")
    (tmp_path / "b.png").write_bytes(b"B")
    assert figures.copy_figures(tmp_path, None, ["a.png"]) == []
    figures.copy_figures(tmp_path, tmp_path / "docs", ["a.png"])
    figures.copy_figures(tmp_path, tmp_path / "docs", {"b.png": "renamed.png"})
    assert (tmp_path / "docs" / "a.png").read_bytes() == b"A"
    assert (tmp_path / "docs" / "renamed.png").read_bytes() == b"B"


# --------------------------------------------------------------------------- gate_activity on a real checkpoint


def test_gate_activity_reads_the_cell_from_the_checkpoint(tmp_path):
    from lstm_jax.data.text import zen_of_python

    run = tmp_path / "run"
    script("char_lstm").main(["--dataset", "zen", "--steps", "4", "--hidden", "8", "--seq-len", "8", "--batch-size", "2",
                              "--eval-every", "4", "--no-progress", "--out", str(run), "--length", "5"])
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["model"]["spec"]["cell"] == "lstm"
    text = tmp_path / "zen.txt"
    text.write_text(zen_of_python())
    out = tmp_path / "gates"
    script("gate_activity").main(["--checkpoint", str(run), "--text-file", str(text), "--offset", "0.5",
                                  "--length", "12", "--text-length", "20", "--warmup-chars", "6", "--out", str(out),
                                  "--figure-dir", str(tmp_path / "figs")])
    summary = json.loads((out / "gate_activity.json").read_text())
    assert len(summary["units"]) == 4 and all(0 <= u < 8 for u in summary["units"])
    if figures.matplotlib_installed():  # without matplotlib the figures are skipped, saying so
        assert (tmp_path / "figs" / "gate_activity.png").stat().st_size > 0
    # The recorded spec decides; a record without one is refused in one line (nothing is guessed from shapes).
    import jax

    from lstm_jax.models import char_model as cm
    from lstm_jax.models.spec import RecurrentSpec

    spec = RecurrentSpec(cell="gru", hidden=4)
    gru_params = cm.init_char_model(jax.random.PRNGKey(0), 5, spec)
    assert script("gate_activity").checkpoint_cell({"model": cm.model_config(gru_params, spec)}) == "gru"
    with pytest.raises(ValueError, match="no model spec"):
        script("gate_activity").checkpoint_cell({})


def test_resume_on_an_empty_run_directory_prints_only_the_error_line(tmp_path):
    """The Orbax manager is closed on the error path: no absl/asyncio tracebacks after the one line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "experiments.char_lm.char_lstm", "train", "--resume", "--out", str(tmp_path / "empty"),
           "--steps", "2", "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert lines == [f"error: resume=True: no checkpoint to resume from in {tmp_path / 'empty' / 'checkpoints'} "
                     "(--out is the run directory; --resume continues the run in it)"], lines


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (test_resume_on_an_empty_run_directory_prints_only_the_error_line checks the one-line error path in the default run)
def test_a_run_directory_with_checkpoints_is_refused_with_only_the_error_line(tmp_path):
    """Without --resume a finished run is never overwritten, and the refusal (made before any Orbax
    manager exists) prints one line: no absl/asyncio tracebacks from a manager's threads at shutdown."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.char_lm.char_lstm", "train", "--dataset", "zen", "--out", str(run), "--steps", "2",
           "--eval-every", "2", "--hidden", "8", "--impl", "scan", "--precision", "fp32", "--no-progress"]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "2" in before, before
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 1, again.stderr[-3000:]
    assert len(lines) == 1 and "already holds checkpoints (steps [2])" in lines[0], lines
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_gate_units_pick_the_unit_that_tracks_a_text_feature_and_the_stretch_starts_a_line():
    from experiments.analysis import gate_units

    text = "ROMEO:\nab cd\nJULIET:\nefg h\n"
    features = gate_units.text_features(text)
    assert all(len(v) == len(text) for v in features.values())
    rng = np.random.default_rng(0)
    cell = rng.normal(size=(len(text), 6)) * 0.1
    cell[:, 3] = features["position in line"] / 10  # unit 3 counts the position in the line
    units, why = gate_units.choose_units({"cell": cell, "forget": rng.uniform(size=(len(text), 6))}, text)
    assert units[0] == 3 and "position in line" in why[3] and len(set(units)) == len(units) <= 4
    start, chunk = gate_units.text_stretch(text, 0.1, warmup=2, span=5)
    assert start == text.index("\n") + 1 and chunk == text[start - 2 : start + 5]
    with pytest.raises(SystemExit, match="does not fit"):
        gate_units.text_stretch(text, 0.1, warmup=20, span=5)
