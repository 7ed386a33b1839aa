"""Batching a character stream for truncated BPTT: random windows, stateful windows, eval windows.

Every batch is ``(inputs, targets)``, each ``(B, T)`` int32, with ``targets`` the
inputs shifted left by one character; batches are pure functions of their
step (exact resume). Re-exported by :mod:`lstm_jax.data.text`.
"""

from __future__ import annotations


import numpy as np

def _as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int32, copy=False)


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def random_windows(
    ids, batch_size: int, seq_len: int, *, seed: int, step: int, rows: slice | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` windows at random offsets: ``(inputs, targets)``, each ``(B, T)`` int32.

    The offsets come from ``np.random.default_rng([seed, step])``, so the batch is a
    pure function of ``(seed, step)`` (exact resume). Every offset in
    ``[0, len(ids) - seq_len - 1]`` is equally likely; ``targets`` is ``inputs``
    shifted left by one character. ``rows``: only these rows of that batch
    (one process's share, :func:`lstm_jax.distributed.multiprocess.process_rows`).
    """
    ids = _as_ids(ids)
    batch_size = _check_positive("batch_size", batch_size)
    seq_len = _check_positive("seq_len", seq_len)
    if len(ids) < seq_len + 1:
        raise ValueError(
            f"text of {len(ids)} chars too short for windows of seq_len+1 = {seq_len + 1} chars"
        )
    if seed < 0 or step < 0:
        raise ValueError(f"seed and step must be non-negative, got seed={seed}, step={step}")
    rng = np.random.default_rng([int(seed), int(step)])
    offsets = rng.integers(0, len(ids) - seq_len, size=batch_size)  # all rows': the same batch for any split
    if rows is not None:
        offsets = offsets[rows]
    chunk = ids[offsets[:, None] + np.arange(seq_len + 1)[None, :]]
    return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])


class StatefulWindows:
    """Consecutive windows of ``batch_size`` parallel streams, for truncated BPTT.

    The first ``batch_size * L + 1`` ids (``L = (len(ids) - 1) // batch_size``) are
    cut into ``batch_size`` contiguous streams of ``L`` predicted characters each;
    stream ``b`` starts at ``b * L``. Call ``k`` returns window ``k % num_windows``
    of every stream, so row ``b`` of window ``k + 1`` continues exactly where row
    ``b`` of window ``k`` ended: pass the final recurrent carry of step ``k`` as the
    initial carry of step ``k + 1``, and reset it to zeros when
    ``is_stream_start(step)`` (a new pass over the text begins).

    Characters past ``num_windows * seq_len`` in each stream, and the last
    ``(len(ids) - 1) % batch_size`` ids, are never used as targets (each at most
    ``seq_len - 1`` resp. ``batch_size - 1`` characters).
    """

    def __init__(self, ids, batch_size: int, seq_len: int):
        ids = _as_ids(ids)
        self.batch_size = _check_positive("batch_size", batch_size)
        self.seq_len = _check_positive("seq_len", seq_len)
        if len(ids) < self.batch_size * self.seq_len + 1:
            raise ValueError(
                f"text of {len(ids)} chars too short for {self.batch_size} streams of "
                f"seq_len+1 = {self.seq_len + 1} chars (needs at least "
                f"{self.batch_size * self.seq_len + 1})"
            )
        self.stream_len = (len(ids) - 1) // self.batch_size
        self.num_windows = self.stream_len // self.seq_len
        used = self.batch_size * self.stream_len
        self._inputs = ids[:used].reshape(self.batch_size, self.stream_len)
        self._targets = ids[1 : used + 1].reshape(self.batch_size, self.stream_len)

    def window_index(self, step: int) -> int:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        return int(step) % self.num_windows

    def epoch(self, step: int) -> int:
        """How many full passes over the streams precede ``step``."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        return int(step) // self.num_windows

    def __call__(self, step: int, rows: slice | None = None):
        """Window ``step`` of every stream, or of the streams ``rows`` (one process's share)."""
        k = self.window_index(step)
        sl = slice(k * self.seq_len, (k + 1) * self.seq_len)
        rows = slice(None) if rows is None else rows
        return np.ascontiguousarray(self._inputs[rows, sl]), np.ascontiguousarray(self._targets[rows, sl])

    def is_stream_start(self, step: int) -> bool:
        """True when ``step`` starts a new pass over the streams (the caller resets the carry)."""
        return self.window_index(step) == 0

    def __repr__(self) -> str:
        return (
            f"StatefulWindows(batch_size={self.batch_size}, seq_len={self.seq_len}, "
            f"stream_len={self.stream_len}, num_windows={self.num_windows})"
        )


def eval_windows(ids, batch_size: int, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping windows covering every predictable character of ``ids`` exactly once.

    The ``len(ids) - 1`` targets are cut, in reading order, into ``W`` full windows of
    ``seq_len`` plus, if ``(len(ids) - 1) % seq_len = r > 0``, one final window of
    length ``r``. Full windows are grouped into batches of ``batch_size``; the last
    group may be smaller (shape ``(W % batch_size, seq_len)``), and the short tail
    window comes alone as a batch of shape ``(1, r)``. So there are at most three
    distinct shapes (at most three compilations of a jitted eval step).

    Each window is meant to start from a zero carry. Batches differ in size, so
    average per-character losses weighting each batch by ``targets.size`` (the sum
    of all ``targets.size`` is ``len(ids) - 1``).
    """
    ids = _as_ids(ids)
    batch_size = _check_positive("batch_size", batch_size)
    seq_len = _check_positive("seq_len", seq_len)
    if len(ids) < 2:
        raise ValueError(f"text of {len(ids)} chars too short to evaluate (needs at least 2)")
    n_targets = len(ids) - 1
    n_full = n_targets // seq_len
    batches = []
    if n_full:
        used = n_full * seq_len
        inputs = ids[:used].reshape(n_full, seq_len)
        targets = ids[1 : used + 1].reshape(n_full, seq_len)
        for start in range(0, n_full, batch_size):
            batches.append(
                (
                    np.ascontiguousarray(inputs[start : start + batch_size]),
                    np.ascontiguousarray(targets[start : start + batch_size]),
                )
            )
    tail = n_targets - n_full * seq_len
    if tail:
        start = n_full * seq_len
        batches.append(
            (
                ids[start : start + tail].reshape(1, tail).copy(),
                ids[start + 1 : start + tail + 1].reshape(1, tail).copy(),
            )
        )
    return batches



