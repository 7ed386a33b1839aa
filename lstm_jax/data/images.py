"""MNIST and Fashion-MNIST for sequence models: IDX files, TFDS, sequence modes, batching.

Two ways in, one result (uint8 images ``(N, 28, 28)`` and int labels ``(N,)``):

* **IDX files** (the format both datasets are published in) through
  :func:`read_idx`, a strict reader: it checks the magic number, the rank, the
  dimensions and the exact byte count, so a truncated download or a swapped
  file fails loudly instead of training on garbage. Gzip or raw files.
* **TFDS** (``tfds.load(name, data_dir=...)``), the default for users with a
  network.

:func:`load_images` chooses between them (``source="auto"``: a local IDX
folder if one is there, TFDS otherwise).

Then, for a recurrent network, an image becomes a sequence
(:func:`to_sequences`):

* ``rows``: 28 steps of 28 features (one image row per step),
* ``pixels``: 784 steps of 1 feature (raster order), the classic long-range
  "sequential MNIST" task,
* ``permuted``: 784 steps of 1 feature in a fixed random pixel order (from a
  seed, :func:`pixel_permutation`), which destroys locality.

Pixels are scaled to [0, 1] and then standardized with the *training* mean and
standard deviation (:func:`fit_normalization`). :func:`train_val_split` carves
a seeded validation split out of train. Batching (:class:`ShuffledBatches`,
:func:`eval_batches`, :func:`augment_images`) lives in
:mod:`lstm_jax.data.image_batches` and is re-exported here.

Offline defaults here: Fashion-MNIST from ``/usr/share/datasets/fashion-mnist``
(Debian's ``dataset-fashion-mnist``; Debian recompressed the gzip files, so
their checksums differ from TFDS's registered ones and the TFDS builder would
refuse them, but the IDX content is the dataset) and the MNIST test split from
``<repo>/../shared/data/mnist`` (no MNIST training images there). Set
``LSTM_JAX_DATA`` to move the shared data root.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from . import paths
from .image_batches import ShuffledBatches, augment_images, eval_batches  # noqa: F401  (batching: image_batches.py)
from .idx import (  # noqa: F401  (the IDX reader lives in idx.py; re-exported here)
    IDX_FILES,
    IMAGE_SHAPE,
    NUM_CLASSES,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    IDXError,
    available_splits,
    load_idx_split,
    read_idx,
    read_idx_images,
    read_idx_labels,
)

# ---------------------------------------------------------------------------
# Datasets and where they live

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}


#: Kept for callers of the old name; the shared data root is :func:`lstm_jax.data.paths.data_dir`.
shared_data_root = paths.data_dir


def default_idx_folders(name: str) -> list[Path]:
    """Folders searched (in order) for a dataset's IDX files by ``source="auto"|"idx"``."""
    _check_name(name)
    root = paths.data_dir()
    if name == "mnist":
        return [root / "mnist"]
    return [root / "fashion_mnist", root / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]


def _local_summary() -> str:
    """What IDX data exists on this machine, for the offline error: ``"mnist in DIR: test; ..."``."""
    found = []
    for name in DATASETS:
        for folder in default_idx_folders(name):
            splits = available_splits(folder) if folder.is_dir() else []
            if splits:
                found.append(f"{name} in {folder}: {', '.join(splits)}")
                break
    if not found:
        return "no IDX files (put them in a folder and pass source='idx' with folder=)"
    return "; ".join(found) + " (use source='idx'; training needs a train split)"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {list(DATASETS)}")


@dataclasses.dataclass
class ImageData:
    """Splits of an image dataset: ``splits[name] = (images uint8 (N,28,28), labels int32 (N,))``."""

    name: str
    source: str
    splits: dict
    class_names: tuple = ()
    location: str = ""

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.splits[name]
        except KeyError:
            raise ValueError(
                f"{self.name}: split {name!r} is not available from {self.source} "
                f"({self.location}); available: {sorted(self.splits)}"
                + (
                    ". The offline MNIST folder has only the test images; use "
                    "source='tfds' (needs a network) for training"
                    if self.name == "mnist" and name == "train"
                    else ""
                )
            ) from None

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("train")

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("test")


