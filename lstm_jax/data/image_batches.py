"""Batches of images (or of their sequences) for training and evaluation, and augmentation.

* :class:`ShuffledBatches`: the per-epoch shuffled batch for any step, as a pure
  function of ``(seed, step)``, so a resumed run sees exactly the batches it
  would have seen (an augmenting ``transform`` included).
* :func:`eval_batches`: fixed-shape batches over every example in order, the
  last one zero-padded, with a ``mask`` of the real examples.
* :func:`augment_images`: random shifts (and left-right flips) per example.

Re-exported by :mod:`lstm_jax.data.images`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

__all__ = ["ShuffledBatches", "augment_images", "eval_batches"]


def augment_images(rng: np.random.Generator, images: np.ndarray, *, max_shift: int = 0, flip: bool = False) -> np.ndarray:
    """Random translations (and horizontal flips) of images ``(N, rows, cols)``, each example its own.

    Every image moves by integer ``(dy, dx)`` drawn uniformly from
    ``[-max_shift, max_shift]²``, the uncovered border filled with 0 (the
    background of uint8 MNIST-family images, so augment *before* normalizing);
    with ``flip`` each image is mirrored left-right with probability 1/2 (valid
    for clothes, not for digits). Same shape and dtype out; a pure function of
    ``rng``'s state.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, rows, cols), got shape {images.shape}")
    if not isinstance(max_shift, (int, np.integer)) or not 0 <= max_shift < min(images.shape[1:]):
        raise ValueError(f"max_shift must be an int in [0, {min(images.shape[1:])}), got {max_shift!r}")
    n, rows, cols = images.shape
    out = images
    if max_shift:
        s = int(max_shift)
        padded = np.pad(images, ((0, 0), (s, s), (s, s)))
        dy, dx = (rng.integers(-s, s + 1, size=n) for _ in range(2))
        r = (s - dy)[:, None] + np.arange(rows)  # image row i comes from padded row i + s - dy
        c = (s - dx)[:, None] + np.arange(cols)
        out = padded[np.arange(n)[:, None, None], r[:, :, None], c[:, None, :]]
    if flip:
        mirror = rng.random(n) < 0.5
        out = np.where(mirror[:, None, None], out[:, :, ::-1], out)
    return out


class ShuffledBatches:
    """Per-epoch shuffled minibatches, addressable by global step.

    ``batches(step)`` is ``{"x": xs[idx], "y": ys[idx]}`` where ``idx`` is the
    ``step % steps_per_epoch``-th slice of a permutation that depends only on
    ``(seed, epoch = step // steps_per_epoch)``. So the batch at any step is
    reproducible from scratch, and resuming at step ``s`` continues exactly
    where an uninterrupted run would be. The last partial batch of each epoch
    is dropped (every example is still seen, in a different epoch).

    ``transform(rng, x_batch) -> x_batch`` (e.g. :func:`augment_images`, then
    :func:`normalize` and :func:`to_sequences`) is applied to every batch with a
    generator seeded by ``(seed, step)``, so an augmented run resumes exactly too.
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, batch_size: int, seed: int = 0, transform=None):
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} inputs but {len(ys)} labels")
        if not 0 < batch_size <= len(xs):
            raise ValueError(f"batch_size must be in [1, {len(xs)}], got {batch_size}")
        self.xs, self.ys = xs, ys
        self.batch_size = batch_size
        self.seed = seed
        self.transform = transform
        self.steps_per_epoch = len(xs) // batch_size
        self._epoch = None
        self._order = None

    def order(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``."""
        if epoch != self._epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = rng.permutation(len(self.xs))
            self._epoch = epoch
        return self._order

    def indices(self, step: int) -> np.ndarray:
        epoch, k = divmod(int(step), self.steps_per_epoch)
        return self.order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def __call__(self, step: int) -> dict:
        idx = np.sort(self.indices(step))  # sorted gather is faster; order within a batch is irrelevant
        x = self.xs[idx]
        if self.transform is not None:
            x = self.transform(np.random.Generator(np.random.PCG64([self.seed, int(step), 0xA06])), x)
        return {"x": x, "y": self.ys[idx]}


def eval_batches(xs: np.ndarray, ys: np.ndarray, batch_size: int) -> Iterator[dict]:
    """Fixed-shape batches over all examples in order; the last one zero-padded.

    Each batch has a ``mask`` (1 for real examples), so one compiled
    evaluation function serves every batch.
    """
    n = len(xs)
    for start in range(0, n, batch_size):
        x, y = xs[start : start + batch_size], ys[start : start + batch_size]
        real = len(x)
        if real < batch_size:
            pad = batch_size - real
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
        mask = (np.arange(batch_size) < real).astype(np.float32)
        yield {"x": x, "y": y, "mask": mask}
