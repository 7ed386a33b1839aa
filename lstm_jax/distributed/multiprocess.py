"""Several processes, one data-parallel job: joining it, and each process's share of a batch.

A multi-process job runs the *same* script in every process (SPMD). Each
process calls :func:`initialize_from_env` first (before any other JAX call);
afterwards ``jax.devices()`` lists the devices of every process,
:func:`lstm_jax.distributed.sharding.make_data_mesh` spans them, and
:func:`lstm_jax.train.fit` trains across all of them unchanged.

Where the job's shape comes from (read by :func:`initialize_from_env`):

* ``LSTM_JAX_NUM_PROCESSES`` / ``LSTM_JAX_PROCESS_ID`` / ``LSTM_JAX_COORDINATOR``
  (``host:port`` of process 0): set by ``python -m lstm_jax.distributed.launch`` for
  processes on this machine, or by hand.
* ``LSTM_JAX_DISTRIBUTED=auto``: let ``jax.distributed.initialize()`` detect
  everything (SLURM, Open MPI, Cloud TPU).
* none of them: a single process; nothing to do.
* ``LSTM_JAX_INIT_TIMEOUT`` (seconds, default 300): how long to wait for the
  coordinator and the other processes before giving up with one line naming
  the address (XLA itself would abort the process with a C++ stack trace).
* ``LSTM_JAX_HEARTBEAT_TIMEOUT`` (seconds, default JAX's 100): how soon the
  survivors notice a dead process when no launcher is there to stop them.
* ``LSTM_JAX_STALL_TIMEOUT`` (seconds, default 600; ``0``: off): a process of
  a multi-process :func:`~lstm_jax.train.fit` that makes no progress for this
  long ends itself with one line naming it and the step
  (:class:`lstm_jax.distributed.stopping.StallWatchdog`); also how long :func:`decide_on_main`
  waits for process 0.

Decisions that change control flow are taken once and shared, never computed
per process from local clocks or timings: :func:`decide_on_main` (process 0
decides, e.g. by timing; the others receive its JSON-able result),
:func:`from_main` (process 0's numbers) and :func:`any_process` (one flag,
all-reduced).

Batches: ``get_batch(step)`` returns *this process's* rows of the global batch
of ``step``. :func:`process_rows` says which rows those are: process ``p`` of
``n`` gets the ``p``-th of ``n`` equal contiguous blocks, so the global batch
(and hence the run) is the same whatever the process count; data loaders take
``rows=`` (e.g. :func:`lstm_jax.data.windows.random_windows`) and read only
those rows.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any, Mapping

import jax
import numpy as np

from . import sharding

__all__ = [
    "ENV_AUTO",
    "ENV_COORDINATOR",
    "ENV_HEARTBEAT_TIMEOUT",
    "ENV_INIT_TIMEOUT",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "ENV_STALL_TIMEOUT",
    "DistributedError",
    "JobSpec",
    "job_from_env",
    "initialize_from_env",
    "process_rows",
    "local_rows",
    "any_process",
    "key_exists",
    "from_main",
    "decide_on_main",
    "preemption_service_running",
    "stall_timeout",
    "coordinator",
]

ENV_COORDINATOR = "LSTM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "LSTM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LSTM_JAX_PROCESS_ID"
ENV_AUTO = "LSTM_JAX_DISTRIBUTED"
ENV_INIT_TIMEOUT = "LSTM_JAX_INIT_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "LSTM_JAX_HEARTBEAT_TIMEOUT"
ENV_STALL_TIMEOUT = "LSTM_JAX_STALL_TIMEOUT"
DEFAULT_STALL_TIMEOUT = 600


class DistributedError(ValueError):
    """The multi-process job is misconfigured (bad variables, unreachable coordinator, wrong counts).

    A ``ValueError`` so that the experiment scripts report it as one ``error:`` line.
    """


class JobSpec(dict):
    """What :func:`job_from_env` read: ``num_processes``, ``process_id``, ``coordinator``, ``auto``, timeouts."""


def _int_var(env: Mapping[str, str], name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DistributedError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise DistributedError(f"{name}={value} must be >= {minimum}")
    return value


def job_from_env(environ: Mapping[str, str] | None = None) -> JobSpec:
    """Read and check the job's variables (see the module docstring); pure, touches no JAX state."""
    env = os.environ if environ is None else environ
    auto = env.get(ENV_AUTO, "") == "auto"
    if env.get(ENV_AUTO, "") not in ("", "auto"):
        raise DistributedError(f"{ENV_AUTO}={env[ENV_AUTO]!r}: the only value is 'auto'")
    n = _int_var(env, ENV_NUM_PROCESSES, None, minimum=1)
    pid = _int_var(env, ENV_PROCESS_ID, None)
    coordinator = env.get(ENV_COORDINATOR) or None
    spec = JobSpec(
        auto=auto, num_processes=n, process_id=pid, coordinator=coordinator,
        init_timeout=_int_var(env, ENV_INIT_TIMEOUT, 300, minimum=1),
        heartbeat_timeout=_int_var(env, ENV_HEARTBEAT_TIMEOUT, None, minimum=1),
    )
    if auto or n is None or n == 1:
        return spec
    if pid is None or coordinator is None:
        missing = [v for v, x in ((ENV_PROCESS_ID, pid), (ENV_COORDINATOR, coordinator)) if x is None]
        raise DistributedError(f"{ENV_NUM_PROCESSES}={n} needs {' and '.join(missing)} as well")
    if pid >= n:
        raise DistributedError(f"process count mismatch: {ENV_PROCESS_ID}={pid} but only {n} processes "
                               f"({ENV_NUM_PROCESSES}); ids run from 0 to {n - 1}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"{ENV_COORDINATOR}={coordinator!r} is not host:port")
    return spec


def _reachable(address: str, deadline: float) -> bool:
    """Try to open a TCP connection to ``host:port`` until ``deadline`` (``time.monotonic``)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def _watchdog(seconds: float, message: str) -> threading.Event:
    """Exit the process with ``error: message`` unless the returned event is set within ``seconds``.

    ``jax.distributed.initialize`` releases the GIL while it waits and, on
    timeout, aborts the whole process from C++ (a stack trace, no exception);
    this thread fires first, so the user sees one line instead.
    """
    done = threading.Event()

    def run():
        if not done.wait(seconds):
            print(f"error: {message}", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=run, name="distributed-init-watchdog", daemon=True).start()
    return done


def initialize_from_env(environ: Mapping[str, str] | None = None) -> int:
    """Join the job described by the environment (see the module docstring); returns the process count.

    A no-op returning 1 when no job variables are set. Call it at the start of
    every process, before any other JAX call. CPU devices use Gloo collectives,
    so processes on one machine (or CPU hosts) can all-reduce across processes.
    JAX shuts the runtime down at exit (it registers ``jax.distributed.shutdown``).

    Raises:
        DistributedError: bad variables, or (in this process, as one line on
            stderr, exit status 1) the coordinator or the other processes did
            not show up within ``LSTM_JAX_INIT_TIMEOUT`` seconds.
    """
    spec = job_from_env(environ)
    if not spec["auto"] and (spec["num_processes"] or 1) == 1:
        return 1
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = spec["init_timeout"]
    kwargs = {"initialization_timeout": timeout + 30}  # our watchdog, not XLA's abort, reports a timeout
    if spec["heartbeat_timeout"] is not None:
        kwargs["heartbeat_timeout_seconds"] = spec["heartbeat_timeout"]
    if spec["auto"]:
        done = _watchdog(timeout, f"jax.distributed.initialize() (auto-detected cluster) did not complete "
                                  f"within {timeout} s ({ENV_INIT_TIMEOUT})")
        sharding.initialize_distributed(**kwargs)
        done.set()
        address, ip = coordinator()
        print(f"process {jax.process_index()} of {jax.process_count()}: joined the {_cluster_name()} job, "
              f"coordinator {address} ({ip})", file=sys.stderr, flush=True)
        return jax.process_count()
    n, pid, address = spec["num_processes"], spec["process_id"], spec["coordinator"]
    deadline = time.monotonic() + timeout
    if pid != 0 and not _reachable(address, deadline):
        raise DistributedError(f"could not reach the coordinator (process 0) at {address} within {timeout} s "
                               f"({ENV_INIT_TIMEOUT}); is process 0 running, and is the address right?")
    done = _watchdog(max(deadline - time.monotonic(), 1.0),
                     f"process {pid}: not all {n} processes joined the coordinator at {address} within "
                     f"{timeout} s ({ENV_INIT_TIMEOUT}); are all of them started, with the same "
                     f"{ENV_NUM_PROCESSES} and distinct {ENV_PROCESS_ID}s?")
    sharding.initialize_distributed(address, n, pid, **kwargs)
    done.set()
    if jax.process_count() != n:
        raise DistributedError(f"process count mismatch: {ENV_NUM_PROCESSES}={n} but JAX sees "
                               f"{jax.process_count()} processes")
    return n


def _cluster_name(environ: Mapping[str, str] | None = None) -> str:
    """Which engine started this process, from the variables JAX's detection reads."""
    env = os.environ if environ is None else environ
    for name, var in (("SLURM", "SLURM_JOB_ID"), ("Open MPI", "OMPI_MCA_orte_hnp_uri")):
        if var in env:
            return name
    return "auto-detected"


def coordinator() -> tuple[str, str] | None:
    """``(host:port, IPv4 address)`` of the coordinator this process joined; ``None`` outside a job.

    Under ``LSTM_JAX_DISTRIBUTED=auto`` JAX derives the address from the
    engine (SLURM: the first node of the step, Open MPI: the first address
    of ``mpirun``'s URI); :func:`initialize_from_env` prints it, e.g.
    ``process 0 of 2: joined the SLURM job, coordinator localhost:61537 (127.0.0.1)``.
    """
    address = _client().coordinator_address
    if not address:
        return None
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = socket.gethostbyname(host)
    except OSError as e:
        ip = f"unresolved: {e}"
    return address, ip


def process_rows(global_batch: int, process_index: int | None = None, process_count: int | None = None,
                 device_count: int | None = None) -> slice:
    """The rows of a global batch of ``global_batch`` examples that this process loads.

    Process ``p`` of ``n`` gets rows ``[p * global_batch / n, (p + 1) * global_batch / n)``:
    the order in which ``jax.make_array_from_process_local_data`` stacks the
    processes' pieces on a 1-D mesh over ``jax.devices()`` (ordered by process).
    Defaults are JAX's current process index/count and global device count.

    Raises:
        ValueError: ``global_batch`` is not divisible by the device count (each
            device gets the same number of rows).
    """
    p = jax.process_index() if process_index is None else process_index
    n = jax.process_count() if process_count is None else process_count
    d = jax.device_count() if device_count is None else device_count
    if global_batch < 1 or global_batch % d:
        raise ValueError(
            f"global batch of {global_batch} is not divisible by the {d} devices "
            f"({n} process{'es' if n > 1 else ''} x {d // max(n, 1)} local); choose a multiple of {d}"
        )
    per = global_batch // n
    return slice(p * per, (p + 1) * per)


def local_rows(batch: Any, rows: slice) -> Any:
    """Rows ``rows`` of every leaf of ``batch`` with a leading axis; scalars are kept whole.

    For a loader that can only produce the global batch; one that takes
    ``rows=`` avoids reading the other processes' examples at all.
    """
    return jax.tree_util.tree_map(lambda x: x if np.ndim(x) == 0 else x[rows], batch)


# --------------------------------------------------------------------------- agreeing across processes


def stall_timeout(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds without progress after which a process gives up (``LSTM_JAX_STALL_TIMEOUT``; ``None``: off)."""
    value = _int_var(os.environ if environ is None else environ, ENV_STALL_TIMEOUT, DEFAULT_STALL_TIMEOUT)
    return float(value) or None


def _client():
    # JAX's distributed key-value store has no public handle; Orbax reaches it the same way.
    from jax._src import distributed

    return distributed.global_state


def preemption_service_running() -> bool:
    """Whether JAX's preemption service catches SIGTERM in this process (a multi-process job, service on)."""
    return jax.process_count() > 1 and _client().preemption_sync_manager is not None


def key_exists(key: str) -> bool:
    """Whether ``key`` is in JAX's distributed key-value store (one call to the coordinator)."""
    try:
        _client().client.key_value_try_get(key)
    except Exception:  # NOT_FOUND
        return False
    return True


def any_process(flag: bool) -> bool:
    """``True`` in every process if ``flag`` is true in any (one all-gather of a flag; no collective in one process).

    Every process must call it at the same point, like any collective.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


def from_main(value: np.ndarray) -> np.ndarray:
    """Process 0's ``value`` (a numpy array of the same shape and dtype in every process), in every process."""
    if jax.process_count() == 1:
        return np.asarray(value)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


_decisions = 0  # decide_on_main calls so far: the same sequence in every process (SPMD)


def decide_on_main(decide, what: str, timeout: float | None = None):
    """``decide()`` run in process 0 only; its JSON-able result returned in every process.

    For a choice that must be made once for the job (e.g. the layer
    implementation picked by timing: timed in every process, two processes
    could pick differently). Process 0 writes the result, or its error, to
    JAX's distributed key-value store; the others wait for it at most
    ``timeout`` seconds (default :func:`stall_timeout`) and then fail with one
    line naming the process and ``what``. An error in ``decide()`` is raised
    in every process, as ``ValueError`` with process 0's message.
    A single process just returns ``decide()``.
    """
    global _decisions
    if jax.process_count() == 1:
        return decide()
    _decisions += 1
    key = f"lstm_jax/decided/{_decisions}/{what}"
    client = _client().client
    if jax.process_index() == 0:
        try:
            value = decide()
        except Exception as e:
            client.key_value_set(key, json.dumps({"error": f"{type(e).__name__}: {e}"}))
            raise
        client.key_value_set(key, json.dumps({"value": value}))
        return value
    wait = timeout if timeout is not None else (stall_timeout() or 10**6)
    try:
        record = json.loads(client.blocking_key_value_get(key, int(1000 * wait)))
    except Exception as e:  # XLA's DEADLINE_EXCEEDED (or the coordinator gone)
        raise DistributedError(f"process {jax.process_index()}: no {what} from process 0 within {wait:g} s "
                               f"({type(e).__name__}); is process 0 alive and running the same program?") from None
    if "error" in record:
        raise ValueError(f"process 0 failed to decide the {what}: {record['error']}")
    return record["value"]
