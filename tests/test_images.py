"""Image data: the IDX reader on the real files and on broken copies, TFDS wiring, sequence modes, batching."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from lstm_jax.data import images as img

MNIST_DIR = img.shared_data_root() / "mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Label histogram of the real MNIST test split (LeCun et al.; as TFDS reports it).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"MNIST test files not in {MNIST_DIR}"
)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    return img.load_images("fashion_mnist", "idx")


# ---------------------------------------------------------------------------
# Real files


@needs_mnist
def test_real_mnist_test_split():
    images = img.read_idx_images(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = img.read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert images.min() == 0 and images.max() == 255
    # digits are centred in a 20x20 box: the top row is blank in every image,
    # and the mean pixel is the well-known ~0.13 of full scale
    assert images[:, 0, :].max() == 0
    assert 0.13 < images.mean() / 255 < 0.135
    train_labels = img.read_idx_labels(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    assert train_labels.shape == (60_000,) and set(np.unique(train_labels)) == set(range(10))


@needs_mnist
def test_mnist_folder_with_only_the_test_split():
    data = img.load_idx_dataset(MNIST_DIR, name="mnist")
    assert list(data.splits) == ["test"]
    assert data.test[0].shape == (10_000, 28, 28)
    with pytest.raises(ValueError, match="split 'train' is not available.*only the test images"):
        data.train
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        img.load_idx_dataset(MNIST_DIR, ["train", "test"], name="mnist")
    with pytest.raises(FileNotFoundError, match="has \\['test'\\].*source='tfds'"):
        img.load_images("mnist", "idx")
    # auto picks the local folder when it holds what was asked for: no network needed
    test_only = img.load_images("mnist", "auto", splits=("test",))
    assert test_only.source == "idx" and np.array_equal(test_only.test[1], data.test[1])


def test_real_fashion_mnist(fashion):
    assert fashion.source == "idx"
    (xtr, ytr), (xte, yte) = fashion.train, fashion.test
    assert xtr.shape == (60_000, 28, 28) and xte.shape == (10_000, 28, 28)
    assert xtr.dtype == xte.dtype == np.uint8
    # Fashion-MNIST is exactly balanced: 6,000 train and 1,000 test images per class
    assert np.bincount(ytr).tolist() == [6000] * 10
    assert np.bincount(yte).tolist() == [1000] * 10
    assert fashion.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------------------
# Broken files


def _write_idx(path: Path, magic: int, dims, payload: bytes, compress=True):
    data = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in dims) + payload
    path.write_bytes(gzip.compress(data) if compress else data)


def test_reader_roundtrip_raw_and_gzip(tmp_path):
    x = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    _write_idx(tmp_path / "a.gz", img.IMAGES_MAGIC, x.shape, x.tobytes())
    _write_idx(tmp_path / "a.raw", img.IMAGES_MAGIC, x.shape, x.tobytes(), compress=False)
    assert np.array_equal(img.read_idx_images(tmp_path / "a.gz"), x)
    assert np.array_equal(img.read_idx_images(tmp_path / "a.raw"), x)
    # other IDX element types are big-endian
    v = np.array([1, -2, 70000], dtype=">i4")
    _write_idx(tmp_path / "i.gz", 0x00000C01, v.shape, v.tobytes())
    got = img.read_idx(tmp_path / "i.gz")
    assert got.tolist() == [1, -2, 70000] and got.dtype.isnative


def test_truncated_files(tmp_path):
    x = np.zeros((4, 28, 28), np.uint8)
    _write_idx(tmp_path / "short.gz", img.IMAGES_MAGIC, (5, 28, 28), x.tobytes())  # header says 5
    with pytest.raises(img.IDXError, match=r"truncated: header says shape \(5, 28, 28\)"):
        img.read_idx_images(tmp_path / "short.gz")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(img.IDXError, match="too short"):
        img.read_idx(tmp_path / "tiny")
    (tmp_path / "hdr").write_bytes(img.IMAGES_MAGIC.to_bytes(4, "big") + b"\x00\x00\x00\x05")
    with pytest.raises(img.IDXError, match="truncated header"):
        img.read_idx(tmp_path / "hdr")
    _write_idx(tmp_path / "long.gz", img.IMAGES_MAGIC, (3, 28, 28), x.tobytes())
    with pytest.raises(img.IDXError, match="unexpected bytes"):
        img.read_idx_images(tmp_path / "long.gz")


@needs_mnist
def test_truncated_real_gzip(tmp_path):
    raw = (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()
    cut = tmp_path / "t10k-labels-idx1-ubyte.gz"
    cut.write_bytes(raw[: len(raw) // 2])  # a download cut half way
    with pytest.raises(img.IDXError, match="corrupt or truncated gzip"):
        img.read_idx_labels(cut)
    # the same content, decompressed and cut short, is caught by the byte count
    plain = tmp_path / "labels"
    plain.write_bytes(gzip.decompress(raw)[:-10])
    with pytest.raises(img.IDXError, match="truncated"):
        img.read_idx_labels(plain)


def test_wrong_magic(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    _write_idx(tmp_path / "labels.gz", img.LABELS_MAGIC, labels.shape, labels.tobytes())
    with pytest.raises(img.IDXError, match="wrong magic number 0x00000801, expected 0x00000803"):
        img.read_idx_images(tmp_path / "labels.gz")  # labels passed as images
    (tmp_path / "junk").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(img.IDXError, match="not an IDX magic number"):
        img.read_idx(tmp_path / "junk")
    bad = np.zeros((2, 28, 27), np.uint8)
    _write_idx(tmp_path / "odd.gz", img.IMAGES_MAGIC, bad.shape, bad.tobytes())
    with pytest.raises(img.IDXError, match=r"images are \(28, 27\)"):
        img.read_idx_images(tmp_path / "odd.gz")
    big = np.array([3, 12], np.uint8)
    _write_idx(tmp_path / "big.gz", img.LABELS_MAGIC, big.shape, big.tobytes())
    with pytest.raises(img.IDXError, match="label 12 out of range"):
        img.read_idx_labels(tmp_path / "big.gz")


@needs_mnist
def test_mismatched_counts_and_missing_files(tmp_path):
    shutil.copy(MNIST_DIR / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = np.zeros(9_999, np.uint8)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", img.LABELS_MAGIC, labels.shape, labels.tobytes())
    with pytest.raises(img.IDXError, match="10000 images .* but 9999 labels"):
        img.load_idx_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="missing train-images-idx3-ubyte.*train-labels"):
        img.load_idx_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        img.read_idx(tmp_path / "nope.gz")
    with pytest.raises(FileNotFoundError, match="IDX folder not found"):
        img.load_idx_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete IDX split"):
        img.load_idx_dataset(tmp_path / "empty")


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown image dataset 'cifar10'"):
        img.load_images("cifar10")
    with pytest.raises(ValueError, match="unknown source"):
        img.load_images("mnist", source="http")
    with pytest.raises(ValueError, match="unknown sequence mode"):
        img.to_sequences(np.zeros((1, 28, 28)), "columns")


# ---------------------------------------------------------------------------
# TFDS wiring (no network: TFDS's own mock data)


def test_tfds_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        for name in img.DATASETS:
            data = img.load_images(name, "tfds", data_dir=tmp_path)
            assert data.source == "tfds" and set(data.splits) == {"train", "test"}
            for x, y in data.splits.values():
                assert x.shape == (6, 28, 28) and x.dtype == np.uint8
                assert y.shape == (6,) and y.dtype == np.int32 and 0 <= y.min() and y.max() < 10
        # "auto" falls back to TFDS when no local folder has the train split
        data = img.load_images("mnist", "auto", data_dir=tmp_path)
        assert data.source == "tfds"


# ---------------------------------------------------------------------------
# Sequences, normalization, split, batches


def test_sequence_modes_shapes_and_content():
    x = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    rows = img.to_sequences(x, "rows")
    pixels = img.to_sequences(x, "pixels")
    perm = img.to_sequences(x, "permuted", permutation_seed=3)
    assert rows.shape == (5, 28, 28) and pixels.shape == perm.shape == (5, 784, 1)
    assert img.sequence_shape("rows") == (28, 28) and img.sequence_shape("permuted") == (784, 1)
    assert np.array_equal(rows[:, 3], x[:, 3, :])  # step 3 = row 3
    assert np.array_equal(pixels[:, 28 * 3 + 5, 0], x[:, 3, 5])  # raster order
    p = img.pixel_permutation(3)
    assert np.array_equal(perm[:, :, 0], pixels[:, p, 0])
    # same multiset of pixels, different order
    assert np.array_equal(np.sort(perm[:, :, 0], 1), np.sort(pixels[:, :, 0], 1))
    assert not np.array_equal(perm, pixels)


def test_permutation_fixed_and_reproducible():
    p = img.pixel_permutation(0)
    assert sorted(p.tolist()) == list(range(784))
    assert np.array_equal(p, img.pixel_permutation(0))
    assert not np.array_equal(p, img.pixel_permutation(1))
    # pinned: the permuted task (seed 0) must not change silently across numpy versions
    assert p[:8].tolist() == [318, 2, 606, 446, 758, 13, 98, 539]


def test_normalization_uses_train_statistics(fashion):
    (xtr, _), (xte, _) = fashion.train, fashion.test
    mean, std = img.fit_normalization(xtr)
    assert 0.28 < mean < 0.29 and 0.35 < std < 0.36  # Fashion-MNIST train pixel statistics
    z = img.normalize(xtr[:2000], mean, std)
    assert z.dtype == np.float32 and abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    zt = img.normalize(xte[:10], mean, std)
    assert np.allclose(zt, (xte[:10] / 255.0 - mean) / std, atol=1e-5)


def test_train_val_split_seeded():
    x = np.arange(100)[:, None]
    y = np.arange(100) % 10
    (a, ay), (b, by) = img.train_val_split(x, y, 20, seed=1)
    assert len(a) == 80 and len(b) == 20
    assert set(a[:, 0]) | set(b[:, 0]) == set(range(100)) and not set(a[:, 0]) & set(b[:, 0])
    assert np.array_equal(ay, a[:, 0] % 10)
    (_, _), (b2, _) = img.train_val_split(x, y, 20, seed=1)
    (_, _), (b3, _) = img.train_val_split(x, y, 20, seed=2)
    assert np.array_equal(b, b2) and not np.array_equal(b, b3)
    with pytest.raises(ValueError, match="val_size"):
        img.train_val_split(x, y, 100, seed=0)


def test_shuffled_batches_deterministic_per_step():
    x = np.arange(103)[:, None].astype(np.float32)
    y = np.arange(103) % 10
    b = img.ShuffledBatches(x, y, 10, seed=7)
    assert b.steps_per_epoch == 10
    epoch0 = np.concatenate([b(s)["x"][:, 0] for s in range(10)])
    assert len(set(epoch0.tolist())) == 100  # no repeats within an epoch
    epoch1 = np.concatenate([b(s)["x"][:, 0] for s in range(10, 20)])
    assert not np.array_equal(np.sort(epoch0), epoch0) or not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(b.indices(0), b.indices(10))  # reshuffled each epoch
    # a fresh object (e.g. after a resume) gives exactly the same batch at any step
    fresh = img.ShuffledBatches(x, y, 10, seed=7)
    for s in (13, 0, 57, 13):
        assert np.array_equal(fresh(s)["x"], b(s)["x"]) and np.array_equal(fresh(s)["y"], b(s)["y"])
    assert np.array_equal(b(3)["y"], (b(3)["x"][:, 0].astype(int)) % 10)
    other = img.ShuffledBatches(x, y, 10, seed=8)
    assert not np.array_equal(other.indices(0), b.indices(0))


def _shifted(image, dy, dx):
    """``image`` moved down ``dy`` and right ``dx`` pixels, zero-filled: the reference for augment_images."""
    out = np.zeros_like(image)
    rows, cols = image.shape
    out[max(dy, 0) : rows + min(dy, 0), max(dx, 0) : cols + min(dx, 0)] = \
        image[max(-dy, 0) : rows + min(-dy, 0), max(-dx, 0) : cols + min(-dx, 0)]
    return out


def test_augment_images_shifts_and_flips_each_example(fashion):
    images = fashion.train[0][:64]
    out = img.augment_images(np.random.default_rng(0), images, max_shift=2, flip=True)
    assert out.shape == images.shape and out.dtype == images.dtype
    seen = set()
    for x, y in zip(images, out):
        matches = [(dy, dx, f) for dy in range(-2, 3) for dx in range(-2, 3) for f in (False, True)
                   if np.array_equal(y, _shifted(x[:, ::-1] if f else x, dy, dx))]
        assert matches, "an output that is no shift/flip of its input"
        seen.add(matches[0])
    assert len(seen) > 20  # drawn per example: many of the 50 (shift, flip) combinations occur
    assert {f for _, _, f in seen} == {False, True}
    again = img.augment_images(np.random.default_rng(0), images, max_shift=2, flip=True)
    np.testing.assert_array_equal(out, again)  # a pure function of the generator's state
    np.testing.assert_array_equal(img.augment_images(np.random.default_rng(0), images), images)
    with pytest.raises(ValueError, match=r"max_shift must be an int in \[0, 28\)"):
        img.augment_images(np.random.default_rng(0), images, max_shift=28)


def test_shuffled_batches_transform_is_seeded_by_step():
    x = np.zeros((40, 5, 5), np.uint8)
    x[:, 2, 2] = np.arange(1, 41)  # one lit pixel per image, its value naming the image
    y = np.arange(40) % 10

    def shift(rng, images):
        return img.augment_images(rng, images, max_shift=2)

    b = img.ShuffledBatches(x, y, 8, seed=1, transform=shift)
    fresh = img.ShuffledBatches(x, y, 8, seed=1, transform=shift)  # e.g. after a resume
    for s in (0, 3, 11):
        np.testing.assert_array_equal(b(s)["x"], fresh(s)["x"])
        assert sorted(b(s)["x"].reshape(8, -1).max(axis=1).tolist()) == sorted((b.indices(s) + 1).tolist())

    def lit_pixel_by_image(epoch):
        where = {}
        for s in range(epoch * b.steps_per_epoch, (epoch + 1) * b.steps_per_epoch):
            for image in b(s)["x"]:
                where[int(image.max())] = tuple(np.argwhere(image)[0])
        return where

    first, second = lit_pixel_by_image(0), lit_pixel_by_image(1)
    assert len(first) == 40 and sum(first[k] != second[k] for k in first) > 20  # new shifts each epoch
    assert not np.array_equal(img.ShuffledBatches(x, y, 8, seed=1)(0)["x"], b(0)["x"])


def test_eval_batches_pad_and_mask():
    x = np.ones((25, 28, 28), np.float32)
    y = np.arange(25) % 10
    bs = list(img.eval_batches(x, y, 10))
    assert [b["x"].shape[0] for b in bs] == [10, 10, 10]
    assert bs[-1]["mask"].tolist() == [1] * 5 + [0] * 5
    assert sum(b["mask"].sum() for b in bs) == 25
