"""Tests for lstm_jax.data.text: corpora, vocabulary, batching."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.data import text as td
from lstm_jax.data.text import (
    StatefulWindows,
    TextSplits,
    Vocab,
    eval_windows,
    load_text,
    load_tiny_shakespeare,
    read_tiny_shakespeare,
    random_windows,
    split_text,
    zen_of_python,
)

SHAKESPEARE_DIR = td.default_tiny_shakespeare_manual_dir()
SHAKESPEARE_FILE = SHAKESPEARE_DIR / "input.txt"  # the copy shipped in the package


def _installed(name: str) -> bool:
    """Whether ``name`` is importable, without importing it (TensorFlow takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# The TFDS path needs TensorFlow and TFDS (project dependencies, so CI has them); a machine without
# them (the GPU check's) skips these tests instead of failing on the import.
_NO_TF = [n for n in ("tensorflow_datasets", "tensorflow") if not _installed(n)]
needs_tfds = pytest.mark.skipif(
    bool(_NO_TF) and not os.environ.get("CI"), reason=f"{' and '.join(_NO_TF)} not installed (the TFDS path needs them)"
)


# --------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """A fresh TFDS data dir in which tiny_shakespeare is prepared once from the shipped file."""
    if _NO_TF and not os.environ.get("CI"):
        pytest.skip(f"{' and '.join(_NO_TF)} not installed (the TFDS path needs them)")
    data_dir = tmp_path_factory.mktemp("tfds")
    splits = load_tiny_shakespeare(data_dir=data_dir, manual_dir=SHAKESPEARE_DIR)
    return data_dir, splits


def test_tfds_tiny_shakespeare_split_sizes(tfds_data_dir):
    data_dir, splits = tfds_data_dir
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 1_003_854,
        "validation": 55_770,
        "test": 55_770,
    }
    # Prepared by the real builder into the temporary data dir.
    assert (data_dir / "tiny_shakespeare" / "1.0.0" / "dataset_info.json").is_file()


def test_tfds_splits_are_the_file_and_match_split_text(tfds_data_dir):
    _, splits = tfds_data_dir
    raw = SHAKESPEARE_FILE.read_bytes().decode("utf-8")
    assert splits["train"] + splits["validation"] + splits["test"] == raw
    assert split_text(raw) == (splits["train"], splits["validation"], splits["test"])
    assert splits["train"].startswith("First Citizen:\n")
    # The default (shipped file, no TensorFlow) encodes the very same splits as the TFDS path.
    shipped = load_text()
    for split, ids in (("train", shipped.train), ("validation", shipped.validation), ("test", shipped.test)):
        assert shipped.vocab.decode(ids) == splits[split], split


def test_shipped_tiny_shakespeare_is_the_char_rnn_file():
    import hashlib

    data = td.TINY_SHAKESPEARE_PATH.read_bytes()
    assert len(data) == 1_115_394
    assert hashlib.sha256(data).hexdigest() == td.TINY_SHAKESPEARE_SHA256 == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
    assert SHAKESPEARE_FILE == td.TINY_SHAKESPEARE_PATH


def test_default_corpus_is_shipped_tiny_shakespeare_in_the_tfds_splits():
    s = load_text()
    assert s.name == "tiny_shakespeare"
    assert (len(s.train), len(s.validation), len(s.test)) == (1_003_854, 55_770, 55_770)
    assert s.vocab.size == 65 and s.train.dtype == np.int32
    assert s.vocab.decode(s.train[:14]) == "First Citizen:"
    # validation + test are the last tenth, in order, as TFDS splits the file.
    raw = SHAKESPEARE_FILE.read_text(encoding="utf-8")
    assert s.vocab.decode(np.concatenate([s.validation, s.test])) == raw[1_003_854:]


def test_a_changed_shipped_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "input.txt"
    bad.write_text("First Citizen:\nnot quite\n")
    monkeypatch.setattr(td, "TINY_SHAKESPEARE_PATH", bad)
    with pytest.raises(ValueError, match=r"input\.txt has sha256 [0-9a-f]{64}, not the recorded"):
        load_text("tiny_shakespeare")


def test_load_text_tiny_shakespeare_reuses_prepared_dir(tfds_data_dir, tmp_path):
    data_dir, _ = tfds_data_dir
    # manual_dir points at an empty folder: the already prepared data must be reused.
    s = load_text("tiny_shakespeare", data_dir=data_dir, manual_dir=tmp_path)
    assert isinstance(s, TextSplits) and s.name == "tiny_shakespeare"
    assert (len(s.train), len(s.validation), len(s.test)) == (1_003_854, 55_770, 55_770)
    assert s.vocab.size == 65
    assert s.train.dtype == np.int32
    assert s.vocab.decode(s.train[:14]) == "First Citizen:"


