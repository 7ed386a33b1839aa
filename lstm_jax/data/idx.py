"""Reading IDX files (the MNIST family's format), plain or gzip-compressed, with clear errors.

:func:`read_idx` checks the magic number, the dimensions and the payload size;
:func:`load_idx_split` finds a split's image and label files in a folder.
Re-exported by :mod:`lstm_jax.data.images`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

#: The standard file names (both datasets), per split: (images, labels).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

#: The MNIST-family datasets: 10 classes (the label range :func:`read_idx_labels` checks), 28x28 images.
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

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


