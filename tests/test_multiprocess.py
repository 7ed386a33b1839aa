"""Data-parallel training across real processes on localhost (lstm_jax.distributed.launch, lstm_jax.distributed.multiprocess).

The processes are real: ``python -m lstm_jax.distributed.launch`` starts them, they join
one JAX job over 127.0.0.1 (Gloo CPU collectives) and train the tiny char
model of ``tests/multiprocess_worker.py`` on the built-in Zen of Python. Every
subprocess runs in its own process group with a timeout and is killed in a
``finally``; the reference one-process run happens in this pytest process.

Default run: the pure checks, the launcher's failure handling and signal
forwarding (plain Python children, no JAX), an unreachable coordinator, one
real 2 processes x 2 devices run compared with the 1-device run (losses, final
params), whose checkpoint then restores and resumes in this single process, a
SIGTERM to the launcher of a real 2-process run (every process stops at one
step with a checkpoint, exit 143; ``--resume`` ends on the uninterrupted
result), one time budget that runs out mid-run with process 1's clock 3 s
ahead, and a peer stuck alive ended by the stall watchdogs.
``-m slow``: a killed process and ``--resume``, 1 -> 2 processes, the other
error paths, six time budgets in a row (fresh and resumed, half of them
skewed), ``--impl auto`` timed once by process 0 for both,
``decide_on_main``'s value, error and timeout, and a SIGTERM at the start of a
resumed run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lstm_jax.distributed import launch, multiprocess
from lstm_jax.train.checkpoint import load_checkpoint
from tests.cluster_fixtures import finish as finish_group
from tests.signal_on_output import SignalOnOutput

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"
STEPS = 6
TIMEOUT = 240  # seconds for one real multi-process run on a loaded 2-core machine

_spec = importlib.util.spec_from_file_location("multiprocess_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def start(cmd, env=None) -> subprocess.Popen:
    """``cmd`` in its own process group (so :func:`finish` can kill all it started), output captured."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(proc: subprocess.Popen, t0: float, timeout=TIMEOUT) -> tuple[int, str, float]:
    """``(returncode, output, seconds since t0)``; the whole process group is killed on the way out."""
    code, out = finish_group(proc, max(timeout - (time.monotonic() - t0), 1))
    return code, out, time.monotonic() - t0


def run_bounded(cmd, *, timeout=TIMEOUT, env=None) -> tuple[int, str, float]:
    t0 = time.monotonic()
    return finish(start(cmd, env), t0, timeout)


def launch_cmd(out, *args, processes=2, local_devices=2):
    return [sys.executable, "-m", "lstm_jax.distributed.launch", "--processes", str(processes), "--local-devices",
            str(local_devices), "--init-timeout", "60", "--", str(WORKER), "--out", str(out), *args]


def launch_worker(out, *args, timeout=TIMEOUT, **kwargs):
    return run_bounded(launch_cmd(out, *args, **kwargs), timeout=timeout)


def losses(run_dir) -> list[float]:
    recs = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def drop_steps_after(run_dir, step):
    """Delete the checkpoints after ``step``: the run looks interrupted there."""
    for d in (Path(run_dir) / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)


_REFERENCE: list = []  # computed once per session, by whichever fixture needs it first


