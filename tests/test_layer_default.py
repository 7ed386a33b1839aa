"""The default layer path is a fixed rule, read from the speed records, and it computes what ``scan`` computes.

:func:`lstm_jax.impls.default_impl` (``impl=None`` everywhere) reads the
backend, the cell, the precision asked, the CPU's flags and what is
installed; nothing is timed. Its CPU picks are checked against the committed
speed records rather than a restated table: for every cell and precision a
record measured, the pick is the fastest library row (within the tie
tolerance) at most of the record's sizes. The scripts' rule
(experiments/common/fastest.py) takes its impl from the same function; their
``--impl auto`` / ``--precision auto`` time instead (tests/test_results_tools.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.common import cli, fastest, harness
from lstm_jax import apply_stack, init_stack, scan_layer
from lstm_jax.cells import CELLS, get_cell
from lstm_jax.impls import IMPLS, default_impl
from lstm_jax.impls._onednn.build import FORWARD_TARGET
from lstm_jax.impls.onednn import cpu_has_bf16

RESULTS = Path(__file__).resolve().parents[1] / "results"
ONEDNN_HERE = IMPLS["onednn"].unavailable() is None

# (record, whether onednn ran there): the benchmark without the onednn extra, and the one with it
# (each impl in a process of its own, the processes taking turns; 2-core Zen 4 with AVX512-BF16).
RECORDS = [("benchmark.json", False), ("benchmark_onednn_turns.json", True)]


def _library_rows(path: Path) -> dict:
    """``{(cell, precision): [{impl: median_ms} per size]}`` from a benchmark record's ``lstm_jax`` rows."""
    table: dict = {}
    for entry in json.loads(path.read_text())["results"]:
        per_precision: dict = {}
        for row in entry["rows"]:
            if row["impl"].startswith("lstm_jax "):
                impl = row["impl"].split()[1]
                per_precision.setdefault(row.get("precision") or "fp32", {})[impl] = row["median_ms"]
        for precision, times in per_precision.items():
            table.setdefault((entry["cell"], precision), []).append(times)
    return table


@pytest.mark.parametrize("record,onednn", RECORDS)
def test_the_cpu_default_is_the_fastest_library_row_at_most_recorded_sizes(record, onednn):
    table = _library_rows(RESULTS / record)
    assert table, f"no lstm_jax rows in {record}"
    for (cell, precision), sizes in table.items():
        pick = default_impl(cell, backend="cpu", precision=precision, onednn=onednn, bf16_dots=True)
        assert all(pick in times for times in sizes), f"{record}: {cell}/{precision} pick {pick!r} was not measured"
        ties = [times[pick] <= min(times.values()) * (1 + fastest.TIE_TOLERANCE) for times in sizes]
        assert sum(ties) > len(sizes) / 2, (
            f"{record}: {cell}/{precision}: the default {pick!r} is the fastest library row at only "
            f"{sum(ties)} of {len(sizes)} sizes: {sizes}"
        )


@pytest.mark.parametrize(
    "cell,backend,expected",
    [
        # No same-cell record on this machine for these (docs/performance.md gives the figures).
        ("min_gru", "cpu", "manual"),  # parallel 3x slower than manual at T=100 on the 2-core CPU
        ("lstm", "gpu", "manual"),  # H200: within 8% of cudnn at B=256, 2x faster at B=16
        ("min_gru", "gpu", "parallel"),  # H200: 35-52x the sequential LSTM at T=1024-4096
    ],
)
def test_the_rule_without_a_same_cell_record(cell, backend, expected):
    assert default_impl(cell, backend=backend, onednn=True) == expected


def test_the_default_times_nothing_and_is_the_same_every_time(monkeypatch):
    """Every clock and the experiments' timer raise while the rule runs: it reads flags, it measures nothing."""
    answers = [default_impl(name) for name in CELLS]  # loads onednn once (a build, if this machine has none)

    def no_timing(*args, **kwargs):
        raise AssertionError("the default rule read a clock")

    for name in ("perf_counter", "perf_counter_ns", "monotonic", "monotonic_ns", "time", "time_ns", "process_time"):
        monkeypatch.setattr(time, name, no_timing)
    monkeypatch.setattr(harness, "time_calls", no_timing)
    for _ in range(2):
        assert [default_impl(name) for name in CELLS] == answers
        choice = fastest.choose("lstm", 128, 64, 128, 512, impl=fastest.RULE, precision=fastest.RULE)
        assert (choice["chosen_by"], choice["step_ms"]) == ("default rule", {})
    here = ("onednn" if ONEDNN_HERE else "manual", "bf16" if cpu_has_bf16() else "fp32")
    assert (choice["impl"], choice["precision"]) == here
    given = fastest.choose("gru", 8, 2, 4, 8, impl="scan", precision=fastest.RULE)
    assert (given["impl"], given["precision"], given["chosen_by"]) == ("scan", here[1], "default rule")
    assert "the default for cpu" in fastest.describe(choice)


def test_the_rule_keeps_the_precision_asked():
    """The library never switches precision; the scripts' rule adds bf16 on a CPU with bf16 dots."""
    assert default_impl("gru", backend="cpu", precision="fp32", onednn=True, bf16_dots=True) == "onednn"
    assert default_impl("gru", backend="cpu", precision="bf16", onednn=True, bf16_dots=True) == "manual"
    assert default_impl("lstm", backend="cpu", precision="bf16", onednn=True, bf16_dots=False) == "manual"
    assert fastest.rule("lstm", backend="cpu", bf16_dots=True, onednn=True) == ("onednn", "bf16")
    assert fastest.rule("gru", backend="cpu", bf16_dots=True, onednn=True) == ("onednn", "fp32")
    assert fastest.rule("lstm", backend="cpu", bf16_dots=True, onednn=False) == ("manual", "bf16")
    assert fastest.rule("lstm", backend="gpu", bf16_dots=True, onednn=True) == ("manual", "fp32")


