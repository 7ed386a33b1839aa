"""Character-level text data: corpora, a character vocabulary, and batching.

Corpora (``load_text``):

* ``"tiny_shakespeare"`` (the default) -- Karpathy's char-rnn Tiny Shakespeare
  (1,115,394 characters), shipped with the package (:data:`TINY_SHAKESPEARE_PATH`,
  checked against its sha256 on every load) and split as TFDS ``tiny_shakespeare``
  splits it: train the first 90%, validation and test the two halves of the last
  tenth (1,003,854 / 55,770 / 55,770 characters). No network, no TensorFlow. With
  ``data_dir`` (a TFDS data dir) the real TFDS builder reads, or prepares offline
  from the shipped file, the same splits (see ``load_tiny_shakespeare``).
* ``"zen"`` -- the Zen of Python, decoded at run time from the standard library's
  ``this`` module; about 800 characters, so it is a 10-second smoke-test corpus
  (its validation/test splits are only ~40 characters each).
* ``"file"`` -- any UTF-8 text file, split contiguously 90/5/5.

Batching (all on host, NumPy int32, deterministic):

* ``random_windows`` -- windows of ``seq_len + 1`` characters at random offsets,
  a pure function of ``(seed, step)`` so a resumed run sees the same batches.
* ``StatefulWindows`` -- truncated BPTT: the text is cut into ``batch_size``
  parallel streams and window ``k`` of stream ``b`` continues where window ``k-1``
  ended, so the recurrent carry can be passed from one step to the next.
* ``eval_windows`` -- non-overlapping windows that cover every predictable
  character of a split exactly once, for held-out loss.

Every window is a pair ``(inputs, targets)`` with ``targets[:, t] == inputs[:, t+1]``
inside the window and ``targets[:, -1]`` the character after the window.

TensorFlow / TFDS are imported lazily, only inside ``load_tiny_shakespeare``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from . import paths
from .windows import StatefulWindows, eval_windows, random_windows  # noqa: F401  (batching lives in windows.py)
from .paths import DATA_ENV_VAR

DATASETS = ("tiny_shakespeare", "zen", "file")
"""Names accepted by ``load_text`` (the first is the default)."""

TINY_SHAKESPEARE_FILE = "input.txt"
"""File name under which the TFDS checksum registry lists the tiny_shakespeare
download; the download manager looks for exactly this name in ``manual_dir``."""

TINY_SHAKESPEARE_PATH = Path(__file__).resolve().parent / "corpora" / "tinyshakespeare" / TINY_SHAKESPEARE_FILE
"""The shipped copy of char-rnn's Tiny Shakespeare, byte-identical to what the TFDS builder downloads."""

TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
"""sha256 of :data:`TINY_SHAKESPEARE_PATH` (the TFDS checksum registry lists the same for its download)."""

# --------------------------------------------------------------------------- paths


#: Kept for callers of the old name; the shared data root is :func:`lstm_jax.data.paths.data_dir`.
shared_data_dir = paths.data_dir


def default_tiny_shakespeare_manual_dir() -> Path:
    """Folder holding ``input.txt`` for the offline TFDS prepare: the shipped copy's folder."""
    return TINY_SHAKESPEARE_PATH.parent