def _reference_run(tmp_path_factory):
    """``(run_dir, TrainResult, seconds)`` of the 1-process 1-device run, here in pytest's process."""
    if not _REFERENCE:
        assert jax.process_count() == 1 and jax.device_count() == 1
        out = tmp_path_factory.mktemp("ref") / "run"
        t0 = time.monotonic()
        _REFERENCE.append((out, worker.run(out, STEPS), time.monotonic() - t0))
    return _REFERENCE[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2 processes x 2 CPU devices run and, meanwhile, the 1-process 1-device run in this process.

    ``{"mp": (run_dir, final params of process 0, seconds), "ref": (run_dir, TrainResult, seconds)}``;
    both checkpoint every step.
    """
    base = tmp_path_factory.mktemp("mp2")
    out, dump = base / "run", base / "final.npz"
    t0 = time.monotonic()
    proc = start(launch_cmd(out, "--steps", str(STEPS), "--dump", str(dump)))
    try:
        ref = _reference_run(tmp_path_factory)
    finally:
        rc, output, seconds = finish(proc, t0)
    assert rc == 0, output[-3000:]
    assert "[p0] process 0/2: 4 devices, step 6" in output and "[p1] process 1/2: 4 devices, step 6" in output
    final = np.load(dump)
    return {"mp": (out, [final[f"arr_{i}"] for i in range(len(final.files))], seconds), "ref": ref}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``(run_dir, TrainResult)`` of the 1-process 1-device run (the one :func:`runs` made, if it ran)."""
    return _reference_run(tmp_path_factory)[:2]


# --------------------------------------------------------------------------- pure parts


def test_process_rows_split_the_global_batch_in_process_order():
    assert multiprocess.process_rows(8, 0, 2, 4) == slice(0, 4)
    assert multiprocess.process_rows(8, 1, 2, 4) == slice(4, 8)
    assert multiprocess.process_rows(12, 3, 4, 4) == slice(9, 12)
    assert multiprocess.process_rows(6, 0, 1, 1) == slice(0, 6)
    with pytest.raises(ValueError, match=r"global batch of 6 is not divisible by the 4 devices \(2 processes x 2 local\)"):
        multiprocess.process_rows(6, 0, 2, 4)
    batch = (np.arange(8), np.arange(16).reshape(8, 2), np.bool_(True))
    x, y, flag = multiprocess.local_rows(batch, slice(4, 8))
    assert list(x) == [4, 5, 6, 7] and y.shape == (4, 2) and flag


def test_job_from_env_reads_and_checks_the_variables():
    assert multiprocess.job_from_env({})["num_processes"] is None
    assert multiprocess.initialize_from_env({}) == 1
    spec = multiprocess.job_from_env({"LSTM_JAX_NUM_PROCESSES": "2", "LSTM_JAX_PROCESS_ID": "1",
                                      "LSTM_JAX_COORDINATOR": "localhost:1234", "LSTM_JAX_INIT_TIMEOUT": "3"})
    assert (spec["num_processes"], spec["process_id"], spec["coordinator"], spec["init_timeout"]) == (2, 1, "localhost:1234", 3)
    bad = [
        ({"LSTM_JAX_NUM_PROCESSES": "2", "LSTM_JAX_PROCESS_ID": "2", "LSTM_JAX_COORDINATOR": "h:1"},
         "process count mismatch: LSTM_JAX_PROCESS_ID=2 but only 2 processes"),
        ({"LSTM_JAX_NUM_PROCESSES": "2"}, "needs LSTM_JAX_PROCESS_ID and LSTM_JAX_COORDINATOR"),
        ({"LSTM_JAX_NUM_PROCESSES": "two"}, "is not an integer"),
        ({"LSTM_JAX_NUM_PROCESSES": "2", "LSTM_JAX_PROCESS_ID": "0", "LSTM_JAX_COORDINATOR": "nohost"}, "not host:port"),
        ({"LSTM_JAX_DISTRIBUTED": "yes"}, "only value is 'auto'"),
    ]
    for env, message in bad:
        with pytest.raises(multiprocess.DistributedError, match=message.replace("(", r"\(")):
            multiprocess.job_from_env(env)
    env = launch.process_env({"XLA_FLAGS": "--xla_foo --xla_force_host_platform_device_count=8"}, process_id=1,
                             num_processes=3, coordinator="127.0.0.1:5", local_devices=2, init_timeout=7)
    assert env["XLA_FLAGS"] == "--xla_foo --xla_force_host_platform_device_count=2"
    assert (env["LSTM_JAX_PROCESS_ID"], env["LSTM_JAX_NUM_PROCESSES"], env["LSTM_JAX_INIT_TIMEOUT"]) == ("1", "3", "7")


# --------------------------------------------------------------------------- the launcher (plain children)


_CHILD = ("import os, sys, time; i = int(os.environ['LSTM_JAX_PROCESS_ID']); print('hello from', i, flush=True); "
          "{body}")


def test_launcher_prefixes_output_and_stops_the_others_when_one_dies():
    out = io.StringIO()
    t0 = time.monotonic()
    code = _CHILD.format(body="sys.exit(3) if i == 1 else time.sleep(120)")
    rc = launch.launch(["-c", code], 3, grace=2.0, out=out)
    assert rc == 3 and time.monotonic() - t0 < 20
    # The others may be stopped before they print anything: only the failing one is sure to have.
    assert "[p1] hello from 1" in out.getvalue()
    out = io.StringIO()
    assert launch.launch(["-c", _CHILD.format(body="pass")], 3, out=out) == 0
    assert all(f"[p{i}] hello from {i}\n" in out.getvalue() for i in range(3))


def test_launcher_forwards_a_signal_to_every_process():
    """Each child traps SIGTERM and says so; the launcher gets SIGTERM once both are ready, and every child must
    report it (the launcher's 143 alone would not show that it passed the signal on) with no SIGKILL."""
    code = ("import os, signal, sys, time; i = os.environ['LSTM_JAX_PROCESS_ID']\n"
            "def got(signum, frame):\n"
            "    print('process', i, 'got', signal.Signals(signum).name, flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, got); print('ready', flush=True); time.sleep(120)")
    out, err = SignalOnOutput(2, [signal.SIGTERM]), io.StringIO()  # handled by launch(), not pytest
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stderr(err):
            rc = launch.launch(["-c", code], 2, grace=2.0, signal_grace=10.0, out=out)
    finally:
        out.cancel()
    assert rc == 128 + signal.SIGTERM and time.monotonic() - t0 < 20, (out.getvalue(), err.getvalue())
    got = re.findall(r"^\[p(\d)\] process \1 got SIGTERM$", out.getvalue(), re.M)
    assert sorted(got) == ["0", "1"], out.getvalue()
    assert "killing" not in err.getvalue(), err.getvalue()


def test_launcher_cli_refuses_a_missing_script():
    with pytest.raises(SystemExit, match="put the script after '--'"):
        launch.main(["--processes", "2"])
    with pytest.raises(SystemExit, match="--processes must be >= 1"):
        launch.main(["--processes", "0", "--", "x.py"])


# --------------------------------------------------------------------------- real JAX processes


def test_unreachable_coordinator_is_one_line_naming_the_address(tmp_path):
    port = launch.free_port()
    env = _env(LSTM_JAX_NUM_PROCESSES="2", LSTM_JAX_PROCESS_ID="1", LSTM_JAX_COORDINATOR=f"127.0.0.1:{port}",
               LSTM_JAX_INIT_TIMEOUT="2", JAX_PLATFORMS="cpu")
    rc, out, seconds = run_bounded([sys.executable, str(WORKER), "--out", str(tmp_path / "r")], env=env, timeout=120)
    last = out.strip().splitlines()[-1]
    assert rc == 1 and "Traceback" not in out, out
    assert last == (f"error: could not reach the coordinator (process 0) at 127.0.0.1:{port} within 2 s "
                    "(LSTM_JAX_INIT_TIMEOUT); is process 0 running, and is the address right?")


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (in the default run, the srun and mpirun tests (tests/test_cluster_*.py) train two processes as one and test_sigint.py stops them at one step)
def test_two_processes_train_like_one_device(runs):
    ref_dir, ref, ref_seconds = runs["ref"]
    mp_dir, mp_final, seconds = runs["mp"]
    print(f"2 processes x 2 devices: {seconds:.1f} s (the 1-device run alongside: {ref_seconds:.1f} s)")
    assert_close(losses(mp_dir), losses(ref_dir))
    assert len(losses(mp_dir)) == STEPS  # one writer: process 0
    assert_close(mp_final, leaves(ref.params))
    # The checkpoint the 2 processes wrote restores here, in 1 process, to exactly their params.
    params, meta = load_checkpoint(mp_dir, "last", like=ref.params)
    assert meta["step"] == STEPS
    for a, b in zip(leaves(params), mp_final):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(runs, tmp_path):
    ref_dir, ref, _ = runs["ref"]
    run = tmp_path / "run"
    shutil.copytree(runs["mp"][0], run)
    drop_steps_after(run, 3)
    resumed = worker.run(run, STEPS, resume=True)
    assert resumed.step == STEPS
    assert_close(leaves(resumed.params), leaves(ref.params))
    assert_close(losses(run), losses(ref_dir))


@pytest.mark.slow
def test_killed_process_stops_the_job_and_resume_continues_exactly(reference, tmp_path):
    ref_dir, ref = reference
    out = tmp_path / "run"
    rc, output, seconds = launch_worker(out, "--steps", str(STEPS), "--crash-process", "1", "--crash-step", "3")
    assert rc == 128 + signal.SIGKILL, output[-3000:]
    assert "launch: process 1 was killed by SIGKILL; stopping the other 1 process" in output
    print(f"crashed run: {seconds:.1f} s")
    rc, output, seconds = launch_worker(out, "--steps", str(STEPS), "--resume")
    assert rc == 0, output[-3000:]
    print(f"resumed run: {seconds:.1f} s")
    assert_close(losses(out), losses(ref_dir))
    params, _ = load_checkpoint(out, "last", like=ref.params)
    assert_close(leaves(params), leaves(ref.params))


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_in_two_processes(reference, tmp_path):
    ref_dir, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    drop_steps_after(run, 3)
    rc, output, _ = launch_worker(run, "--steps", str(STEPS), "--resume")
    assert rc == 0, output[-3000:]
    params, _ = load_checkpoint(run, "last", like=ref.params)
    assert_close(leaves(params), leaves(ref.params))
    assert_close(losses(run), losses(ref_dir))


@pytest.mark.slow
def test_indivisible_global_batch_is_one_line_in_every_process(tmp_path):
    rc, output, _ = launch_worker(tmp_path / "r", "--global-batch", "6")
    assert rc == 1 and "Traceback" not in output, output[-3000:]
    line = "error: global batch of 6 is not divisible by the 4 devices (2 processes x 2 local); choose a multiple of 4"
    assert f"[p0] {line}" in output


@pytest.mark.slow
def test_missing_processes_time_out_with_one_line(tmp_path):
    port = launch.free_port()
    env = _env(LSTM_JAX_NUM_PROCESSES="2", LSTM_JAX_PROCESS_ID="0", LSTM_JAX_COORDINATOR=f"127.0.0.1:{port}",
               LSTM_JAX_INIT_TIMEOUT="3", JAX_PLATFORMS="cpu")
    rc, out, _ = run_bounded([sys.executable, str(WORKER), "--out", str(tmp_path / "r")], env=env, timeout=120)
    assert rc == 1 and "Traceback" not in out, out
    assert out.strip().splitlines()[-1].startswith(
        f"error: process 0: not all 2 processes joined the coordinator at 127.0.0.1:{port} within 3 s")


# --------------------------------------------------------------------------- agreed stops (lstm_jax.distributed.stopping)


def stop_steps(output: str, why: str) -> dict[str, int]:
    """``{"p0": step, "p1": step}`` from the processes' ``stopping at step N/M: <why>`` lines."""
    found = re.findall(r"\[p(\d+)\] process \1: stopping at step (\d+)/\d+: " + re.escape(why), output)
    return {f"p{p}": int(step) for p, step in found}


def last_checkpoint(run_dir) -> int:
    return max(int(d.name) for d in (Path(run_dir) / "checkpoints").iterdir() if d.name.isdigit())


@pytest.mark.slow  # 15-55 s on 2 cores; CI's slow tier runs it (in the default run, the srun and mpirun tests (tests/test_cluster_*.py) train two processes as one and test_sigint.py stops them at one step)
def test_sigterm_to_the_launcher_stops_every_process_at_one_step_and_resume_is_exact(tmp_path):
    """Process 0 sends SIGTERM to the launcher at step 3; the launcher passes it on, JAX's preemption service
    catches it in both processes, and fit stops both at the same step with a checkpoint there (exit 143)."""
    steps, out, ref_dir = 40, tmp_path / "run", tmp_path / "ref"
    every = ["--checkpoint-every", "1000"]  # checkpoints only where the run stops (and at its end)
    t0 = time.monotonic()
    proc = start(launch_cmd(out, "--steps", str(steps), "--sigterm-step", "3", *every, local_devices=1))
    try:
        reference = worker.run(ref_dir, steps, checkpoint_every=1000)  # uninterrupted, 1 device, here meanwhile
    finally:
        rc, output, seconds = finish(proc, t0)
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert rc == 128 + signal.SIGTERM and set(stops) == {"p0", "p1"}, output[-3000:]
    step = stops["p0"]
    assert stops["p1"] == step and 3 < step < steps and last_checkpoint(out) == step
    elapsed = {r["step"]: r["elapsed_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    print(f"SIGTERM at step 3, all stopped at step {step}, {elapsed[step] - elapsed[3]:.2f} s of training later; "
          f"job {seconds:.1f} s")
    rc, output, _ = launch_worker(out, "--steps", str(steps), "--resume", *every, local_devices=1)
    assert rc == 0, output[-3000:]
    # the loss each process's divergence guard read: the same bits (no agreement needed for that stop)
    bits = dict(re.findall(r"\[(p\d)\] process \d/2: .* bits (\S+)", output))
    assert set(bits) == {"p0", "p1"} and bits["p0"] == bits["p1"], output[-3000:]
    params, meta = load_checkpoint(out, "last", like=reference.params)
    assert meta["step"] == steps
    assert_close(leaves(params), leaves(reference.params))
    assert_close(losses(out), losses(ref_dir))


def budget_run(out, minutes: float, *, skewed: bool, resume: bool, after: int = 0) -> int:
    """One 2-process run of ``out`` with a time budget of ``minutes`` (process 1's clock 3 s ahead if
    ``skewed``), checkpoints every 3 steps; it must end (rc 0) within the budget plus start-up, both processes
    stopped at the same step (later than ``after``) with a checkpoint there. Returns that step."""
    args = ["--steps", "100000", "--checkpoint-every", "3", "--max-minutes", str(minutes)]
    env = _env(MP_WORKER_CLOCK_SKEW="3") if skewed else None
    rc, output, seconds = run_bounded(launch_cmd(out, *args, *(["--resume"] if resume else []), local_devices=1),
                                      timeout=180, env=env)
    stops = stop_steps(output, f"time budget of {minutes} min reached")
    print(f"budget {minutes} min{', skewed' if skewed else ''}: stopped at {stops} after {seconds:.1f} s")
    assert rc == 0 and set(stops) == {"p0", "p1"} and stops["p0"] == stops["p1"], output[-3000:]
    assert last_checkpoint(out) == stops["p0"] > after and seconds < 60 * minutes + 90
    return stops["p0"]


@pytest.mark.slow  # about a minute on 2 cores (JAX start-up, a 20 s stall or a 9 s budget); CI's slow tier runs it
def test_a_time_budget_that_runs_out_mid_run_with_skewed_clocks_stops_both_at_one_step(tmp_path):
    """Process 1's clock 3 s ahead made the per-process decisions disagree (before: Gloo 'collective mismatch'
    abort or a hang, 3 in 8 unskewed runs); process 0's verdict, shared, stops both at one step."""
    budget_run(tmp_path / "run", 0.15, skewed=True, resume=False)


@pytest.mark.slow
def test_a_time_budget_that_runs_out_mid_run_never_hangs_and_stops_all_at_one_step(tmp_path):
    """Six budgets in a row, fresh and then resumed, each expiring mid-run (after compiling, which the budget
    includes); every other run with process 1's clock 3 s ahead. Every job ends within its budget plus
    start-up, both processes at the same, later step."""
    out, last = tmp_path / "run", 0
    for i, minutes in enumerate([0.15, 0.1, 0.2, 0.15, 0.1, 0.2]):
        last = budget_run(out, minutes, skewed=i % 2 == 0, resume=i > 0, after=last)


@pytest.mark.slow
def test_auto_is_timed_once_by_process_0_and_shared(tmp_path):
    """Both processes report the same choice with the same timings to the microsecond: measured once."""
    rc, output, _ = launch_worker(tmp_path / "r", "--layer-choice", local_devices=1)
    assert rc == 0, output[-3000:]
    choices = {m.group(1): json.loads(m.group(2)) for m in re.finditer(r"\[(p\d)\] choice (.*)", output)}
    assert set(choices) == {"p0", "p1"} and choices["p0"]["chosen_by"] == "measured"
    # every candidate of this machine timed (4 without oneDNN, 6 with it), and p1 got p0's timings
    assert choices["p1"] == choices["p0"] and list(choices["p0"]["step_ms"]) == choices["p0"]["candidates"]
    assert len(choices["p0"]["candidates"]) >= 4


_DECIDE = """
import time
from lstm_jax.distributed import multiprocess
multiprocess.initialize_from_env()
import jax
print("value", multiprocess.decide_on_main(lambda: {"x": jax.process_index()}, "thing"), flush=True)
try:
    multiprocess.decide_on_main(lambda: 1 / 0, "ratio")
except Exception as e:
    print(type(e).__name__, e, flush=True)
if jax.process_index() == 0:
    time.sleep(3)  # never decides the next one
else:
    try:
        multiprocess.decide_on_main(lambda: 0, "late thing", timeout=1)
    except Exception as e:
        print(type(e).__name__, e, flush=True)
"""


@pytest.mark.slow
def test_decide_on_main_shares_process_0s_value_and_error_and_times_out_in_one_line():
    rc, output, _ = run_bounded([sys.executable, "-m", "lstm_jax.distributed.launch", "--processes", "2", "--local-devices", "1",
                                 "--", "-c", _DECIDE], timeout=120)
    assert rc == 0, output[-3000:]
    assert "[p0] value {'x': 0}" in output and "[p1] value {'x': 0}" in output
    assert "[p0] ZeroDivisionError division by zero" in output
    assert "[p1] ValueError process 0 failed to decide the ratio: ZeroDivisionError: division by zero" in output
    assert re.search(r"\[p1\] DistributedError process 1: no late thing from process 0 within 1 s \(\w+\); "
                     r"is process 0 alive and running the same program\?", output), output[-3000:]


@pytest.mark.slow  # about a minute on 2 cores (JAX start-up, a 20 s stall or a 9 s budget); CI's slow tier runs it
def test_a_stuck_peer_ends_the_job_within_the_stall_timeout_with_one_line(tmp_path):
    """Process 1 hangs (alive) loading step 5; process 0 waits in the step's all-reduce. Each process's stall
    watchdog ends it after LSTM_JAX_STALL_TIMEOUT=20 s (more than compiling the first step takes here under
    load: that gap counts too) with one line; the launcher stops the other."""
    env = _env(LSTM_JAX_STALL_TIMEOUT="20")
    cmd = launch_cmd(tmp_path / "r", "--steps", "40", "--stall-process", "1", "--stall-step", "5",
                     "--checkpoint-every", "1000", local_devices=1)
    rc, output, seconds = run_bounded(cmd, env=env, timeout=180)
    lines = re.findall(r"error: process (\d) of 2: no progress for 20 s at step (\d+) \((.*?)\): another process is "
                       r"dead, stuck or took another path; stopping \(LSTM_JAX_STALL_TIMEOUT\)", output)
    print(f"stuck peer: exit {rc} after {seconds:.1f} s; {lines}")
    assert rc == 1 and lines, output[-3000:]
    assert all(step == "5" and doing == "training step 6" for _, step, doing in lines)


@pytest.mark.slow
def test_a_sigterm_at_the_start_of_a_resumed_run_stops_it_at_its_first_step(tmp_path):
    """A resumed run's step counter starts high; a notice that reaches JAX before fit reports any step is
    synced against a stale counter (sync point 1) that this loop never meets. The agreed look at the notice
    at the loop's first boundary stops both processes there."""
    out, every = tmp_path / "run", ["--checkpoint-every", "1000"]
    rc, output, _ = launch_worker(out, "--steps", "40", "--sigterm-step", "3", *every, local_devices=1)
    first = stop_steps(output, "SIGTERM (a preemption request)")
    assert rc == 143 and set(first) == {"p0", "p1"}, output[-3000:]
    start = first["p0"]
    rc, output, _ = launch_worker(out, "--steps", "40", "--resume", "--sigterm-step", str(start), *every,
                                  local_devices=1)
    stops = stop_steps(output, "SIGTERM (a preemption request)")
    assert rc == 143 and stops == {"p0": start + 1, "p1": start + 1}, output[-3000:]
    assert last_checkpoint(out) == start + 1
