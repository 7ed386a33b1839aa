"""The scripts' default layer path is a rule, not a timing (experiments/common/fastest.py).

The same command on the same machine picks the same implementation and
precision: :func:`fastest.rule` reads the backend, the cell and the CPU's
bf16 flags only; ``--impl auto`` / ``--precision auto`` time instead (tested
in tests/test_results_tools.py, and once-for-all-processes in
tests/test_multiprocess.py).
"""

from __future__ import annotations

import argparse

import pytest

from experiments.common import cli, fastest
from lstm_jax.impls import IMPLS
from lstm_jax.impls.onednn import cpu_has_bf16


@pytest.mark.parametrize(
    "cell,backend,bf16_dots,expected",
    [
        # Without the onednn extra (with it, see the next test).
        ("lstm", "cpu", True, ("manual", "bf16")),
        ("lstm", "cpu", False, ("manual", "fp32")),
        ("gru", "cpu", True, ("manual", "bf16")),
        ("min_gru", "cpu", True, ("manual", "bf16")),  # parallel was 3x slower than manual at T=100 here
        ("min_lstm", "cpu", False, ("manual", "fp32")),
        ("lstm", "gpu", True, ("manual", "fp32")),  # H200: bf16 slower, manual within 8% of cudnn
        ("rnn", "gpu", False, ("manual", "fp32")),
        ("min_gru", "gpu", False, ("parallel", "fp32")),  # 35-52x the sequential LSTM at long T
    ],
)
def test_rule_per_backend_and_cell(cell, backend, bf16_dots, expected):
    assert fastest.rule(cell, backend=backend, bf16_dots=bf16_dots, onednn=False) == expected


@pytest.mark.parametrize(
    "cell,backend,bf16_dots,expected",
    [
        ("lstm", "cpu", True, ("onednn", "bf16")),  # 1.67-3.00x manual/bf16, each in its own process
        ("lstm", "cpu", False, ("onednn", "fp32")),
        ("gru", "cpu", True, ("onednn", "fp32")),  # oneDNN 3.2's bf16 GRU is slower than its fp32 one
        ("rnn", "cpu", True, ("onednn", "bf16")),  # 0.92-1.68x manual/bf16
        ("min_gru", "cpu", True, ("manual", "bf16")),  # oneDNN has no such cell
        ("lstm", "gpu", True, ("manual", "fp32")),  # a CPU-only impl: the GPU rule is unchanged
    ],
)
def test_rule_with_onednn_available(cell, backend, bf16_dots, expected):
    assert fastest.rule(cell, backend=backend, bf16_dots=bf16_dots, onednn=True) == expected


def test_rule_keeps_a_given_impl_and_takes_a_policy_it_offers():
    assert fastest.rule("lstm", "scan", backend="cpu", bf16_dots=True) == ("scan", "bf16")
    assert fastest.rule("lstm", "cudnn", backend="gpu", bf16_dots=True) == ("cudnn", "fp32")  # cudnn: fp32 only
    assert fastest.rule("gru", "onednn", backend="cpu", bf16_dots=True, onednn=False) == ("onednn", "fp32")
    assert fastest.rule("lstm", "onednn", backend="cpu", bf16_dots=True, onednn=False) == ("onednn", "bf16")


def test_the_default_is_the_rule_here_and_times_nothing():
    onednn_here = IMPLS["onednn"].unavailable() is None
    here = ("onednn" if onednn_here else "manual", "bf16" if cpu_has_bf16() else "fp32")
    for _ in range(2):  # the same answer every time: nothing measured
        choice = fastest.choose("lstm", 128, 64, 128, 512, impl=fastest.RULE, precision=fastest.RULE)
        assert (choice["impl"], choice["precision"], choice["chosen_by"], choice["step_ms"]) == (
            *here, "default rule", {})
    given = fastest.choose("gru", 8, 2, 4, 8, impl="scan", precision=fastest.RULE)
    assert (given["impl"], given["precision"], given["chosen_by"]) == ("scan", here[1], "default rule")
    assert "the default for cpu" in fastest.describe(choice)


def test_the_scripts_flags_default_to_the_rule_and_take_auto():
    parser = argparse.ArgumentParser()
    cli.add_flag(parser, "impl")
    cli.add_flag(parser, "precision")
    args = parser.parse_args([])
    assert (args.impl, args.precision) == (fastest.RULE, fastest.RULE) == ("default", "default")
    args = parser.parse_args(["--impl", "auto", "--precision", "auto"])
    assert (args.impl, args.precision) == ("auto", "auto")
