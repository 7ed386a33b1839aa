"""Training jobs started by Open MPI's ``mpirun`` (this host, loopback only).

``mpirun`` runs with its out-of-band channel and transports restricted to
``lo`` (:data:`MPIRUN`), so the URI JAX reads the coordinator's IP from
(``OMPI_MCA_orte_hnp_uri``) names 127.0.0.1 only; each test asserts the
coordinator every process joined is 127.0.0.1. The processes do not call MPI
themselves: ``mpirun`` starts them, JAX's Open MPI detection
(``LSTM_JAX_DISTRIBUTED=auto``) reads their rank and count, and they talk
through JAX's own coordinator and Gloo.

Default run: ``mpirun -n 2`` trains ``char_lstm`` as one process does (every
step's loss). ``-m slow``: a SIGTERM to ``mpirun`` mid-run (it passes SIGTERM
to every process 10 s later): one agreed step, a checkpoint, and the same
command with ``--resume`` ends on the one-process run; the same for
``mnist_lstm`` (SIGTERM to each process); ``long_range`` equal to one process.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from cluster_fixtures import (
    MPI_BINARIES, assert_losses_equal, char_cmd, children, coordinators, finish, job_env, last_checkpoint,
    skip_unless_installed, start, steps_logged, stop_steps, wait_for,
)

TIMEOUT = 400  # seconds for one job on a loaded 2-core machine (about 20 s idle)
#: --oversubscribe: 2 processes may share fewer cores; --bind-to none: each may use both cores;
#: --allow-run-as-root: the tests may run as root (containers, CI); odls_base_sigkill_timeout T: on a
#: SIGTERM mpirun sends SIGCONT, SIGTERM T s later, SIGKILL T s after that (default 1: too short to save).
MPIRUN = ("mpirun", "-n", "2", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--tag-output",
          "--mca", "oob_tcp_if_include", "lo", "--mca", "btl", "self,vader", "--mca", "odls_base_sigkill_timeout",
          "10", "-x", "LSTM_JAX_DISTRIBUTED=auto")


@pytest.fixture(autouse=True)
def _installed():
    skip_unless_installed(*MPI_BINARIES)


def mpirun(*cmd: str):
    env = job_env()
    for var in [v for v in env if v.startswith("SLURM_")]:  # not inside a SLURM allocation: mpirun's own launcher
        del env[var]
    return start([*MPIRUN, *cmd], env=env)


def assert_loopback_coordinator(output: str) -> None:
    found = coordinators(output, "Open MPI")
    assert set(found) == {0, 1}, output[-3000:]
    assert found[0] == found[1] and found[0][1] == "127.0.0.1" and found[0][0].startswith("127.0.0.1:"), found


def test_mpirun_two_processes_train_as_one_process(tmp_path):
    steps = 8
    reference = start(char_cmd(tmp_path / "ref", steps))  # the same command, one plain process, meanwhile
    t0 = time.monotonic()
    rc, output = finish(mpirun(*char_cmd(tmp_path / "job", steps)), TIMEOUT)
    seconds = time.monotonic() - t0
    ref_rc, ref_output = finish(reference, TIMEOUT)
    assert rc == 0, output[-3000:]
    assert ref_rc == 0, ref_output[-3000:]
    assert_loopback_coordinator(output)
    assert "trained to step 8" in output and output.count("run directory:") == 1  # one report, from process 0
    diff = assert_losses_equal(tmp_path / "job", tmp_path / "ref")
    print(f"largest loss difference {diff:.1e}; mpirun -n 2: {steps} steps equal to one process, job {seconds:.1f} s")


@pytest.mark.slow
def test_sigterm_to_mpirun_stops_at_one_step_with_a_checkpoint_and_resume_is_exact(tmp_path):
    steps, out = 1000, tmp_path / "job"  # long enough to be training when mpirun passes the SIGTERM on
    reference = start(char_cmd(tmp_path / "ref", steps))
    try:
        proc = mpirun(*char_cmd(out, steps))
        wait_for(lambda: steps_logged(out) >= 3 or proc.poll() is not None, TIMEOUT, "step 3 logged")
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc, output = finish(proc, TIMEOUT)
        seconds = time.monotonic() - t0
    finally:
        ref_rc, ref_output = finish(reference, TIMEOUT)
    assert ref_rc == 0, ref_output[-3000:]
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert set(stops) == {0, 1} and stops[0] == stops[1], output[-3000:]
    assert 3 <= stops[0] < steps and last_checkpoint(out) == stops[0] and rc != 0
    print(f"SIGTERM to mpirun: both stopped at step {stops[0]}/{steps}, mpirun exited {rc} {seconds:.2f} s later")
    rc, output = finish(mpirun(*char_cmd(out, steps, "--resume")), TIMEOUT)
    assert rc == 0, output[-3000:]
    print(f"resumed to step {steps}: largest loss difference from one process "
          f"{assert_losses_equal(out, tmp_path / 'ref'):.1e}")


MNIST_MODULE = "experiments.classification.mnist_lstm"
MNIST_ARGS = ("--dataset", "fashion_mnist", "--source", "idx", "--mode", "rows", "--train-subset", "600",
              "--val-size", "100", "--test-subset", "100", "--hidden", "16", "--batch-size", "8", "--impl", "manual",
              "--precision", "fp32", "--no-progress", "--no-plots", "--log-every", "1", "--eval-every", "100000",
              "--eval-batch-size", "100", "--max-minutes", "60")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_mnist_lstm_under_mpirun_trains_as_one_process_and_resumes_exactly_after_sigterm(tmp_path):
    """The image classifier as a 2-process job, SIGTERMed mid-run (each process, as a cluster engine delivers
    it), then resumed with ``--resume``: every step's loss equal to one uninterrupted process. (200 steps: from
    about step 250 on, the two summation orders of the gradient drift apart by more than 1e-5.)"""
    steps, out = 200, tmp_path / "job"

    def cmd(run_dir, *extra):
        return [sys.executable, "-m", MNIST_MODULE, *MNIST_ARGS, "--steps", str(steps), "--out", str(run_dir), *extra]

    reference = start(cmd(tmp_path / "ref"))
    try:
        proc = mpirun(*cmd(out))
        wait_for(lambda: steps_logged(out) >= 3 or proc.poll() is not None, TIMEOUT, "step 3 logged")
        for pid in children(proc.pid):  # the two Python processes (mpirun starts local ones itself)
            os.kill(pid, signal.SIGTERM)
        rc, output = finish(proc, TIMEOUT)
    finally:
        ref_rc, ref_output = finish(reference, TIMEOUT)
    assert ref_rc == 0, ref_output[-3000:]
    assert_loopback_coordinator(output)
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert set(stops) == {0, 1} and stops[0] == stops[1] < steps and last_checkpoint(out) == stops[0], output[-3000:]
    rc, output = finish(mpirun(*cmd(out, "--resume")), TIMEOUT)
    assert rc == 0, output[-3000:]
    print(f"mnist_lstm stopped at step {stops[0]}, resumed to step {steps}: largest loss difference from one "
          f"process {assert_losses_equal(out, tmp_path / 'ref'):.1e}")


@pytest.mark.slow
def test_long_range_under_mpirun_trains_as_one_process(tmp_path):
    """The long-range sweep (no checkpoints: a stop keeps the finished runs) as a 2-process job: the same test
    curve as one process, one report."""
    args = ["-m", "experiments.long_range.long_range", "--task", "adding", "--lengths", "10", "--cells", "lstm",
            "--steps", "30", "--hidden", "8", "--batch-size", "8", "--eval-every", "10", "--test-size", "64",
            "--max-minutes", "5", "--impl", "manual", "--precision", "fp32"]
    reference = start([sys.executable, *args, "--out", str(tmp_path / "ref")])
    rc, output = finish(mpirun(sys.executable, *args, "--out", str(tmp_path / "job")), TIMEOUT)
    ref_rc, ref_output = finish(reference, TIMEOUT)
    assert rc == 0 and ref_rc == 0, output[-3000:] + ref_output[-3000:]
    assert_loopback_coordinator(output)
    assert output.count("| lstm | ") == 2, output[-3000:]  # the two tables, from process 0 only
    ours, ref = (json.loads((tmp_path / d / "results.json").read_text())["runs"][0] for d in ("job", "ref"))
    np.testing.assert_allclose([v for _, v in ours["curve"]], [v for _, v in ref["curve"]], rtol=1e-5)
    assert ours["steps"] == ref["steps"] == 30
