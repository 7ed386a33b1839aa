"""When :func:`lstm_jax.train.fit` stops early: the same step in every process, and never a silent hang.

A run stops before ``config.steps`` for one of two reasons, decided at a step
boundary (after step ``s``'s update) and **agreed by all processes** of a
multi-process job, so that every process takes the same branch (evaluate,
checkpoint, stop) at the same step:

* ``"preempted"``: SIGTERM, the first signal a scheduler (SLURM, Kubernetes)
  sends before SIGKILL. One process: a handler installed for the duration of
  :func:`fit` sets a flag, read at the next boundary. Several processes: JAX's
  preemption service (on by default after ``jax.distributed.initialize``)
  catches SIGTERM in whichever processes get it and agrees on a step
  (``multihost_utils.reached_preemption_sync_point``: every process reports
  its step counter, the sync point is the largest plus one; about 0.5 s after
  the signal). ``fit`` saves a checkpoint there and raises :class:`Preempted`
  (exit status :data:`PREEMPTED_STATUS` = 143, no traceback if uncaught);
  ``resume=True`` continues the run exactly.
  SIGINT (Ctrl-C) during :func:`fit` is the same request: the process that
  gets it stops at the agreed step with a checkpoint (several processes: it
  passes the signal on to JAX's preemption service as a SIGTERM to itself),
  prints one line naming SIGINT and exits with status 130 (128 + SIGINT), no
  ``KeyboardInterrupt`` traceback. Outside :func:`fit` SIGINT keeps Python's
  default (``KeyboardInterrupt``; the experiment scripts turn it into one line).
* ``"time budget"``: ``config.max_minutes`` ran out. One process: its clock,
  every step. Several: process 0's clock decides at *check steps* that every
  process knows, and shares its verdict with one tiny broadcast (about
  0.4-0.7 ms here): "stop now", or the step of the next check, set about halfway to
  the deadline at the average step time so far. So a run costs some tens of
  broadcasts, not one per step, and stops at most about one step (plus an
  evaluation that falls in the last interval) after its deadline.

The divergence stop (:mod:`lstm_jax.train.divergence`) and the evaluation and
checkpoint steps need no agreement: they depend only on step numbers and on
the step's statistics, which are replicated outputs of the one SPMD step,
the same numbers in every process.

A hang is bounded anyway: in a multi-process run a :class:`StallWatchdog`
ends a process that reaches no step boundary for ``LSTM_JAX_STALL_TIMEOUT``
seconds (default 600; ``0``: off) with one line naming the process, the step
and what it was doing, and exit status 1 (the launcher then stops the others).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import jax
import numpy as np

from . import multiprocess

__all__ = [
    "PREEMPTED_STATUS", "Preempted", "StopControl", "TimeBudget", "StallWatchdog", "preemption_requested", "stop_message",
]

#: Exit status of a program that :func:`~lstm_jax.train.fit` stopped on SIGTERM after saving a checkpoint
#: (128 + SIGTERM, what a shell reports for a process SIGTERM ended).
PREEMPTED_STATUS = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """``fit`` stopped on SIGTERM (or SIGINT) at ``step`` and saved a checkpoint there (if it had a run directory).

    A ``SystemExit``: uncaught, the program ends with status :data:`PREEMPTED_STATUS`
    (130 where this process got SIGINT; ``status`` overrides) and no traceback
    (a preemption is not an error), and ``except Exception`` in user code does
    not swallow it. Catch it to do something first.
    """

    def __init__(self, step: int, message: str, status: int | None = None):
        super().__init__(status if status is not None else 128 + (_received_signal or signal.SIGTERM))
        self.step, self.message = step, message

    def __str__(self) -> str:
        return self.message


def stop_message(reason: str, step: int, steps: int, max_minutes: float | None, *, saved: bool) -> str:
    """The line every process prints when it stops early at ``step`` of ``steps``."""
    why = (f"time budget of {max_minutes} min reached" if reason == "time budget" else
           "SIGINT (Ctrl-C)" if _received_signal == signal.SIGINT else "SIGTERM (a preemption request)")
    msg = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
    return msg + f"stopping at step {step}/{steps}: {why}" + (
        "; checkpoint saved, resume=True continues the run" if saved else "")


_sigterm_flag = threading.Event()

#: The key JAX's preemption service writes to the distributed key-value store when a process gets SIGTERM.
PREEMPTION_NOTICE_KEY = "RECEIVED_PREEMPTION_NOTICE"


_received_signal: int | None = None  # the stop signal this process received during the current fit, if any


def _on_sigterm(signum, frame) -> None:
    global _received_signal
    _received_signal = _received_signal or signum
    _sigterm_flag.set()


def _on_sigint_with_service(signum, frame) -> None:
    """SIGINT in a process whose SIGTERM JAX's preemption service catches: hand it to the service as a SIGTERM."""
    global _received_signal
    _received_signal = _received_signal or signum
    os.kill(os.getpid(), signal.SIGTERM)


def preemption_requested(step: int, first: bool = False) -> bool:
    """Whether to stop after ``step`` because of SIGTERM; the same answer in every process.

    Call it at every step boundary of every process, with the training step
    (the counter Orbax's checkpoint manager also reports to JAX's sync
    manager); ``first``: the first boundary of this loop. A single process
    reads the flag of :class:`StopControl`'s handler.
    """
    if jax.process_count() == 1:
        return _sigterm_flag.is_set()
    if not multiprocess.preemption_service_running():
        return multiprocess.any_process(_sigterm_flag.is_set())  # service off: our handler, one all-gather
    from jax.experimental import multihost_utils

    if multihost_utils.reached_preemption_sync_point(step):
        return True
    # A notice that came while no loop reported steps (start-up, compilation, between two fits) was synced
    # against a stale counter, whose sync point this loop may never meet: one agreed look at the notice.
    return first and multiprocess.any_process(multiprocess.key_exists(PREEMPTION_NOTICE_KEY))


