"""A single-host SLURM cluster and Open MPI, for tests that run training jobs under a real cluster engine.

:class:`SlurmCluster` writes a minimal ``slurm.conf`` into a temporary
directory (one node, ``localhost`` at ``NodeAddr=127.0.0.1``, 2 CPUs, process
tracking by process group: no cgroups, no munge: ``auth/none``), starts
``slurmctld`` and ``slurmd`` in the foreground as this process's children,
waits until ``sinfo`` shows the node idle, and stops them by PID. Clients
(``srun``, ``sbatch``, ``scancel``, ``squeue``, ``sinfo``) find the
configuration through ``SLURM_CONF``, which :meth:`SlurmCluster.env` sets.
Everything it starts talks to 127.0.0.1 only (the daemons' ports are free
ports picked at start; the first job id is random, and with it the port
JAX's coordinator takes). A requeued job may start again after 10 s
(``AuthInfo=cred_expire=10``; SLURM's default is 120).

``missing(*names)`` names the first binary that is not installed, for a
one-line skip. Both engines come from Debian's packages (``slurmctld slurmd
slurm-client openmpi-bin``), which ``.ci/run`` installs.

Example (a test)::

    cluster = SlurmCluster(tmp_path).start()
    try:
        subprocess.run(["srun", "--ntasks=2", "hostname"], env=cluster.env(), check=True)
    finally:
        cluster.stop()
    assert not cluster.leftovers()
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SLURM_BINARIES = ("slurmctld", "slurmd", "srun", "sbatch", "scancel", "squeue", "sinfo")
MPI_BINARIES = ("mpirun",)
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def which(name: str) -> str | None:
    """``name`` on PATH or in the sbin folders (daemons live there; PATH may lack them)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing(*names: str) -> str | None:
    """The first of ``names`` that is not installed, or ``None``."""
    return next((n for n in names if which(n) is None), None)