@needs_tfds
def test_tfds_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not prepared in .* offline source .*nowhere/input\.txt does not exist"):
        load_tiny_shakespeare(data_dir=tmp_path / "tfds", manual_dir=tmp_path / "nowhere")


@needs_tfds
def test_tfds_rejects_a_wrong_source_file(tmp_path):
    """The builder's registered size/sha256 are checked: a different input.txt is refused."""
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_text("not Shakespeare\n")
    with pytest.raises(Exception, match="has wrong checksum") as err:
        load_tiny_shakespeare(data_dir=tmp_path / "tfds", manual_dir=manual)
    assert type(err.value).__name__ == "NonMatchingChecksumError"


def test_importing_text_module_does_not_import_tensorflow():
    code = "import sys, lstm_jax.data.text as t; t.load_text(); t.load_text('zen'); print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- vocab


def test_vocab_round_trip_and_ids():
    text = "hello, world\n"
    v = Vocab.from_text(text)
    assert v.chars == "\n ,dehlorw" and v.size == 10 == len(v)
    ids = v.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert v.decode(ids) == text
    assert v.decode(list(ids)) == text
    assert v.decode(np.int32(5)) == v.chars[5]
    assert v.decode([]) == ""


def test_vocab_non_ascii():
    v = Vocab.from_text("naïve ☃ café")
    assert v.decode(v.encode("☃ café")) == "☃ café"


def test_vocab_unknown_characters_error_lists_them():
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary \(size 3\): '\\n', 'Z'"):
        v.encode("abZ\nc")


def test_vocab_decode_out_of_range():
    v = Vocab.from_text("abc")
    with pytest.raises(ValueError, match=r"ids out of range for vocabulary of size 3: \[3\]"):
        v.decode([0, 3])


def test_vocab_json_round_trip():
    v = Vocab.from_text(zen_of_python() + "ü")
    d = json.loads(json.dumps(v.to_json()))
    assert Vocab.from_json(d) == v


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1, 2], "must be an object"),
        ({"size": 2}, "no 'chars' field"),
        ({"chars": 5}, "must be a string"),
        ({"chars": "ba"}, "must be sorted"),
        ({"chars": "aab"}, "must be unique"),
        ({"chars": ""}, "at least one character"),
        ({"chars": "ab", "size": 3}, "inconsistent: size 3 but 2 chars"),
        ({"type": "bpe", "chars": "ab"}, "unsupported vocab type 'bpe'"),
    ],
)
def test_vocab_from_json_validates(bad, message):
    with pytest.raises(ValueError, match=message):
        Vocab.from_json(bad)


def test_vocab_from_empty_text():
    with pytest.raises(ValueError, match="empty text"):
        Vocab.from_text("")


# --------------------------------------------------------------------------- corpora


def test_zen_corpus():
    zen = zen_of_python()
    assert zen.startswith("Beautiful is better than ugly.\n")
    assert zen.endswith("Namespaces are one honking great idea -- let's do more of those!\n")
    assert len(zen.splitlines()) == 19


def test_load_text_zen():
    s = load_text("zen")
    assert s.name == "zen"
    text = s.vocab.decode(np.concatenate([s.train, s.validation, s.test]))
    assert text == zen_of_python()
    n = len(text)
    assert len(s.train) == int(n * 0.9)
    assert abs(len(s.validation) - len(s.test)) <= 1


def test_heldout_is_the_last_tenth_of_tiny_shakespeare_as_nanogpt_splits_it():
    """nanoGPT's shakespeare_char validation text is data[int(n * 0.9):]; TextSplits.heldout is the same characters."""
    splits = load_text("tiny_shakespeare")
    text = read_tiny_shakespeare()
    last = text[int(len(text) * 0.9):]
    assert len(splits.heldout) == len(last) == 111_540
    assert splits.vocab.decode(splits.heldout) == last
    assert splits.vocab.decode(splits.train) == text[: int(len(text) * 0.9)]


def test_load_text_file_splits_90_5_5(tmp_path):
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefgh \n"), size=2000))
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    s = load_text("file", text_file=path)
    assert (len(s.train), len(s.validation), len(s.test)) == (1800, 100, 100)
    assert s.vocab.decode(s.train) == text[:1800]
    assert s.vocab.decode(s.validation) == text[1800:1900]
    assert s.vocab.decode(s.test) == text[1900:]
    assert s.name == f"file:{path.resolve()}"


