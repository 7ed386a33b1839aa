"""Ctrl-C (SIGINT) during training stops like SIGTERM: an agreed step, a checkpoint, one line per process.

The job is ``char_lstm`` (:data:`cluster_fixtures.CHAR_ARGS`). Default run: a
SIGINT to the launcher of a 2-process job (it passes SIGINT on to every
process, as a terminal's Ctrl-C reaches every process of its foreground
group): both processes stop at the same step with a checkpoint there, print
``process i: stopping at step N/M: SIGINT (Ctrl-C); checkpoint saved ...``,
exit with 130 (so does the launcher), and no ``KeyboardInterrupt`` traceback
appears; Ctrl-C outside training (start-up, the final evaluation) ends a
script with one line and 130 too. ``-m slow``: the same for one plain process, and ``--resume`` after
the 2-process stop ends on the uninterrupted one-process run.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

from experiments.common import cli
from cluster_fixtures import (
    assert_losses_equal, char_cmd, finish, last_checkpoint, start, steps_logged, stop_steps, wait_for,
)

TIMEOUT = 400  # seconds for one job on a loaded 2-core machine
WHY = "SIGINT (Ctrl-C)"


def launcher(*cmd: str) -> list[str]:
    assert cmd[1] == "-m"
    return [sys.executable, "-m", "lstm_jax.distributed.launch", "--processes", "2", "--local-devices", "1", "--init-timeout",
            "120", "--", *cmd[1:]]


def interrupt_mid_run(cmd, out, at_step: int = 3) -> tuple[int, str]:
    proc = start(cmd)
    wait_for(lambda: steps_logged(out) >= at_step or proc.poll() is not None, TIMEOUT, f"step {at_step} logged")
    os.kill(proc.pid, signal.SIGINT)
    return finish(proc, TIMEOUT)


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]


def test_sigint_to_a_two_process_job_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    steps, out = 100_000, tmp_path / "job"
    rc, output = interrupt_mid_run(launcher(*char_cmd(out, steps)), out)
    stops = stop_steps(output, WHY)
    assert rc == 128 + signal.SIGINT and set(stops) == {0, 1} and stops[0] == stops[1], output[-3000:]
    assert 3 <= stops[0] < steps and last_checkpoint(out) == stops[0]
    assert f"[p0] process 0: stopping at step {stops[0]}/{steps}: {WHY}; checkpoint saved" in output
    assert_clean(output)


@pytest.mark.slow
def test_sigint_to_one_process_stops_with_a_checkpoint(tmp_path):
    steps, out = 100_000, tmp_path / "job"
    rc, output = interrupt_mid_run(char_cmd(out, steps), out)
    assert rc == 128 + signal.SIGINT, output[-3000:]
    lines = [line for line in output.splitlines() if WHY in line]
    assert len(lines) == 1 and lines[0].startswith("stopping at step "), output[-3000:]
    step = int(lines[0].split()[3].split("/")[0])
    assert 3 <= step < steps and last_checkpoint(out) == step
    assert_clean(output)


@pytest.mark.slow
def test_after_sigint_resume_ends_on_the_uninterrupted_run(tmp_path):
    steps, out = 200, tmp_path / "job"
    reference = start(char_cmd(tmp_path / "ref", steps))
    try:
        rc, output = interrupt_mid_run(launcher(*char_cmd(out, steps)), out)
    finally:
        ref_rc, ref_output = finish(reference, TIMEOUT)
    assert ref_rc == 0, ref_output[-3000:]
    stops = stop_steps(output, WHY)
    assert rc == 130 and set(stops) == {0, 1} and stops[0] == stops[1] < steps, output[-3000:]
    rc, output = finish(start(launcher(*char_cmd(out, steps, "--resume"))), TIMEOUT)
    assert rc == 0, output[-3000:]
    assert_losses_equal(out, tmp_path / "ref")


def test_sigint_outside_training_ends_a_script_with_one_line_and_130(capsys):
    def interrupted(args):
        raise KeyboardInterrupt  # what Ctrl-C raises before or after fit

    with pytest.raises(SystemExit) as stop:
        cli.run(cli.make_parser("a script"), interrupted, [])
    assert stop.value.code == 128 + signal.SIGINT
    assert capsys.readouterr().err == "interrupted (SIGINT) outside training; no checkpoint written by it\n"
