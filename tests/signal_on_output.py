"""A launcher output that signals this process once every child has said it is ready (launch tests).

Signalling at a fixed delay is flaky on a loaded machine: a child still starting has not installed its
handler yet. ``launch.launch(..., out=SignalOnOutput(...))`` sends each signal only after it has seen the
``[p<i>] <ready>`` line of every process, so the launcher (which handles the signal here, in pytest's
process) passes it on to children that are known to be waiting for it.
"""

from __future__ import annotations

import io
import os
import re
import threading


class SignalOnOutput(io.StringIO):
    """Collects the launcher's output; once ``processes`` lines ``[p<i>] <ready>`` came, sends ``signals[0]``
    to this process, and each later one ``gap`` seconds after the one before (a second signal)."""

    def __init__(self, processes: int, signals, *, ready: str = "ready", gap: float = 0.5):
        super().__init__()
        self.pattern = re.compile(rf"^\[p(\d+)\] {re.escape(ready)}\b", re.M)
        self.processes, self.signals, self.gap = processes, list(signals), gap
        self.lock, self.sent, self.timers = threading.Lock(), False, []

    def write(self, text: str) -> int:
        with self.lock:
            n = super().write(text)
            seen = set(self.pattern.findall(self.getvalue()))
            if not self.sent and len(seen) == self.processes:
                self.sent = True
                for k, sig in enumerate(self.signals):
                    timer = threading.Timer(k * self.gap, os.kill, (os.getpid(), sig))
                    timer.start()
                    self.timers.append(timer)
            return n

    def cancel(self) -> None:
        """Stop the signals not sent yet (call in a ``finally``, so none arrives after the test)."""
        for timer in self.timers:
            timer.cancel()
