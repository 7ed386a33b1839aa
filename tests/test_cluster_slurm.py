"""Training jobs started by a real SLURM (slurmctld + slurmd on this host, loopback only).

The fixture (:class:`cluster_fixtures.SlurmCluster`) starts the two daemons
in a temporary directory for this module, waits until ``sinfo`` shows the
node idle, and at the end checks that ``squeue`` is empty, stops them by PID
and checks they are gone, and no process started with this cluster's
configuration (a job step, a task) is left. The node is ``localhost`` at ``NodeAddr=127.0.0.1``,
so the coordinator address JAX derives from the job's node list is loopback;
each test asserts it (``127.0.0.1``) from the line every process prints when
it joins. The job is ``char_lstm`` with ``LSTM_JAX_DISTRIBUTED=auto``
(:data:`cluster_fixtures.CHAR_ARGS`), compared with the same command run as
one plain process.

Default run: ``srun --ntasks=2`` trains as one process does (every step's
loss). ``-m slow``: ``scancel --signal=TERM`` mid-run (every task stops at one
step with a checkpoint, exit 143) and a re-submitted job resumes exactly; an
``sbatch --requeue`` script cancelled the same way and requeued with
``scontrol requeue``; SLURM's ``--time`` limit ends the job with a checkpoint.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from cluster_fixtures import (
    ROOT, SLURM_BINARIES, SlurmCluster, assert_losses_equal, char_cmd, coordinators, finish, job_env, last_checkpoint,
    pid_alive, skip_unless_installed, start, steps_logged, stop_steps, wait_for,
)

TIMEOUT = 400  # seconds for one job on a loaded 2-core machine (about 20 s idle)
SRUN = ("srun", "--ntasks=2", "--label", "--kill-on-bad-exit=0", "--export=ALL,LSTM_JAX_DISTRIBUTED=auto")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    skip_unless_installed(*SLURM_BINARIES)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), kill_wait=10)
    try:
        cluster.start()
        yield cluster
        cluster.wait_queue_empty()
    finally:
        pids = [p.pid for p in cluster.procs.values()]
        cluster.stop()
    assert not [pid for pid in pids if pid_alive(pid)], "a SLURM daemon is still running"
    assert not cluster.leftovers(), cluster.leftovers()  # no job step, task or daemon left behind


def srun(cluster: SlurmCluster, *cmd: str, options=()) -> subprocess.Popen:
    return start([*SRUN, *options, *cmd], env=cluster.env(**job_env()))


def assert_loopback_coordinator(output: str) -> None:
    found = coordinators(output, "SLURM")
    assert set(found) == {0, 1}, output[-3000:]
    assert found[0] == found[1] and found[0][1] == "127.0.0.1", found
    assert found[0][0].startswith("localhost:"), found  # the job's first node, as JAX derives it


def job_id(cluster: SlurmCluster) -> str:
    """The id of the one running job."""
    def running():
        return [line.split()[0] for line in cluster.queue() if line.endswith(" RUNNING")]
    wait_for(running, 120, "a running job")
    return running()[0]


def test_srun_two_tasks_train_as_one_process(slurm, tmp_path):
    steps = 8
    reference = start(char_cmd(tmp_path / "ref", steps))  # the same command, one plain process, meanwhile
    t0 = time.monotonic()
    rc, output = finish(srun(slurm, *char_cmd(tmp_path / "job", steps)), TIMEOUT)
    seconds = time.monotonic() - t0
    ref_rc, ref_output = finish(reference, TIMEOUT)
    assert rc == 0, output[-3000:] + slurm.logs()
    assert ref_rc == 0, ref_output[-3000:]
    assert_loopback_coordinator(output)
    assert "trained to step 8" in output and output.count("run directory:") == 1  # one report, from process 0
    diff = assert_losses_equal(tmp_path / "job", tmp_path / "ref")
    print(f"largest loss difference {diff:.1e}; srun --ntasks=2: {steps} steps equal to one process, job {seconds:.1f} s")


def cancel_mid_run(cluster: SlurmCluster, proc: subprocess.Popen, out, at_step: int = 3) -> tuple[str, float]:
    """Wait until the job logged ``at_step``, ``scancel --signal=TERM`` it; (output, seconds to srun's exit)."""
    jid = job_id(cluster)
    wait_for(lambda: steps_logged(out) >= at_step or proc.poll() is not None, TIMEOUT, f"step {at_step} logged")
    t0 = time.monotonic()
    cluster.run("scancel", "--signal=TERM", jid)
    rc, output = finish(proc, TIMEOUT)
    assert rc == 128 + signal.SIGTERM, output[-3000:]
    return output, time.monotonic() - t0


@pytest.mark.slow
def test_scancel_term_stops_at_one_step_with_a_checkpoint_and_a_resubmitted_job_resumes_exactly(slurm, tmp_path):
    steps, out = 300, tmp_path / "job"
    reference = start(char_cmd(tmp_path / "ref", steps))
    try:
        output, seconds = cancel_mid_run(slurm, srun(slurm, *char_cmd(out, steps)), out)
    finally:
        ref_rc, ref_output = finish(reference, TIMEOUT)
    assert ref_rc == 0, ref_output[-3000:]
    assert_loopback_coordinator(output)
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert set(stops) == {0, 1} and stops[0] == stops[1], output[-3000:]
    step = stops[0]
    assert 3 <= step < steps and last_checkpoint(out) == step
    assert "Traceback" not in output
    print(f"scancel --signal=TERM: both tasks stopped at step {step}/{steps}, srun exited 143 {seconds:.2f} s "
          f"after scancel")
    rc, output = finish(srun(slurm, *char_cmd(out, steps, "--resume")), TIMEOUT)
    assert rc == 0, output[-3000:]
    assert f"trained to step {steps}" in output
    print(f"resumed to step {steps}: largest loss difference from one process "
          f"{assert_losses_equal(out, tmp_path / 'ref'):.1e}")


SBATCH_SCRIPT = """#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --requeue
#SBATCH --output={out}/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --chdir={root}
# First run: a fresh run directory; a requeued run (or a re-submission) finds its checkpoints and resumes.
export LSTM_JAX_DISTRIBUTED=auto
resume=; [ -d {out}/checkpoints ] && resume=--resume
srun --label {cmd} $resume
"""


@pytest.mark.slow
def test_sbatch_requeue_script_cancelled_then_requeued_resumes_exactly(slurm, tmp_path):
    steps, out = 300, tmp_path / "job"
    out.mkdir()
    script = tmp_path / "job.sbatch"
    script.write_text(SBATCH_SCRIPT.format(out=out, root=ROOT, cmd=" ".join(char_cmd(out, steps))))
    reference = start(char_cmd(tmp_path / "ref", steps))
    try:
        jid = slurm.run("sbatch", "--parsable", str(script), cwd=tmp_path).stdout.strip()
        wait_for(lambda: steps_logged(out) >= 3 or not slurm.queue(), TIMEOUT, "step 3 logged")
        slurm.run("scancel", "--signal=TERM", jid)
        wait_for(lambda: "JobState=FAILED" in slurm.run("scontrol", "show", "job", jid).stdout, TIMEOUT, "job ended")
        state = slurm.run("scontrol", "show", "job", jid).stdout
        assert "ExitCode=143:0" in state, state
        step = last_checkpoint(out)
        slurm.run("scontrol", "requeue", jid)
        wait_for(lambda: "JobState=COMPLETED" in slurm.run("scontrol", "show", "job", jid).stdout, TIMEOUT,
                 "requeued job completed")
    finally:
        ref_rc, ref_output = finish(reference, TIMEOUT)
    assert ref_rc == 0, ref_output[-3000:]
    log = next(out.glob("slurm-*.out")).read_text()
    assert_loopback_coordinator(log)
    assert 3 <= step < steps and f"trained to step {steps}" in log, log[-3000:]
    print(f"resumed to step {steps}: largest loss difference from one process "
          f"{assert_losses_equal(out, tmp_path / 'ref'):.1e}")


@pytest.mark.slow
def test_the_time_limit_ends_the_job_with_a_checkpoint(slurm, tmp_path):
    """``--time=1``: at one minute SLURM sends SIGTERM to every task (SIGKILL KillWait = 10 s later)."""
    steps, out = 1_000_000, tmp_path / "job"
    t0 = time.monotonic()
    rc, output = finish(srun(slurm, *char_cmd(out, steps, "--checkpoint-every", "100000"), options=("--time=1",)),
                        TIMEOUT)
    seconds = time.monotonic() - t0
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert set(stops) == {0, 1} and stops[0] == stops[1], output[-3000:]
    assert last_checkpoint(out) == stops[0] and rc != 0
    assert "TIME LIMIT" in output, output[-3000:]
    print(f"--time=1: srun exited {rc} after {seconds:.1f} s, both tasks stopped at step {stops[0]} with a checkpoint")
