"""Early stops of fit that every process agrees on (lstm_jax.distributed.stopping), in one process.

The multi-process cases (SIGTERM through the launcher, a time budget that
expires mid-run, ``--impl auto`` decided once) run real JAX children in
tests/test_multiprocess.py; here: SIGTERM in a single process (the signal
from inside the run, and from outside a real subprocess), the time budget's
check schedule, the stall watchdog's one line, and the launcher's SIGKILL
after ``--signal-grace``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lstm_jax.distributed import launch
from lstm_jax.distributed.stopping import PREEMPTED_STATUS, Preempted, StallWatchdog, TimeBudget
from tests.signal_on_output import SignalOnOutput

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"

_spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# --------------------------------------------------------------------------- SIGTERM, one process


def test_sigterm_stops_at_the_next_step_with_a_checkpoint_and_resume_is_exact(tmp_path):
    """A SIGTERM during step 3 (sent from the run itself): Preempted at step 3, checkpoint 3, handler restored;
    resuming ends bit-for-bit on the uninterrupted run's parameters."""
    steps = 6
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stop:
        worker.run(tmp_path / "run", steps, sigterm_step=2)  # signals itself while loading step 2's batch
    assert stop.value.step == 3 and stop.value.code == PREEMPTED_STATUS == 143
    assert str(stop.value) == ("stopping at step 3/6: SIGTERM (a preemption request); checkpoint saved, "
                               "resume=True continues the run")
    assert signal.getsignal(signal.SIGTERM) is before
    assert sorted(int(d.name) for d in (tmp_path / "run" / "checkpoints").iterdir() if d.name.isdigit())[-1] == 3
    resumed = worker.run(tmp_path / "run", steps, resume=True)
    reference = worker.run(tmp_path / "ref", steps)
    assert resumed.step == reference.step == steps
    for a, b in zip(_leaves(resumed.params), _leaves(reference.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # the in-process test above covers the logic; this one a real process signalled from outside
def test_sigterm_from_outside_ends_a_real_process_with_status_143(tmp_path):
    """A real single-process run signalled from outside: exit 143 within seconds, one stop line, a checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--steps", "100000",
                             "--checkpoint-every", "1000"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size == 0:
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        proc.wait()
    print(f"single process: exit {proc.returncode} {seconds:.2f} s after SIGTERM")
    assert proc.returncode == 143 and seconds < 30, output[-2000:]
    stop_lines = [line for line in output.splitlines() if "SIGTERM (a preemption request)" in line]
    assert len(stop_lines) == 1 and "Traceback" not in output, output[-2000:]
    step = int(stop_lines[0].split("stopping at step ")[1].split("/")[0])
    assert (out / "checkpoints" / str(step)).is_dir()


# --------------------------------------------------------------------------- the time budget


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_budget_in_one_process_reads_the_clock_every_step():
    clock = FakeClock()
    budget = TimeBudget(1.0, start_step=10, clock=clock)  # 60 s
    clock.now += 59.9
    assert not budget.expired(11)
    clock.now += 0.2
    assert budget.expired(12) and budget.checks == 0  # no agreement needed in one process
    assert not TimeBudget(None).expired(10**9)


def test_time_budget_checks_halfway_to_the_deadline_at_the_average_step_time():
    """Process 0's verdict in a multi-process run: stop, or the step of the next check."""
    clock = FakeClock()
    budget = TimeBudget(1.0, start_step=100, clock=clock)
    clock.now += 10.0  # 10 steps of 1 s: 50 s left, 25 steps till halfway
    assert budget._verdict(110) == (0, 135)
    clock.now += 49.5  # 0.5 s left at ~1 s per step: check again at the next step
    assert budget._verdict(160) == (0, 161)
    clock.now += 1.0
    assert budget._verdict(161) == (1, 162)


# --------------------------------------------------------------------------- hangs end


def test_stall_watchdog_ends_the_process_with_one_line():
    """On: one line and exit 1 after ``timeout`` s without a beat. Off (``None`` or 0): no watching thread, and no
    exit however long the last beat is past (first, in the same child)."""
    code = ("import time; from lstm_jax.distributed.stopping import StallWatchdog\n"
            "for timeout in (None, 0):\n"
            "    off = StallWatchdog(timeout, poll=0.05).start(); off.beat(3, 'off'); off.last -= 1e6\n"
            "time.sleep(0.5); print('off: still running', flush=True)\n"
            "w = StallWatchdog(1.0, poll=0.1).start(); w.beat(7, 'checkpoint save'); time.sleep(60)")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1 and time.monotonic() - t0 < 30, proc.stderr
    assert proc.stdout == "off: still running\n"
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: process 0 of 1: no progress for 1 s at step 7 (checkpoint save): another process is dead, stuck "
        "or took another path; stopping (LSTM_JAX_STALL_TIMEOUT)")
    before = {t.name for t in threading.enumerate()}
    for timeout in (None, 0):
        off = StallWatchdog(timeout).start()
        assert off.timeout is None and "stall-watchdog" not in {t.name for t in threading.enumerate()} - before
        off.close()


def test_launcher_kills_processes_that_ignore_the_signal_after_the_grace_or_at_a_second_signal():
    """Children that ignore the signal: SIGKILL ``--signal-grace`` after it, or at once at a second signal. The
    signals are sent once both children print ``ready`` (their SIG_IGN in place), not at a fixed delay."""
    code = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(120)")
    out, err = SignalOnOutput(2, [signal.SIGTERM]), io.StringIO()  # handled by launch(), not pytest
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stderr(err):
            rc = launch.launch(["-c", code], 2, signal_grace=1.0, out=out)
    finally:
        out.cancel()
    seconds = time.monotonic() - t0
    assert rc == 128 + signal.SIGTERM and seconds < 15, (out.getvalue(), err.getvalue())
    killed = [f"launch: process {i} still running 1 s after SIGTERM; killing it (SIGKILL)" for i in range(2)]
    assert all(line in err.getvalue() for line in killed), err.getvalue()

    # A second signal does not wait for the grace (60 s here): SIGKILL at once.
    out, err = SignalOnOutput(2, [signal.SIGINT, signal.SIGINT], gap=0.5), io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stderr(err):
            rc = launch.launch(["-c", code.replace("SIGTERM", "SIGINT")], 2, signal_grace=60.0, out=out)
    finally:
        out.cancel()
    assert rc == 128 + signal.SIGINT and time.monotonic() - t0 < 15, (out.getvalue(), err.getvalue())
