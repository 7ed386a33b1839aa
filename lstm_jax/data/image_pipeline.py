"""From an image dataset to what a sequence classifier trains on: the splits as sequences, and its batches.

:func:`prepare_sequences` loads a dataset (:func:`lstm_jax.data.images.load_images`),
optionally keeps only the first examples of each split, carves a seeded validation split
out of train, standardizes with the *training* split's mean and std and turns every image
into a sequence (``rows``, ``pixels`` or ``permuted``). :func:`train_batches` gives the
shuffled training batches (:class:`~lstm_jax.data.image_batches.ShuffledBatches`), augmented on
the raw images when asked (shifted and/or mirrored, then normalized and sequenced).

Example (offline here: Debian's Fashion-MNIST IDX files)::

    data = prepare_sequences("fashion_mnist", mode="rows", val_size=1000, train_subset=6000)
    xs, ys = data["train"]            # (5000, 28, 28) float32, (5000,) int
    batches = train_batches(data, batch_size=64, seed=0)
"""

from __future__ import annotations

from . import images as img
from .image_batches import ShuffledBatches, augment_images

__all__ = ["prepare_sequences", "train_batches"]


def _split_folders(source: str, data_dir) -> tuple:
    """``(IDX folder, TFDS data_dir)`` of one ``data_dir`` argument: TFDS's for ``source="tfds"``, else a folder."""
    if data_dir is None:
        return None, None
    return (None, data_dir) if source == "tfds" else (data_dir, None)


def prepare_sequences(dataset: str, source: str = "auto", data_dir=None, *, mode: str = "rows", perm_seed: int = 0,
                      val_size: int = 5000, seed: int = 0, train_subset: int | None = None,
                      test_subset: int | None = None) -> dict:
    """Load, split, normalize and turn into sequences.

    Returns ``{"train", "val", "test"}`` as ``(xs (N, T, F) float32, ys (N,))``, the raw
    ``train_images`` and ``test_images`` (uint8 ``(N, 28, 28)``, for augmentation and figures),
    ``seqs`` (raw images -> normalized sequences), the training ``mean`` and ``std``, and the
    dataset's ``source``, ``location`` and ``class_names``.
    """
    folder, tfds_dir = _split_folders(source, data_dir)
    data = img.load_images(dataset, source, folder, data_dir=tfds_dir)
    train_x, train_y = data.train
    test_x, test_y = data.test
    if train_subset is not None:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    if test_subset is not None:
        test_x, test_y = test_x[:test_subset], test_y[:test_subset]
    (tr_x, tr_y), (va_x, va_y) = img.train_val_split(train_x, train_y, val_size, seed)
    mean, std = img.fit_normalization(tr_x)

    def seqs(x):
        return img.to_sequences(img.normalize(x, mean, std), mode, permutation_seed=perm_seed)

    return {
        "train": (seqs(tr_x), tr_y),
        "train_images": tr_x,
        "seqs": seqs,
        "val": (seqs(va_x), va_y),
        "test": (seqs(test_x), test_y),
        "test_images": test_x,
        "mean": mean,
        "std": std,
        "source": data.source,
        "location": data.location,
        "class_names": data.class_names,
    }


def train_batches(data: dict, batch_size: int, seed: int, *, augment_shift: int = 0,
                  augment_flip: bool = False) -> ShuffledBatches:
    """Shuffled training batches of :func:`prepare_sequences`' data; with ``augment_shift`` (pixels) or
    ``augment_flip``, the raw images are shifted/mirrored per example and step, then normalized and sequenced."""
    train_xs, train_ys = data["train"]
    if not (augment_shift or augment_flip):
        return ShuffledBatches(train_xs, train_ys, batch_size, seed=seed)

    def transform(rng, images):
        return data["seqs"](augment_images(rng, images, max_shift=augment_shift, flip=augment_flip))

    return ShuffledBatches(data["train_images"], train_ys, batch_size, seed=seed, transform=transform)