def read_tiny_shakespeare() -> str:
    """The shipped Tiny Shakespeare text; ``ValueError`` if the file is not the one whose sha256 is recorded."""
    data = TINY_SHAKESPEARE_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINY_SHAKESPEARE_SHA256:
        raise ValueError(f"{TINY_SHAKESPEARE_PATH} has sha256 {digest}, not the recorded {TINY_SHAKESPEARE_SHA256}; "
                         "restore it from the repository")
    return data.decode("utf-8")


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Character vocabulary: ``chars`` are the sorted unique characters, id = index.

    Saved alongside checkpoints (``to_json`` / ``from_json``) so that sampling maps
    ids back to the same characters the model was trained on.
    """

    __slots__ = ("chars", "_codepoints")

    def __init__(self, chars: str):
        if not isinstance(chars, str):
            raise TypeError(f"Vocab chars must be a str, got {type(chars).__name__}")
        if not chars:
            raise ValueError("Vocab needs at least one character")
        if len(set(chars)) != len(chars):
            raise ValueError(f"Vocab chars must be unique; got {len(chars)} chars, {len(set(chars))} distinct")
        if "".join(sorted(chars)) != chars:
            raise ValueError("Vocab chars must be sorted (by code point)")
        self.chars = chars
        # Sorted code points, for a vectorised lookup in encode().
        self._codepoints = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The vocabulary of all characters occurring in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"Vocab.from_text expects str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        preview = self.chars if len(self.chars) <= 40 else self.chars[:37] + "..."
        return f"Vocab(size={self.size}, chars={preview!r})"

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 id array; ``ValueError`` naming any unknown characters."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        idx = np.searchsorted(self._codepoints, codes)
        idx_clipped = np.minimum(idx, self.size - 1)
        known = self._codepoints[idx_clipped] == codes
        if not known.all():
            unknown = sorted(set(chr(c) for c in codes[~known].tolist()))
            shown = ", ".join(repr(c) for c in unknown[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise ValueError(
                f"text contains {len(unknown)} character(s) not in the vocabulary "
                f"(size {self.size}): {shown}{more}"
            )
        return idx_clipped.astype(np.int32)

    def decode(self, ids) -> str:
        """Characters for a scalar or 1-D sequence of ids (list, NumPy or JAX array)."""
        arr = np.asarray(ids)
        if arr.ndim > 1:
            raise ValueError(f"decode expects a scalar or 1-D ids, got shape {arr.shape}")
        arr = arr.reshape(-1)
        if arr.size == 0:
            return ""
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"decode expects integer ids, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.size)
        if bad.any():
            raise ValueError(
                f"ids out of range for vocabulary of size {self.size}: "
                f"{sorted(set(arr[bad].tolist()))[:20]}"
            )
        return "".join(self.chars[i] for i in arr.tolist())

    def to_json(self) -> dict:
        """JSON-serialisable description (``{"type", "chars", "size"}``)."""
        return {"type": "char", "chars": self.chars, "size": self.size}

    @classmethod
    def from_json(cls, d) -> "Vocab":
        """Inverse of ``to_json``; validates the structure and the characters."""
        if not isinstance(d, dict):
            raise ValueError(f"vocab JSON must be an object, got {type(d).__name__}")
        if d.get("type", "char") != "char":
            raise ValueError(f"unsupported vocab type {d.get('type')!r} (expected 'char')")
        if "chars" not in d:
            raise ValueError("vocab JSON has no 'chars' field")
        chars = d["chars"]
        if not isinstance(chars, str):
            raise ValueError(f"vocab 'chars' must be a string, got {type(chars).__name__}")
        vocab = cls(chars)
        if "size" in d and d["size"] != vocab.size:
            raise ValueError(
                f"vocab JSON is inconsistent: size {d['size']!r} but {vocab.size} chars"
            )
        return vocab


# --------------------------------------------------------------------------- corpora


class TextSplits(NamedTuple):
    """Encoded splits (int32 ids) of one corpus, with the vocabulary built from all of them."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    vocab: Vocab
    name: str

    @property
    def heldout(self) -> np.ndarray:
        """Everything after the training split, as one contiguous text: ``validation`` then ``test``.

        With the 90/5/5 split of Tiny Shakespeare (TFDS's) and of ``--text-file`` files this is the last 10%
        of the text, the validation split of nanoGPT's ``shakespeare_char`` (``data[int(n * 0.9):]``), so a
        model trained on ``train`` is scored on the same characters as nanoGPT's.
        """
        return np.concatenate([self.validation, self.test])