class TimeBudget:
    """``expired(step)``: has ``max_minutes`` run out, as agreed by all processes (see the module docstring).

    ``max_minutes=None``: never. ``start_step``: the step the loop starts from;
    the clock starts at construction.
    """

    def __init__(self, max_minutes: float | None, start_step: int = 0, clock=time.perf_counter):
        self.clock, self.t_start, self.start_step = clock, clock(), start_step
        self.deadline = None if max_minutes is None else self.t_start + 60.0 * max_minutes
        self.next_check = start_step + 1
        self.checks = 0  # agreed checks so far (broadcasts, in a multi-process run)

    def expired(self, step: int) -> bool:
        if self.deadline is None:
            return False
        if jax.process_count() == 1:
            return self.clock() > self.deadline
        if step < self.next_check:
            return False
        self.checks += 1
        verdict = np.asarray(self._verdict(step), np.int64) if jax.process_index() == 0 else np.zeros(2, np.int64)
        stop, self.next_check = (int(v) for v in multiprocess.from_main(verdict))
        return bool(stop)

    def _verdict(self, step: int) -> tuple[int, int]:
        """Process 0's ``(stop, next check step)``."""
        now = self.clock()
        if now > self.deadline:
            return 1, step + 1
        per_step = (now - self.t_start) / max(step - self.start_step, 1)
        return 0, step + max(1, int(0.5 * (self.deadline - now) / per_step))


class StallWatchdog:
    """Ends this process with one line if no :meth:`beat` comes for ``timeout`` seconds (``None``/0: off).

    It watches from :meth:`start` to :meth:`close`. ``beat(step, doing)`` marks
    progress: the step the loop is at and what it does next (``"training step
    121"``, ``"checkpoint save"``); the line names both and the process. Exit
    status 1, via ``os._exit`` (a thread cannot unblock a main thread stuck in
    a collective).
    """

    def __init__(self, timeout: float | None, poll: float = 1.0):
        self.timeout, self.poll = timeout or None, poll
        self.step, self.doing, self.last = 0, "starting", time.monotonic()
        self._done = threading.Event()

    def start(self) -> "StallWatchdog":
        self.last = time.monotonic()
        if self.timeout is not None:
            threading.Thread(target=self._watch, args=(min(self.poll, self.timeout / 4),), name="stall-watchdog",
                             daemon=True).start()
        return self

    def beat(self, step: int, doing: str) -> None:
        self.step, self.doing, self.last = step, doing, time.monotonic()

    def close(self) -> None:
        self._done.set()

    def _watch(self, poll: float) -> None:
        while not self._done.wait(poll):
            if time.monotonic() - self.last > self.timeout:
                print(f"error: process {jax.process_index()} of {jax.process_count()}: no progress for "
                      f"{self.timeout:g} s at step {self.step} ({self.doing}): another process is dead, stuck or "
                      f"took another path; stopping ({multiprocess.ENV_STALL_TIMEOUT})", file=sys.stderr, flush=True)
                os._exit(1)


class StopControl:
    """The agreed early stops of one :func:`fit` call: a context manager for its loop.

    Inside it, a single process catches SIGTERM (:func:`preemption_requested`),
    every process catches SIGINT as the same stop request (see the module
    docstring), and a multi-process one runs a :class:`StallWatchdog`;
    :meth:`reason` at each step boundary says why to stop (``None``: go on).
    Leaving it restores the previous SIGTERM and SIGINT handlers.
    """

    def __init__(self, max_minutes: float | None, start_step: int = 0, stall_timeout: float | None = None):
        self.budget = TimeBudget(max_minutes, start_step)
        multi = jax.process_count() > 1
        timeout = multiprocess.stall_timeout() if stall_timeout is None else stall_timeout
        self.watchdog = StallWatchdog(timeout if multi else None)
        self._old_handler, self._old_sigint, self.preempted, self._first = None, None, False, True
        self._main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
        self._own_handler = (not multi or not multiprocess.preemption_service_running()) and self._main_thread

    def __enter__(self) -> "StopControl":
        global _received_signal
        self.watchdog.start()
        _received_signal = None
        if self._own_handler:
            _sigterm_flag.clear()
            self._old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        if self._main_thread:
            on_sigint = _on_sigterm if self._own_handler else _on_sigint_with_service
            self._old_sigint = signal.signal(signal.SIGINT, on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.close()
        if self._main_thread:  # None: a handler set outside Python, which cannot be put back
            signal.signal(signal.SIGINT, signal.SIG_DFL if self._old_sigint is None else self._old_sigint)
        if self._own_handler:
            signal.signal(signal.SIGTERM, self._old_handler)
            late = _sigterm_flag.is_set() and not self.preempted and exc[0] is None
            if late and _received_signal == signal.SIGINT and callable(self._old_sigint):
                self._old_sigint(signal.SIGINT, None)  # came after the last step: Python's KeyboardInterrupt
            elif late and self._old_handler == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGTERM)  # came after the last step: not lost, the default action

    def doing(self, step: int, what: str) -> None:
        """Progress for the watchdog: at ``step``, about to do ``what``."""
        self.watchdog.beat(step, what)

    def reason(self, step: int) -> str | None:
        """``"preempted"``, ``"time budget"`` or ``None`` after ``step``'s update; the same in every process."""
        self.watchdog.beat(step, "agreeing whether to stop")
        first, self._first = self._first, False
        if preemption_requested(step, first):  # first: it must see every boundary
            self.preempted = True
            return "preempted"
        return "time budget" if self.budget.expired(step) else None