def test_rule_keeps_a_given_impl_and_takes_a_policy_it_offers():
    assert fastest.rule("lstm", "scan", backend="cpu", bf16_dots=True) == ("scan", "bf16")
    assert fastest.rule("lstm", "cudnn", backend="gpu", bf16_dots=True) == ("cudnn", "fp32")  # cudnn: fp32 only
    assert fastest.rule("gru", "onednn", backend="cpu", bf16_dots=True, onednn=False) == ("onednn", "fp32")
    assert fastest.rule("lstm", "onednn", backend="cpu", bf16_dots=True, onednn=False) == ("onednn", "bf16")


def _problem(cell, key=0, B=3, T=5, I=4, H=6, layers=2):
    params = init_stack(jax.random.PRNGKey(key), cell, I, H, num_layers=layers)
    xs = jax.random.normal(jax.random.PRNGKey(key + 1), (B, T, I))
    return params, xs


def _loss(cell, impl, lengths=None, compute_dtype=None):
    def loss(params, xs):
        ys, finals = apply_stack(cell, params, xs, impl=impl, lengths=lengths, compute_dtype=compute_dtype)
        h = get_cell(cell).hidden(finals[-1])
        return jnp.sum(ys**2) + jnp.sum(jnp.sin(h))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize(
    "cell", ["lstm", *(pytest.param(c, marks=pytest.mark.slow) for c in sorted(CELLS) if c != "lstm")]
)
def test_the_default_computes_what_scan_computes(cell):
    """Each pick is checked against scan in tests/test_impls.py; this checks the dispatch (one layer, ~10 s a cell)."""
    params, xs = _problem(cell, layers=1)
    for lengths in (None, jnp.array([5, 2, 0])):
        (v_d, g_d), (v_s, g_s) = (_loss(cell, impl, lengths)(params, xs) for impl in (None, "scan"))
        np.testing.assert_allclose(v_d, v_s, rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(g_d), jax.tree_util.tree_leaves(g_s)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _runs_onednn(f, *args) -> bool:
    return FORWARD_TARGET in jax.jit(f).lower(*args).as_text()


@pytest.mark.skipif(not ONEDNN_HERE, reason=str(IMPLS["onednn"].unavailable()))
def test_the_default_runs_the_rules_pick_and_never_changes_precision():
    """Where the pick cannot run the call exactly (lengths, float16 matmuls), it runs manual, same precision."""
    params, xs = _problem("lstm")
    assert _runs_onednn(lambda p, x: apply_stack("lstm", p, x)[0], params, xs)
    assert not _runs_onednn(lambda p, x: apply_stack("lstm", p, x, lengths=jnp.array([5, 2, 1]))[0], params, xs)
    half = jax.jit(lambda p, x: apply_stack("lstm", p, x, compute_dtype=jnp.float16)[0]).lower(params, xs).as_text()
    assert FORWARD_TARGET not in half and "f16" in half
    # A float32 call stays float32: no bf16 anywhere in the default's program, even on a CPU with bf16 dots.
    assert "bf16" not in jax.jit(lambda p, x: apply_stack("lstm", p, x)[0]).lower(params, xs).as_text()
    assert not _runs_onednn(lambda p, x: apply_stack("min_gru", p, x)[0], *_problem("min_gru"))
    from lstm_jax import lstm_step, lstm_zeros_carry

    carry = lstm_zeros_carry(6, (3,))
    assert _runs_onednn(lambda p, x: scan_layer(lstm_step, p[0], x, carry)[0], params, xs)
    assert not _runs_onednn(lambda p, x: scan_layer(lstm_step, p[0], x, carry, impl="scan")[0], params, xs)


def test_scan_layer_runs_your_own_step_under_scan_and_refuses_an_impl_for_it():
    params, xs = _problem("rnn", layers=1)
    cell = get_cell("rnn")

    def my_step(p, h, x):  # the RNN's equations, but not a registered step: only lax.scan can run it
        return cell.step(p, h, x)

    mine, _ = scan_layer(my_step, params[0], xs, cell.zeros_carry(6, (3,)))
    ref, _ = scan_layer(cell.step, params[0], xs, cell.zeros_carry(6, (3,)), impl="scan")
    np.testing.assert_allclose(mine, ref, rtol=1e-6)
    with pytest.raises(ValueError, match="registered cell's step"):
        scan_layer(my_step, params[0], xs, cell.zeros_carry(6, (3,)), impl="manual")


def test_the_scripts_flags_default_to_the_rule_and_take_auto():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, "impl")
    cli.add_flag(parser, "precision")
    args = parser.parse_args([])
    assert (args.impl, args.precision) == (fastest.RULE, fastest.RULE) == ("default", "default")
    args = parser.parse_args(["--impl", "auto", "--precision", "auto"])
    assert (args.impl, args.precision) == ("auto", "auto")


def test_a_run_records_what_it_asked_for_beside_what_ran():
    """layer_from_args replaces --impl/--precision by the choice; the choice keeps what was asked, so a record
    says whether a config's 'default' or 'auto' (or a named impl) produced it."""
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, "impl")
    cli.add_flag(parser, "precision")
    parser.add_argument("--cell", default="lstm")
    args = parser.parse_args(["--impl", "scan"])
    cli.layer_from_args(args, T=4, B=2, I=3, H=5)
    here = "bf16" if cpu_has_bf16() else "fp32"
    assert (args.impl, args.precision) == ("scan", here)
    assert args.layer_choice["asked"] == {"impl": "scan", "precision": "default"}
    assert args.layer_choice["chosen_by"] == "default rule"