def load_idx_dataset(
    folder: str | Path, splits: Sequence[str] | None = None, *, name: str = "idx"
) -> ImageData:
    """Load the standard IDX files in ``folder``.

    Args:
        splits: the splits required (error if any is missing); ``None`` loads
            whichever of train/test are present (a folder with only the test
            split, like the offline MNIST one, is fine), but at least one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"IDX folder not found: {folder}")
    wanted = list(splits) if splits is not None else available_splits(folder)
    if not wanted:
        raise FileNotFoundError(
            f"no complete IDX split in {folder}: expected "
            + " / ".join(f"{a}.gz + {b}.gz" for a, b in IDX_FILES.values())
        )
    data = {s: load_idx_split(folder, s) for s in wanted}
    return ImageData(name, "idx", data, CLASS_NAMES.get(name, ()), str(folder))


# ---------------------------------------------------------------------------
# TFDS


def load_tfds_split(
    name: str, split: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,28,28), labels int32 (N,))`` of one TFDS split, as numpy."""
    _check_name(name)
    offline = download and not paths.tfds_prepared(name, data_dir) and not paths.reachable()

    def offline_error():  # built only when needed: it lists the IDX folders on disk
        return paths.DataUnavailable(
            f"{name}/{split} is not prepared in {paths.tfds_data_dir(data_dir)} and "
            f"{paths.DOWNLOAD_HOST} cannot be reached (offline?). Available locally: {_local_summary()}"
        )

    if offline:
        if "tensorflow_datasets" not in sys.modules:  # importing TF alone takes seconds: say it now
            raise offline_error()
        download = False  # TFDS is loaded already (its mock_data, say): let it answer without the network
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(
            name,
            split=split,
            data_dir=None if data_dir is None else str(data_dir),
            as_supervised=True,
            download=download,
        )
    except Exception as err:  # network, checksum or missing-data errors from TFDS: one line, not a chain
        if offline:
            raise offline_error() from None
        raise paths.DataUnavailable(
            f"tfds.load({name!r}, split={split!r}, data_dir={data_dir!r}) failed: "
            f"{type(err).__name__}: {str(err)[:300]}. Without a network, use source='idx' "
            f"with a folder of IDX files (defaults: {[str(f) for f in default_idx_folders(name)]})"
        ) from err
    # Batched iteration rather than batch_size=-1: the latter materializes the
    # split through one tf.data element and fails on datasets of unknown size.
    chunks = list(tfds.as_numpy(ds.batch(8192)))
    if not chunks:
        raise ValueError(f"tfds {name}/{split} is empty")
    images = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"tfds {name}/{split}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    return images.astype(np.uint8), np.asarray(labels).astype(np.int32)


