"""Start a multi-process JAX job on this machine: ``python -m lstm_jax.distributed.launch``.

    python -m lstm_jax.distributed.launch --processes 2 --local-devices 2 -- -m experiments.char_lm.char_lstm --steps 200
    python -m lstm_jax.distributed.launch --processes 4 -- -m experiments.benchmarks.scaling --quick

Runs ``python <args after -->`` N times, as processes 0..N-1 of one job. Each
gets the variables :func:`lstm_jax.distributed.multiprocess.initialize_from_env` reads
(``LSTM_JAX_COORDINATOR`` = ``127.0.0.1:<free port>``, ``LSTM_JAX_NUM_PROCESSES``,
``LSTM_JAX_PROCESS_ID``, and ``LSTM_JAX_INIT_TIMEOUT`` if ``--init-timeout``);
``--local-devices K`` makes each process a CPU process with K devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``, ``JAX_PLATFORMS=cpu``).

Every line a process prints comes out here prefixed ``[p<i>]``. SIGINT/SIGTERM
/SIGHUP sent to the launcher are passed on to every process (a SIGTERM makes
:func:`lstm_jax.train.fit` stop all processes at one step with a checkpoint,
:mod:`lstm_jax.distributed.stopping`); a process still running ``--signal-grace`` seconds
(default 30) after the first signal, or at a second signal, is killed
(SIGKILL), and the launcher exits with ``128 + signal`` (143 for SIGTERM). If
one process fails (non-zero exit or killed), the launcher says so in one line,
stops the others (SIGTERM, then SIGKILL after ``--grace`` seconds: the
survivors would otherwise block in a collective until JAX's heartbeat timeout)
and exits with that process's status, so a job never hangs on a dead peer.
Children also die with the launcher (``PR_SET_PDEATHSIG`` on Linux).

On a cluster, do not use this: start the same script once per host/GPU with the
scheduler and set ``LSTM_JAX_DISTRIBUTED=auto`` (``jax.distributed.initialize()``
then reads SLURM / Open MPI / TPU variables); see the README.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from .multiprocess import ENV_COORDINATOR, ENV_INIT_TIMEOUT, ENV_NUM_PROCESSES, ENV_PROCESS_ID

__all__ = ["free_port", "process_env", "launch", "main"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_env(base: dict, *, process_id: int, num_processes: int, coordinator: str,
                local_devices: int | None = None, init_timeout: int | None = None,
                gpus_per_process: int | None = None) -> dict:
    """The environment of process ``process_id`` (pure: returns a new dict).

    ``gpus_per_process``: process ``i`` sees GPUs ``[i*K, (i+1)*K)`` (``CUDA_VISIBLE_DEVICES``).
    """
    env = dict(base)
    env.update({ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(num_processes),
                ENV_PROCESS_ID: str(process_id), "PYTHONUNBUFFERED": "1"})
    if init_timeout is not None:
        env[ENV_INIT_TIMEOUT] = str(init_timeout)
    if local_devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={local_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    if gpus_per_process is not None:
        first = process_id * gpus_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(first, first + gpus_per_process))
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch(command: Sequence[str], num_processes: int, *, local_devices: int | None = None,
           port: int | None = None, init_timeout: int | None = None, grace: float = 5.0,
           signal_grace: float = 30.0, gpus_per_process: int | None = None, out=None) -> int:
    """Run ``python *command`` as ``num_processes`` processes of one job; returns the exit status.

    0 when all succeed; otherwise the status of the first process that failed
    (``128 + signal`` if it was killed), after the others were stopped; after
    a signal to the launcher, ``128 + signal``. Bounded: ``signal_grace``
    seconds after a signal, whatever still runs is killed.
    """
    out = sys.stdout if out is None else out
    coordinator = f"127.0.0.1:{port or free_port()}"
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    received: list[int] = []
    signalled_at: list[float] = []

    def forward(signum, frame):
        received.append(signum)
        signalled_at.append(time.monotonic())
        for p in procs:  # a second signal: no more waiting
            _signal_group(p, signum if len(received) == 1 else signal.SIGKILL)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        for i in range(num_processes):
            env = process_env(os.environ, process_id=i, num_processes=num_processes, coordinator=coordinator,
                              local_devices=local_devices, init_timeout=init_timeout,
                              gpus_per_process=gpus_per_process)
            # Own process group (signals reach a child's own children too), output through a pipe to prefix it.
            p = subprocess.Popen([sys.executable, *command], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                 start_new_session=True, preexec_fn=_die_with_parent)
            procs.append(p)
            t = threading.Thread(target=_pump, args=(p.stdout, f"[p{i}] ", out), daemon=True)
            t.start()
            pumps.append(t)
        status = 0
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and not received:  # after a signal, the others are stopping anyway: let them finish
                i, c = failed[0]
                status = c if c > 0 else 128 - c
                running = [p for p in procs if p.poll() is None]
                if running:
                    print(f"launch: process {i} {_describe(c)}; stopping the other {len(running)} "
                          f"process{'es' if len(running) > 1 else ''}", file=sys.stderr, flush=True)
                _stop(running, grace)
                break
            if all(c is not None for c in codes):
                break
            if signalled_at and (len(received) > 1 or time.monotonic() - signalled_at[0] > signal_grace):
                first = signal.Signals(received[0]).name
                _kill_stragglers(procs, "at a second signal" if len(received) > 1 else
                                 f"{signal_grace:g} s after {first}")
                break
            time.sleep(0.05)
        return 128 + received[0] if received else status
    finally:
        _stop([p for p in procs if p.poll() is None], grace)
        for t in pumps:
            t.join(timeout=2.0)
        for s, h in old.items():
            signal.signal(s, h)


def _kill_stragglers(procs: list[subprocess.Popen], when: str) -> None:
    """SIGKILL every process still running ``when`` (``"30 s after SIGTERM"``), each with one line."""
    for i, p in enumerate(procs):
        if p.poll() is None:
            print(f"launch: process {i} still running {when}; killing it (SIGKILL)", file=sys.stderr, flush=True)
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` seconds, reap all."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lstm_jax.distributed.launch", description=__doc__.split("\n\n")[0],
                                usage="%(prog)s --processes N [--local-devices K] [options] -- SCRIPT [ARGS...]")
    p.add_argument("--processes", type=int, required=True, help="number of processes N")
    p.add_argument("--local-devices", type=int, default=None,
                   help="CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu); default: leave as is")
    p.add_argument("--gpus-per-process", type=int, default=None,
                   help="give process i GPUs i*K..i*K+K-1 (CUDA_VISIBLE_DEVICES); default: every process sees all")
    p.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--init-timeout", type=int, default=None,
                   help=f"seconds to wait for all processes to join ({ENV_INIT_TIMEOUT}; default 300)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds the other processes get to exit after one failed, before SIGKILL")
    p.add_argument("--signal-grace", type=float, default=30.0,
                   help="seconds the processes get to stop (checkpoint, exit) after a SIGINT/SIGTERM/SIGHUP "
                        "to the launcher, before SIGKILL; a second signal kills at once")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit("error: put the script after '--': python -m lstm_jax.distributed.launch --processes N -- SCRIPT [ARGS]")
    split = argv.index("--")
    args, command = build_parser().parse_args(argv[:split]), argv[split + 1:]
    if not command:
        raise SystemExit("error: no script after '--'")
    if args.processes < 1:
        raise SystemExit(f"error: --processes must be >= 1, got {args.processes}")
    if args.local_devices is not None and args.local_devices < 1:
        raise SystemExit(f"error: --local-devices must be >= 1, got {args.local_devices}")
    return launch(command, args.processes, local_devices=args.local_devices, port=args.port,
                  init_timeout=args.init_timeout, grace=args.grace, signal_grace=args.signal_grace,
                  gpus_per_process=args.gpus_per_process)


if __name__ == "__main__":
    sys.exit(main())
