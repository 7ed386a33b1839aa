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
a seeded validation split out of train; :class:`ShuffledBatches` gives the
per-epoch shuffled batch for any step, as a pure function of
``(seed, step)``, so a resumed run sees exactly the batches it would have seen.

Offline defaults here: Fashion-MNIST from ``/usr/share/datasets/fashion-mnist``
(Debian's ``dataset-fashion-mnist``; Debian recompressed the gzip files, so
their checksums differ from TFDS's registered ones and the TFDS builder would
refuse them, but the IDX content is the dataset) and the MNIST test split from
``<repo>/../shared/data/mnist`` (no MNIST training images there). Set
``LSTM_JAX_DATA`` to move the shared data root.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import paths

# ---------------------------------------------------------------------------
# Datasets and where they live

DATASETS = ("mnist", "fashion_mnist")
SPLITS = ("train", "test")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}

#: The standard file names (both datasets), per split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

#: Kept for callers of the old name; the shared data root is :func:`lstm_jax.data.paths.data_dir`.
shared_data_root = paths.data_dir


def default_idx_folders(name: str) -> list[Path]:
    """Folders searched (in order) for a dataset's IDX files by ``source="auto"|"idx"``."""
    _check_name(name)
    root = paths.data_dir()
    if name == "mnist":
        return [root / "mnist"]
    return [root / "fashion_mnist", root / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose one of {list(DATASETS)}")


# ---------------------------------------------------------------------------
# IDX reader

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXError(ValueError):
    """A file is not a well-formed IDX file of the expected kind."""


def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: a raw IDX file
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise IDXError(
            f"{path}: corrupt or truncated gzip stream ({err}); re-download the file"
        ) from err


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a numpy array.

    The header is a 4-byte big-endian magic number ``0x0000TTNN`` (``TT`` the
    element type, ``NN`` the rank) followed by ``NN`` big-endian uint32
    dimensions; the data is the elements in C order. The file must hold
    exactly ``prod(dims)`` elements: fewer means truncation, more means
    something else was appended; both are errors.

    Args:
        path: the file; gzip is detected from its first bytes, not its name.
        expected_magic: if given (e.g. :data:`IMAGES_MAGIC`), the magic number
            the file must carry.

    Raises:
        FileNotFoundError: no such file.
        IDXError: bad magic, unknown type, truncated or oversized data.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: {len(data)} bytes is too short for an IDX header (truncated?)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise IDXError(
            f"{path}: wrong magic number 0x{magic:08X}, expected 0x{expected_magic:08X} "
            f"({_describe_magic(expected_magic)}); is this the right file?"
        )
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IDXError(f"{path}: 0x{magic:08X} is not an IDX magic number")
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(
            f"{path}: truncated header: {ndim} dimensions need {header} bytes, file has {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise IDXError(
            f"{path}: truncated: header says shape {dims} ({expected} data bytes) but only "
            f"{actual} bytes follow the header"
        )
    if actual > expected:
        raise IDXError(
            f"{path}: {actual - expected} unexpected bytes after the {expected} data bytes "
            f"of shape {dims}"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _describe_magic(magic: int) -> str:
    return {IMAGES_MAGIC: "uint8 images, 3 dims", LABELS_MAGIC: "uint8 labels, 1 dim"}.get(magic, "IDX")


def read_idx_images(path: str | Path) -> np.ndarray:
    """Images ``(N, rows, cols)`` uint8 from an IDX3 file (magic 0x00000803)."""
    images = read_idx(path, IMAGES_MAGIC)
    if images.shape[1:] != IMAGE_SHAPE:
        raise IDXError(f"{path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE}")
    return images


def read_idx_labels(path: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Labels ``(N,)`` as int32 from an IDX1 file (magic 0x00000801), checked to lie in [0, num_classes)."""
    labels = read_idx(path, LABELS_MAGIC)
    if labels.size and labels.max() >= num_classes:
        raise IDXError(f"{path}: label {labels.max()} out of range for {num_classes} classes")
    return labels.astype(np.int32)


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split from the standard file names in ``folder``.

    Looks for ``<stem>.gz`` then ``<stem>`` (raw). Raises ``FileNotFoundError``
    naming the missing files, and :class:`IDXError` if the image and label
    counts differ.
    """
    if split not in IDX_FILES:
        raise ValueError(f"unknown split {split!r}; choose one of {list(IDX_FILES)}")
    folder = Path(folder)
    stems = IDX_FILES[split]
    paths = [_find_file(folder, stem) for stem in stems]
    missing = [stem for stem, p in zip(stems, paths) if p is None]
    if missing:
        raise FileNotFoundError(
            f"the {split!r} split is not available in {folder}: missing "
            + ", ".join(f"{m}(.gz)" for m in missing)
        )
    images = read_idx_images(paths[0])
    labels = read_idx_labels(paths[1])
    if len(images) != len(labels):
        raise IDXError(
            f"{folder}: {split} split has {len(images)} images ({paths[0].name}) but "
            f"{len(labels)} labels ({paths[1].name})"
        )
    return images, labels


def available_splits(folder: str | Path) -> list[str]:
    """The splits whose image and label files both exist in ``folder``."""
    folder = Path(folder)
    return [s for s, stems in IDX_FILES.items() if all(_find_file(folder, st) for st in stems)]


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
    def train(self):
        return self.split("train")

    @property
    def test(self):
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


def load_tfds_split(name: str, split: str, data_dir: str | Path | None = None, download: bool = True):
    """``(images uint8 (N,28,28), labels int32 (N,))`` of one TFDS split, as numpy."""
    import tensorflow_datasets as tfds

    _check_name(name)
    try:
        ds = tfds.load(
            name,
            split=split,
            data_dir=None if data_dir is None else str(data_dir),
            as_supervised=True,
            download=download,
        )
    except Exception as err:  # network, checksum or missing-data errors from TFDS
        raise RuntimeError(
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


def train_val_split(images, labels, val_size: int, seed: int):
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


class ShuffledBatches:
    """Per-epoch shuffled minibatches, addressable by global step.

    ``batches(step)`` is ``{"x": xs[idx], "y": ys[idx]}`` where ``idx`` is the
    ``step % steps_per_epoch``-th slice of a permutation that depends only on
    ``(seed, epoch = step // steps_per_epoch)``. So the batch at any step is
    reproducible from scratch, and resuming at step ``s`` continues exactly
    where an uninterrupted run would be. The last partial batch of each epoch
    is dropped (every example is still seen, in a different epoch).
    """

    def __init__(self, xs: np.ndarray, ys: np.ndarray, batch_size: int, seed: int = 0):
        if len(xs) != len(ys):
            raise ValueError(f"{len(xs)} inputs but {len(ys)} labels")
        if not 0 < batch_size <= len(xs):
            raise ValueError(f"batch_size must be in [1, {len(xs)}], got {batch_size}")
        self.xs, self.ys = xs, ys
        self.batch_size = batch_size
        self.seed = seed
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
        return {"x": self.xs[idx], "y": self.ys[idx]}


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