def load_images(
    name: str,
    source: str = "auto",
    folder: str | Path | None = None,
    *,
    splits: Sequence[str] = SPLITS,
    data_dir: str | Path | None = None,
) -> ImageData:
    """Load ``mnist`` or ``fashion_mnist``.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        source: ``"idx"`` (local files; ``folder``, else the defaults of
            :func:`default_idx_folders`), ``"tfds"`` (``tfds.load`` into
            ``data_dir``, downloading if needed), or ``"auto"``: IDX if
            ``folder`` is given or a default folder holds all requested
            ``splits``, TFDS otherwise.
        splits: which splits to load, from ``("train", "test")``.
    """
    _check_name(name)
    if source not in ("auto", "idx", "tfds"):
        raise ValueError(f"unknown source {source!r}; choose 'auto', 'idx' or 'tfds'")
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}; choose from {list(SPLITS)}")
    if source in ("auto", "idx"):
        candidates = [Path(folder)] if folder is not None else default_idx_folders(name)
        for cand in candidates:
            if cand.is_dir() and set(splits) <= set(available_splits(cand)):
                return load_idx_dataset(cand, splits, name=name)
        if source == "idx":
            if folder is not None:
                return load_idx_dataset(folder, splits, name=name)  # raises the precise error
            found = [c for c in candidates if c.is_dir()]
            detail = "; ".join(f"{c} has {available_splits(c) or 'no complete split'}" for c in found)
            raise FileNotFoundError(
                f"{name}: no local IDX folder with splits {list(splits)}; searched "
                f"{[str(c) for c in candidates]}" + (f" ({detail})" if detail else "")
                + (
                    ". The offline MNIST folder has only the test images; use "
                    "source='tfds' (needs a network) for training"
                    if name == "mnist" and "train" in splits
                    else ""
                )
            )
    data = {s: load_tfds_split(name, s, data_dir) for s in splits}
    return ImageData(name, "tfds", data, CLASS_NAMES[name], str(data_dir or "~/tensorflow_datasets"))


# ---------------------------------------------------------------------------
# Images -> sequences

MODES = ("rows", "pixels", "permuted")


def pixel_permutation(seed: int, size: int = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]) -> np.ndarray:
    """The fixed pixel order of ``permuted`` mode: a permutation of ``range(size)`` from ``seed``.

    Uses numpy's PCG64 generator, whose stream numpy keeps stable across
    versions, so the same seed gives the same task everywhere.
    """
    return np.random.Generator(np.random.PCG64(seed)).permutation(size)


def sequence_shape(mode: str, image_shape=IMAGE_SHAPE) -> tuple[int, int]:
    """``(time steps, features)`` of one image in ``mode``."""
    if mode == "rows":
        return tuple(image_shape)
    if mode in ("pixels", "permuted"):
        return (int(np.prod(image_shape)), 1)
    raise ValueError(f"unknown sequence mode {mode!r}; choose one of {list(MODES)}")


def to_sequences(images: np.ndarray, mode: str, *, permutation_seed: int = 0) -> np.ndarray:
    """Images ``(N, 28, 28)`` -> sequences ``(N, T, F)`` for a recurrent network.

    ``rows``: ``(N, 28, 28)``; ``pixels``: ``(N, 784, 1)`` in raster order;
    ``permuted``: ``(N, 784, 1)`` in the order ``pixel_permutation(permutation_seed)``.
    The values are passed through (normalize first or after; it is elementwise).
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be (N, rows, cols), got shape {images.shape}")
    n = images.shape[0]
    steps, feats = sequence_shape(mode, images.shape[1:])
    if mode == "rows":
        return images
    flat = images.reshape(n, steps)
    if mode == "permuted":
        flat = flat[:, pixel_permutation(permutation_seed, steps)]
    return flat.reshape(n, steps, feats)


# ---------------------------------------------------------------------------
# Normalization, validation split, batches


def fit_normalization(train_images: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of the training pixels after scaling to [0, 1] (one scalar each)."""
    x = np.asarray(train_images, dtype=np.float64) / 255.0
    return float(x.mean()), float(x.std())


def normalize(images: np.ndarray, mean: float, std: float, dtype=np.float32) -> np.ndarray:
    """Scale uint8 pixels to [0, 1], then standardize with the (training) ``mean`` and ``std``."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    return ((x - mean) / std).astype(dtype)


def train_val_split(images, labels, val_size: int, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Carve a random validation split of ``val_size`` examples out of train.

    Returns ``((train_x, train_y), (val_x, val_y))``; the choice is a pure
    function of ``seed``. ``val_size=0`` gives an empty validation split.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    order = np.random.Generator(np.random.PCG64([seed, 0x5A11])).permutation(n)
    val_idx, train_idx = np.sort(order[:val_size]), np.sort(order[val_size:])
    return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])