def test_split_text_fractions():
    assert split_text("abcdefghij", (0.6, 0.2, 0.2)) == ("abcdef", "gh", "ij")
    with pytest.raises(ValueError, match="sum to 1"):
        split_text("abcdefghij", (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="text of 5 chars too short to split"):
        split_text("abcde")


# --------------------------------------------------------------------------- batching


def test_random_windows_deterministic_and_shifted():
    ids = np.arange(500, dtype=np.int32)
    x1, y1 = random_windows(ids, 8, 16, seed=3, step=7)
    x2, y2 = random_windows(ids, 8, 16, seed=3, step=7)
    x3, _ = random_windows(ids, 8, 16, seed=3, step=8)
    x4, _ = random_windows(ids, 8, 16, seed=4, step=7)
    assert x1.shape == y1.shape == (8, 16) and x1.dtype == y1.dtype == np.int32
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(x1, x3) and not np.array_equal(x1, x4)
    # ids == positions: every row is a contiguous slice and targets are the next characters.
    np.testing.assert_array_equal(np.diff(x1, axis=1), 1)
    np.testing.assert_array_equal(y1, x1 + 1)


def test_random_windows_reach_every_offset():
    ids = np.arange(12, dtype=np.int32)
    starts = set()
    for step in range(50):
        x, y = random_windows(ids, 16, 3, seed=0, step=step)
        starts.update(x[:, 0].tolist())
        assert y.max() <= 11
    assert starts == set(range(9))  # offsets 0 .. len - seq_len - 1


def test_stateful_windows_continuity():
    ids = np.arange(1003, dtype=np.int32)
    sw = StatefulWindows(ids, batch_size=4, seq_len=10)
    assert sw.stream_len == 250 and sw.num_windows == 25
    x0, y0 = sw(0)
    np.testing.assert_array_equal(x0[:, 0], [0, 250, 500, 750])  # stream b starts at b * L
    for k in range(sw.num_windows - 1):
        xk, yk = sw(k)
        xn, yn = sw(k + 1)
        np.testing.assert_array_equal(yk, xk + 1)
        # Window k+1 of stream b starts right where window k ended.
        np.testing.assert_array_equal(xn[:, 0], yk[:, -1])
        np.testing.assert_array_equal(xn[:, 0], xk[:, -1] + 1)
    assert [sw.is_stream_start(s) for s in (0, 1, 24, 25, 50)] == [True, False, False, True, True]
    np.testing.assert_array_equal(sw(25)[0], x0)  # wraps around deterministically
    assert sw.epoch(51) == 2


def test_eval_windows_cover_split_exactly_once():
    ids = np.arange(107, dtype=np.int32)  # 106 targets = 10 full windows of 10 + tail of 6
    batches = eval_windows(ids, batch_size=4, seq_len=10)
    assert [b[0].shape for b in batches] == [(4, 10), (4, 10), (2, 10), (1, 6)]
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x, _ in batches]), ids[:-1])
    np.testing.assert_array_equal(np.concatenate([y.ravel() for _, y in batches]), ids[1:])
    # Shorter than one window (tiny validation split): a single tail window.
    assert [b[0].shape for b in eval_windows(np.arange(5), 4, 10)] == [(1, 4)]


# --------------------------------------------------------------------------- bad input


def test_empty_text_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(ValueError, match=r"text file .*empty\.txt is empty"):
        load_text("file", text_file=path)


def test_missing_text_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"text file not found: .*missing\.txt"):
        load_text("file", text_file=tmp_path / "missing.txt")


def test_file_dataset_needs_path_and_path_needs_file_dataset(tmp_path):
    with pytest.raises(ValueError, match="dataset 'file' needs text_file"):
        load_text("file")
    with pytest.raises(ValueError, match="text_file is only used with dataset 'file', not 'zen'"):
        load_text("zen", text_file=tmp_path / "x.txt")


def test_unknown_dataset_name():
    with pytest.raises(
        ValueError, match=r"unknown dataset 'shakespeare'; choose one of 'tiny_shakespeare', 'zen', 'file'"
    ):
        load_text("shakespeare")


def test_text_too_short_for_window():
    ids = np.arange(5)
    with pytest.raises(ValueError, match=r"text of 5 chars too short for windows of seq_len\+1 = 6 chars"):
        random_windows(ids, 2, 5, seed=0, step=0)
    with pytest.raises(
        ValueError, match=r"text of 5 chars too short for 2 streams of seq_len\+1 = 4 chars \(needs at least 7\)"
    ):
        StatefulWindows(ids, 2, 3)
    with pytest.raises(ValueError, match="text of 1 chars too short to evaluate"):
        eval_windows(ids[:1], 2, 2)


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: random_windows(ids, 2, 0, seed=0, step=0),
        lambda ids: StatefulWindows(ids, 2, 0),
        lambda ids: eval_windows(ids, 2, 0),
    ],
)
def test_seq_len_zero(make):
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        make(np.arange(100))