def skip_unless_installed(*names: str) -> None:
    """Skip the calling test with one line naming the missing binary."""
    name = missing(*names)
    if name:
        pytest.skip(f"{name} not installed (apt-get install slurmctld slurmd slurm-client openmpi-bin)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=lstmjaxtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser={user}
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=10
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
LaunchParameters=use_interactive_step
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SchedulerType=sched/builtin
KillWait={kill_wait}
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
FirstJobId={first_job}
MessageTimeout=20
SlurmctldTimeout=60
SlurmdTimeout=60
PlugStackConfig={d}/plugstack.conf
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    """slurmctld + slurmd on localhost, in ``directory`` (see the module docstring).

    ``kill_wait``: seconds between SLURM's SIGTERM and SIGKILL at a time limit or ``scancel``.
    """

    def __init__(self, directory: Path, kill_wait: int = 30):
        self.dir = Path(directory)
        self.kill_wait = kill_wait
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.dir / "slurm.conf"
        self._logs = []

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
        env.update(extra)
        return env

    def run(self, *cmd: str, timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """A SLURM client command (``sinfo``, ``squeue``, ...) against this cluster."""
        return subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout,
                              check=check, **kw)

    def start(self, timeout: float = 60) -> "SlurmCluster":
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "plugstack.conf").write_text("")
        self.conf.write_text(SLURM_CONF.format(d=self.dir, ctld_port=free_port(), d_port=free_port(),
                                               user="root" if os.geteuid() == 0 else os.environ.get("USER", "root"),
                                               kill_wait=self.kill_wait,
                                               # JAX's coordinator port is the job id mod 4096 + 61440: not
                                               # the same port in every test session
                                               first_job=random.randrange(1000, 1_000_000)))
        for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", "localhost"])):
            self._logs.append(open(self.dir / f"{name}.err", "w"))
            self.procs[name] = subprocess.Popen([which(name), *args, "-f", str(self.conf)], env=self.env(),
                                                stdout=subprocess.DEVNULL, stderr=self._logs[-1],
                                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            r = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            if r.returncode == 0 and r.stdout.split() == ["localhost", "idle"]:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout} s: {r.stdout.strip()!r} {r.stderr.strip()!r}\n"
                           + self.logs())

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with status {p.returncode}\n" + self.logs())

    def logs(self, tail: int = 30) -> str:
        out = []
        for f in ("slurmctld.err", "slurmd.err", "slurmctld.log", "slurmd.log"):
            path = self.dir / f
            if path.exists():
                out += [f"--- {f}"] + path.read_text(errors="replace").splitlines()[-tail:]
        return "\n".join(out)

    def queue(self) -> list[str]:
        """``"id STATE"`` of every job ``squeue`` lists (pending, running, completing)."""
        return [line for line in self.run("squeue", "-h", "-o", "%i %T").stdout.splitlines() if line.strip()]

    def wait_queue_empty(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"squeue still lists {self.queue()} after {timeout} s")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM each daemon by PID, SIGKILL after 10 s; waits for both."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in self._logs:
            f.close()

    def leftovers(self) -> list[str]:
        """``"pid cmdline"`` of every live process started with this cluster's ``SLURM_CONF`` (daemons, steps, tasks)."""
        mark = f"SLURM_CONF={self.conf}".encode() + b"\0"
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes():
                    found.append(proc.name + " " + (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:  # gone meanwhile, or not ours to read
                continue
        return found


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from ``/proc/*/stat``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- the job every engine runs

CHAR_MODULE = "experiments.char_lm.char_lstm"
#: A tiny char_lstm run: 1xLSTM H=16 on the Zen of Python, global batch 4, every step logged.
CHAR_ARGS = ("--dataset", "zen", "--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4",
             "--impl", "manual", "--precision", "fp32", "--no-progress", "--eval-every", "100000",
             "--log-every", "1", "--max-minutes", "60", "--length", "20", "--eval-batch-size", "8")


def char_cmd(out, steps: int, *extra: str) -> list[str]:
    """The command line of one process of the char job (``--checkpoint-every`` defaults to the end only)."""
    every = () if "--checkpoint-every" in extra else ("--checkpoint-every", "100000")
    return [sys.executable, "-m", CHAR_MODULE, *CHAR_ARGS, *every, "--steps", str(steps), "--out", str(out), *extra]


def job_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def losses(run_dir) -> list[float]:
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


def steps_logged(run_dir) -> int:
    path = Path(run_dir) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def last_checkpoint(run_dir) -> int:
    return max(int(d.name) for d in (Path(run_dir) / "checkpoints").iterdir() if d.name.isdigit())


def assert_losses_equal(run_dir, ref_dir, tol: float = 1e-5) -> float:
    """Every step's training loss of ``run_dir`` equals ``ref_dir``'s to ``tol``; returns the largest difference."""
    a, b = losses(run_dir), losses(ref_dir)
    assert len(a) == len(b) > 0, (len(a), len(b))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    return float(np.max(np.abs(np.subtract(a, b))))


def coordinators(output: str, engine: str) -> dict[int, tuple[str, str]]:
    """``{process: (host:port, ip)}`` from the processes' ``joined the <engine> job`` lines."""
    found = re.findall(r"process (\d+) of \d+: joined the " + re.escape(engine) + r" job, coordinator (\S+) \((.*?)\)",
                       output)
    return {int(p): (address, ip) for p, address, ip in found}


def stop_steps(output: str, why: str) -> dict[int, int]:
    """``{process: step}`` from the ``process i: stopping at step N/M: <why>`` lines."""
    found = re.findall(r"process (\d+): stopping at step (\d+)/\d+: " + re.escape(why), output)
    return {int(p): int(step) for p, step in found}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll)


def start(cmd, env=None, **kw) -> subprocess.Popen:
    """``cmd`` in its own process group, output captured (see :func:`finish`)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=env or job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """``(returncode, output)``; the process group is SIGKILLed on the way out (nothing left behind)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args} did not finish within {timeout} s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