def zen_of_python() -> str:
    """The 19 aphorisms of the Zen of Python, one per line (with a final newline).

    Decoded at run time from the standard library's ``this`` module (the text is
    stored there ROT13-encoded as ``this.s`` with the decoding table ``this.d``);
    the title line "The Zen of Python, by Tim Peters" is dropped.
    """
    if "this" in sys.modules:
        this = sys.modules["this"]
    else:
        # Importing `this` prints the Zen to stdout; keep that out of our output.
        with contextlib.redirect_stdout(io.StringIO()):
            import this  # noqa: F401  (stdlib easter egg, used for its data)
    decoded = "".join(this.d.get(c, c) for c in this.s)
    lines = decoded.strip("\n").split("\n")
    if lines and lines[0].startswith("The Zen of Python"):
        lines = lines[1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    return "\n".join(lines) + "\n"


def split_text(text: str, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> tuple[str, str, str]:
    """Contiguous train/validation/test split of ``text``.

    Uses the TFDS ``tiny_shakespeare`` rounding: ``n_train = int(n * f_train)``, then
    the remainder is divided with ``n_val = int(rest * f_val / (f_val + f_test))``.
    So ``split_text(input.txt)`` reproduces the TFDS splits exactly.
    """
    if not isinstance(text, str):
        raise TypeError(f"split_text expects str, got {type(text).__name__}")
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, validation, test), got {fractions!r}")
    f_train, f_val, f_test = (float(f) for f in fractions)
    if min(f_train, f_val, f_test) <= 0 or not math.isclose(f_train + f_val + f_test, 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)!r}")
    if not text:
        raise ValueError("cannot split empty text")
    n = len(text)
    n_train = int(n * f_train)
    rest = n - n_train
    n_val = int(rest * f_val / (f_val + f_test))
    parts = (text[:n_train], text[n_train : n_train + n_val], text[n_train + n_val :])
    if not all(parts):
        raise ValueError(
            f"text of {n} chars too short to split into non-empty parts with fractions "
            f"{tuple(fractions)!r} (sizes {tuple(len(p) for p in parts)})"
        )
    return parts


