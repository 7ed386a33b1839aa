"""Implementations timed in their own processes, taking turns block by block (``benchmark.py --processes turns``).

Why: on a CPU, torch's OpenMP threads and XLA's share the cores, so ``torch.nn.LSTM`` inside a JAX
process ran 1.4-4x slower than alone; but timing each implementation in its own process *one after
another* lets a shared host's slow spells, which last minutes (docs/onednn.md#speed), fall on
whichever process runs during them. Here each implementation gets one long-lived process that builds
and compiles its benches once and then runs one timed block at a time, when the parent asks, while the
others wait. ``benchmark.measure_size`` drives them exactly as it drives benches in one process: the
rounds interleave every implementation's blocks within seconds, and no two run at once.

The protocol is one JSON object per line: requests on the worker's stdin, replies on its stdout (the
worker's own prints go to stderr).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable

from experiments.common.harness import REPO_ROOT, Bench, build_benches, minflt


def run_block(bench: Bench, n: int) -> tuple[float, float]:
    """Seconds and minor page faults per step over ``n`` back-to-back steps of ``bench``, timed where it runs."""
    if isinstance(bench, RemoteBench):
        reply = bench.worker.ask(op="block", id=bench.id, n=n)
        return reply["seconds"], reply["faults"]
    f0 = minflt()
    t0 = time.perf_counter()
    for _ in range(n):
        bench.step()
    return (time.perf_counter() - t0) / n, (minflt() - f0) / n


def child_command(argv: list[str], processes: str, impl: str, *extra: str) -> list[str]:
    """The benchmark's command line ``argv`` for a child process that times ``impl`` alone, in mode
    ``processes`` (``serve`` for :class:`Worker`, ``one`` for ``--processes per-impl``); the flags added
    last win over the same flags in ``argv``."""
    return [sys.executable, "-m", "experiments.benchmarks.benchmark", *argv,
            "--processes", processes, "--impls", impl, *extra]


class Worker:
    """One implementation's process: this benchmark's command line plus ``--processes serve --impls IMPL``."""

    def __init__(self, argv: list[str], impl: str):
        self.impl = impl
        self.proc = subprocess.Popen(child_command(argv, "serve", impl), cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self.ask(op="hello")

    def ask(self, **request) -> dict:
        """Send one request and wait for its reply; SystemExit (one line) if the worker died or refused it."""
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise SystemExit(f"benchmark: the process timing {self.impl} ended (status {self.proc.wait()})")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"benchmark: the process timing {self.impl} replied {line.strip()[:80]!r}") from None
        if "error" in reply:
            raise SystemExit(f"benchmark: the process timing {self.impl}: {reply['error']}")
        return reply

    def close(self) -> dict:
        """The worker's last state (``torch_imported``), then its end."""
        info = self.ask(op="quit") if self.proc.poll() is None else {}
        self.proc.wait(timeout=60)
        return info


@dataclasses.dataclass
class RemoteBench(Bench):
    """A bench that lives in ``worker``'s process (``id`` there); :func:`run_block` times it there."""

    worker: Worker | None = None
    id: int = -1


def remote_builder(workers: list[Worker]) -> Callable:
    """A ``build_benches`` for ``measure_size`` whose benches are built, compiled and timed in ``workers``."""

    def build(cell, size, impls, key, precision):
        benches = []
        for w in workers:
            for bench_id, name in w.ask(op="build", cell=cell, size=list(size), precision=precision)["benches"]:
                def compile_(w=w, bench_id=bench_id):
                    return w.ask(op="compile", id=bench_id)["seconds"]

                benches.append(RemoteBench(name, compile_, None, worker=w, id=bench_id))
        return benches

    return build


def reply_channel():
    """The worker's stdout kept for replies; ``sys.stdout`` then goes to stderr, so that nothing printed
    (the benchmark's set-up lines, bench notes, library output) mixes with them. Call before any print."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    return replies


def serve(impl: str, key, replies) -> None:
    """The worker's side: answer ``hello``, ``build``, ``compile``, ``block`` and ``quit`` on ``replies``
    (from :func:`reply_channel`) until told to stop. A ``block`` reply also gives the block's ``start`` and
    ``end`` (``time.monotonic()``, one clock for every process on the machine), so turns can be checked."""
    benches: list[Bench] = []
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "hello":
                reply = {"pid": os.getpid(), "impl": impl}
            elif op == "build":
                built = build_benches(request["cell"], tuple(request["size"]), [impl], key, request["precision"])
                reply = {"benches": [(len(benches) + i, b.name) for i, b in enumerate(built)]}
                benches += built
            elif op == "compile":
                reply = {"seconds": benches[request["id"]].compile()}
            elif op == "block":  # start and end on the machine's monotonic clock: the parent can check turns
                start = time.monotonic()
                seconds, faults = run_block(benches[request["id"]], request["n"])
                reply = {"seconds": seconds, "faults": faults, "start": start, "end": time.monotonic()}
            elif op == "quit":
                reply = {"torch_imported": "torch" in sys.modules}
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as err:  # noqa: BLE001 - the parent reports it in one line and stops
            reply = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if op == "quit":
            return