def _import_tfds_quietly():
    """Import TensorFlow + TFDS with as little noise and resource grabbing as possible.

    Only reading one tiny dataset happens in TF here, so: C++ info logs and the
    oneDNN banner are silenced (environment defaults, only if TF is not imported
    yet and the user has not set them), GPUs are hidden from TF (so it does not
    reserve accelerator memory that JAX needs), and TF's thread pools are limited
    to one thread each when the TF runtime has not started yet.
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the tiny_shakespeare dataset needs `tensorflow-datasets` and `tensorflow` "
            f"(CPU build is enough): {e}"
        ) from e
    with contextlib.suppress(RuntimeError, ValueError):
        tf.config.set_visible_devices([], "GPU")
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(1)
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf, tfds


@contextlib.contextmanager
def _tfds_progress_bar(tfds, enable: bool):
    from tensorflow_datasets.core.utils import tqdm_utils

    previous = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enable)
    try:
        yield
    finally:
        tfds.display_progress_bar(previous)


def load_tiny_shakespeare(data_dir=None, manual_dir=None, *, quiet: bool = True) -> dict[str, str]:
    """The TFDS ``tiny_shakespeare`` splits as ``{"train", "validation", "test"} -> str``.

    Runs the real TFDS builder (``tfds.builder("tiny_shakespeare")``). Offline, its
    download step is served from ``manual_dir``: the TFDS download manager looks
    for the file under the name registered in the builder's checksums
    (``input.txt``), verifies its size and sha256 against the registered ones, and
    uses it instead of downloading. Already prepared data in ``data_dir`` is reused.

    Args:
      data_dir: TFDS data dir (``None``: TFDS default, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      manual_dir: folder with ``input.txt`` (default: the shipped copy's folder).
      quiet: hide TFDS progress bars while preparing.
    Returns:
      Each split is a single TFDS example holding the whole split text
      (train 1,003,854 chars; validation and test 55,770 each).
    """
    _, tfds = _import_tfds_quietly()
    manual_dir = Path(manual_dir).expanduser() if manual_dir is not None else default_tiny_shakespeare_manual_dir()
    builder = tfds.builder("tiny_shakespeare", data_dir=None if data_dir is None else os.fspath(data_dir))
    # (checking existence first avoids a TFDS warning about a missing variant folder)
    if not (builder.data_path.exists() and builder.is_prepared()):
        source = manual_dir / TINY_SHAKESPEARE_FILE
        if not source.is_file():
            raise FileNotFoundError(
                f"tiny_shakespeare is not prepared in {builder.data_dir} and the offline source "
                f"{source} does not exist; put the char-rnn input.txt there (or pass manual_dir=, "
                f"or set ${DATA_ENV_VAR} to the folder holding tinyshakespeare/)"
            )
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
        with _tfds_progress_bar(tfds, not quiet):
            builder.download_and_prepare(download_config=config)
    out = {}
    for split in ("train", "validation", "test"):
        ds = builder.as_dataset(split=split)
        texts = [ex["text"] for ex in tfds.as_numpy(ds)]
        if len(texts) != 1:
            raise RuntimeError(f"expected one example in tiny_shakespeare/{split}, got {len(texts)}")
        out[split] = texts[0].decode("utf-8")
    return out


def _read_text_file(text_file) -> str:
    path = Path(text_file).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path}")
    if not path.is_file():
        raise FileNotFoundError(f"text file is not a regular file: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {path} is not valid UTF-8: {e}") from e


def load_text(name: str = "tiny_shakespeare", *, text_file=None, data_dir=None, manual_dir=None) -> TextSplits:
    """Load a corpus by name and encode its splits with a vocabulary built from all of them.

    Args:
      name: ``"tiny_shakespeare"`` (default; the shipped copy, split as TFDS splits it), ``"zen"``
        (embedded, tiny) or ``"file"`` (``text_file`` split 90/5/5 with ``split_text``).
      text_file: path of a UTF-8 text file; required for, and only used with, ``"file"``.
      data_dir: with it (or ``manual_dir``), ``"tiny_shakespeare"`` comes from the TFDS builder
        (``load_tiny_shakespeare``) prepared there instead of the shipped file: the same splits.
      manual_dir: the folder the TFDS builder reads ``input.txt`` from (see ``load_tiny_shakespeare``).

    >>> s = load_text("tiny_shakespeare")
    >>> len(s.train), len(s.validation), len(s.test), s.vocab.size
    (1003854, 55770, 55770, 65)
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(map(repr, DATASETS))}")
    if name != "file" and text_file is not None:
        raise ValueError(f"text_file is only used with dataset 'file', not {name!r}")
    if name == "zen":
        train, val, test = split_text(zen_of_python())
        label = "zen"
    elif name == "tiny_shakespeare" and data_dir is None and manual_dir is None:
        train, val, test = split_text(read_tiny_shakespeare())  # == the TFDS splits (tests/test_text_data.py)
        label = "tiny_shakespeare"
    elif name == "tiny_shakespeare":
        splits = load_tiny_shakespeare(data_dir=data_dir, manual_dir=manual_dir)
        train, val, test = splits["train"], splits["validation"], splits["test"]
        label = "tiny_shakespeare"
    else:
        if text_file is None:
            raise ValueError("dataset 'file' needs text_file (the path of a UTF-8 text file)")
        text = _read_text_file(text_file)
        if not text:
            raise ValueError(f"text file {text_file} is empty")
        train, val, test = split_text(text)
        label = f"file:{Path(text_file).expanduser().resolve()}"
    vocab = Vocab.from_text(train + val + test)
    return TextSplits(
        train=vocab.encode(train),
        validation=vocab.encode(val),
        test=vocab.encode(test),
        vocab=vocab,
        name=label,
    )


def build_parser():
    """The command line of ``python -m lstm_jax.data.text``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lstm_jax.data.text", description=main.__doc__)
    parser.add_argument("name", nargs="?", default=DATASETS[0], choices=DATASETS)
    parser.add_argument("--text-file", default=None)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS default)")
    parser.add_argument("--manual-dir", default=None, help="folder with tiny_shakespeare input.txt")
    return parser


def main(argv=None) -> None:
    """``python -m lstm_jax.data.text [zen|tiny_shakespeare|file] [--text-file P]``: corpus summary."""
    args = build_parser().parse_args(argv)
    s = load_text(args.name, text_file=args.text_file, data_dir=args.data_dir, manual_dir=args.manual_dir)
    print(f"dataset {s.name}: vocab size {s.vocab.size}")
    for split in ("train", "validation", "test"):
        ids = getattr(s, split)
        print(f"  {split:<10} {len(ids):>9,} chars  starts {s.vocab.decode(ids[:40])!r}")
    print(f"  vocab {s.vocab.chars!r}")


if __name__ == "__main__":
    main()
