"""Tests for defuse_jax.tfds_data, the train_size option and the fashion_mnist name."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from binary import run_module

from defuse_jax import data, tfds_data


@pytest.fixture(scope="module")
def mnist5k() -> data.Dataset:
    return data.load_dataset("mnist5k")


@pytest.fixture(scope="module")
def mnist5k_tfds_dir(
    mnist5k: data.Dataset, tmp_path_factory: pytest.TempPathFactory
) -> pathlib.Path:
    """A TFDS data folder with mnist5k written as the dataset "mnist5k_copy"."""
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds_data.write_tfds(mnist5k, name="mnist5k_copy", data_dir=str(data_dir))
    return data_dir


@pytest.fixture(scope="module")
def mnist5k_read_back(mnist5k_tfds_dir: pathlib.Path) -> data.Dataset:
    return data.load_dataset("tfds:mnist5k_copy", data_dir=str(mnist5k_tfds_dir))


def tiny_dataset(*, seed: int = 0, channels: int = 3) -> data.Dataset:
    """A small random dataset with float pixels that are not multiples of 1/255."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2], np.int32)
    return data.Dataset(
        name="tiny",
        train_images=rng.random((12, 5, 4, channels), dtype=np.float32),
        train_labels=labels,
        test_images=rng.random((6, 5, 4, channels), dtype=np.float32),
        test_labels=labels[:6],
        num_classes=3,
        class_names=("cat", "dog", "T-shirt/top"),
    )


def write_custom_builder(
    data_dir: pathlib.Path,
    name: str,
    *,
    features: dict[str, Any],
    examples: dict[str, list[dict[str, Any]]],
) -> None:
    """Write a dataset with arbitrary features and splits, as other tools might."""

    def _info(self: Any) -> Any:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(features)
        )

    def _split_generators(self: Any, dl_manager: Any) -> dict[str, Any]:
        return {
            split: self._generate_examples(split_examples)
            for split, split_examples in examples.items()
        }

    def _generate_examples(self: Any, split_examples: list[dict[str, Any]]) -> Any:
        yield from enumerate(split_examples)

    namespace = {
        "name": name,
        "VERSION": tfds.core.Version("1.0.0"),
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "code_path": None,
    }
    builder_class = types.new_class(
        "CustomBuilder",
        (tfds.core.GeneratorBasedBuilder,),
        {"skip_registration": True},
        lambda class_namespace: class_namespace.update(namespace),
    )
    builder = builder_class(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )


def tensor_examples(count: int, *, image_key: str, label_key: str) -> list[dict]:
    return [
        {image_key: np.full((3, 3), index, np.uint8), label_key: index % 2}
        for index in range(count)
    ]


# Round trip of mnist5k.


def test_round_trip_images_exact(
    mnist5k: data.Dataset, mnist5k_read_back: data.Dataset
) -> None:
    # mnist5k pixels are k/255, which uint8 storage keeps exactly.
    assert mnist5k_read_back.train_images.dtype == np.float32
    assert mnist5k_read_back.train_images.shape == mnist5k.train_images.shape
    assert mnist5k_read_back.test_images.shape == mnist5k.test_images.shape
    np.testing.assert_array_equal(mnist5k_read_back.train_images, mnist5k.train_images)
    np.testing.assert_array_equal(mnist5k_read_back.test_images, mnist5k.test_images)


def test_round_trip_labels_and_classes(
    mnist5k: data.Dataset, mnist5k_read_back: data.Dataset
) -> None:
    assert mnist5k_read_back.train_labels.dtype == np.int32
    np.testing.assert_array_equal(mnist5k_read_back.train_labels, mnist5k.train_labels)
    np.testing.assert_array_equal(mnist5k_read_back.test_labels, mnist5k.test_labels)
    assert mnist5k_read_back.class_names == mnist5k.class_names
    assert mnist5k_read_back.num_classes == 10
    assert mnist5k_read_back.name == "tfds:mnist5k_copy"
    assert mnist5k_read_back.image_shape == (28, 28, 1)


def test_round_trip_without_tensorflow(mnist5k_read_back: data.Dataset) -> None:
    # Passes whether or not TensorFlow is installed, because it checks only that
    # writing and reading did not import it.
    assert len(mnist5k_read_back.train_labels) == 4000
    assert "tensorflow" not in sys.modules


def test_written_dataset_looks_like_tfds_mnist(
    mnist5k_tfds_dir: pathlib.Path,
) -> None:
    builder = tfds.builder_from_directory(str(mnist5k_tfds_dir / "mnist5k_copy/1.0.0"))
    features = builder.info.features
    assert isinstance(features["image"], tfds.features.Image)
    assert tuple(features["image"].shape) == (28, 28, 1)
    assert isinstance(features["label"], tfds.features.ClassLabel)
    assert features["label"].names == [str(digit) for digit in range(10)]
    assert builder.info.file_format.value == "array_record"
    assert builder.info.splits["train"].num_examples == 4000
    assert builder.info.splits["test"].num_examples == 1000


# Round trip of other images.


def test_round_trip_rgb_quantizes_floats(tmp_path: pathlib.Path) -> None:
    dataset = tiny_dataset()
    folder = tfds_data.write_tfds(dataset, name="tiny", data_dir=str(tmp_path))
    assert folder == tmp_path / "tiny" / "1.0.0"

    back = data.load_dataset("tfds:tiny", data_dir=str(tmp_path))
    assert back.image_shape == (5, 4, 3)
    expected = np.round(dataset.train_images * 255) / 255
    np.testing.assert_allclose(back.train_images, expected, atol=1e-6)
    assert np.abs(back.train_images - dataset.train_images).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(back.test_labels, dataset.test_labels)
    assert back.class_names == ("cat", "dog", "T-shirt/top")


def test_load_highest_version(tmp_path: pathlib.Path) -> None:
    old = tiny_dataset(seed=1, channels=1)
    new = tiny_dataset(seed=2, channels=1)
    tfds_data.write_tfds(old, name="tiny", data_dir=str(tmp_path), version="1.2.0")
    tfds_data.write_tfds(new, name="tiny", data_dir=str(tmp_path), version="1.10.0")

    latest = tfds_data.load_tfds("tfds:tiny", data_dir=str(tmp_path))
    pinned = tfds_data.load_tfds("tfds:tiny:1.2.0", data_dir=str(tmp_path))
    expected_new = np.round(new.train_images * 255) / 255
    expected_old = np.round(old.train_images * 255) / 255
    np.testing.assert_allclose(latest.train_images, expected_new, atol=1e-6)
    np.testing.assert_allclose(pinned.train_images, expected_old, atol=1e-6)
    with pytest.raises(ValueError, match=r"Version 2\.0\.0 .* are 1\.2\.0, 1\.10\.0"):
        tfds_data.load_tfds("tfds:tiny:2.0.0", data_dir=str(tmp_path))


def test_load_config_folder(tmp_path: pathlib.Path) -> None:
    folder = tfds_data.write_tfds(tiny_dataset(), name="tiny", data_dir=str(tmp_path))
    config_dir = tmp_path / "tiny" / "small"
    config_dir.mkdir()
    folder.rename(config_dir / "1.0.0")

    dataset = tfds_data.load_tfds("tfds:tiny/small", data_dir=str(tmp_path))
    assert dataset.image_shape == (5, 4, 3)
    with pytest.raises(
        ValueError, match="no prepared version.*small.*tfds:NAME/CONFIG"
    ):
        tfds_data.load_tfds("tfds:tiny", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="config 'large' .* not found.*contains small"):
        tfds_data.load_tfds("tfds:tiny/large", data_dir=str(tmp_path))


def test_load_tensor_features(tmp_path: pathlib.Path) -> None:
    write_custom_builder(
        tmp_path,
        "tensor_images",
        features={
            "image": tfds.features.Tensor(shape=(3, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=["even", "odd"]),
        },
        examples={
            "train": tensor_examples(4, image_key="image", label_key="label"),
            "test": tensor_examples(2, image_key="image", label_key="label"),
        },
    )
    dataset = data.load_dataset("tfds:tensor_images", data_dir=str(tmp_path))
    assert dataset.train_images.shape == (4, 3, 3, 1)
    assert dataset.class_names == ("even", "odd")
    # TFDS shuffles the examples of this builder, so compare them by pixel value.
    order = np.argsort(dataset.train_images[:, 0, 0, 0])
    for position, index in enumerate(order):
        np.testing.assert_allclose(
            dataset.train_images[index], np.full((3, 3, 1), position / 255), atol=1e-7
        )
        assert dataset.train_labels[index] == position % 2


# Overwriting.


def test_write_refuses_overwrite(tmp_path: pathlib.Path) -> None:
    tfds_data.write_tfds(tiny_dataset(seed=1), name="tiny", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        tfds_data.write_tfds(tiny_dataset(seed=2), name="tiny", data_dir=str(tmp_path))

    unchanged = tfds_data.load_tfds("tfds:tiny", data_dir=str(tmp_path))
    expected = np.round(tiny_dataset(seed=1).train_images * 255) / 255
    np.testing.assert_allclose(unchanged.train_images, expected, atol=1e-6)


def test_write_overwrite_replaces(tmp_path: pathlib.Path) -> None:
    tfds_data.write_tfds(tiny_dataset(seed=1), name="tiny", data_dir=str(tmp_path))
    tfds_data.write_tfds(
        tiny_dataset(seed=2), name="tiny", data_dir=str(tmp_path), overwrite=True
    )
    replaced = tfds_data.load_tfds("tfds:tiny", data_dir=str(tmp_path))
    expected = np.round(tiny_dataset(seed=2).train_images * 255) / 255
    np.testing.assert_allclose(replaced.train_images, expected, atol=1e-6)


# Errors of load_tfds.


def test_load_unknown_dataset_lists_folders(
    mnist5k_tfds_dir: pathlib.Path,
) -> None:
    with pytest.raises(ValueError) as info:
        data.load_dataset("tfds:no_such_set", data_dir=str(mnist5k_tfds_dir))
    message = str(info.value)
    assert "'no_such_set'" in message
    assert str(mnist5k_tfds_dir) in message
    assert "mnist5k_copy" in message


def test_load_missing_data_dir(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(ValueError, match="does not exist") as info:
        data.load_dataset("tfds:mnist", data_dir=str(missing))
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["tfds:", "tfds:my set", "tfds:mnist:3.0", "tfds:mnist:v1.0.0", "tfds:1mnist"],
)
def test_load_invalid_name(name: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="Invalid TFDS dataset name"):
        tfds_data.load_tfds(name, data_dir=str(tmp_path))


def test_load_folder_without_versions(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty_set" / "some_config").mkdir(parents=True)
    with pytest.raises(ValueError, match="no prepared version.*some_config.*CONFIG"):
        tfds_data.load_tfds("tfds:empty_set", data_dir=str(tmp_path))


def test_load_missing_features(tmp_path: pathlib.Path) -> None:
    write_custom_builder(
        tmp_path,
        "other_features",
        features={
            "pixels": tfds.features.Tensor(shape=(3, 3), dtype=np.uint8),
            "target": tfds.features.ClassLabel(num_classes=2),
        },
        examples={
            "train": tensor_examples(2, image_key="pixels", label_key="target"),
            "test": tensor_examples(2, image_key="pixels", label_key="target"),
        },
    )
    with pytest.raises(ValueError) as info:
        data.load_dataset("tfds:other_features", data_dir=str(tmp_path))
    message = str(info.value)
    assert "no 'image' or 'label' feature" in message
    assert "pixels, target" in message


def test_load_missing_split(tmp_path: pathlib.Path) -> None:
    write_custom_builder(
        tmp_path,
        "no_test_split",
        features={
            "image": tfds.features.Tensor(shape=(3, 3), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=2),
        },
        examples={
            "train": tensor_examples(2, image_key="image", label_key="label"),
            "validation": tensor_examples(2, image_key="image", label_key="label"),
        },
    )
    with pytest.raises(ValueError, match="no test split.*train, validation"):
        tfds_data.load_tfds("tfds:no_test_split", data_dir=str(tmp_path))


def test_load_non_image_shape(tmp_path: pathlib.Path) -> None:
    write_custom_builder(
        tmp_path,
        "vectors",
        features={
            "image": tfds.features.Tensor(shape=(9,), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=2),
        },
        examples={
            split: [{"image": np.zeros(9, np.uint8), "label": 0}] * 2
            for split in ("train", "test")
        },
    )
    with pytest.raises(ValueError, match=r"shape \(9,\): expected images of shape"):
        tfds_data.load_tfds("tfds:vectors", data_dir=str(tmp_path))


def test_load_label_not_class_label(tmp_path: pathlib.Path) -> None:
    write_custom_builder(
        tmp_path,
        "int_labels",
        features={
            "image": tfds.features.Tensor(shape=(3, 3), dtype=np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
        },
        examples={
            split: tensor_examples(2, image_key="image", label_key="label")
            for split in ("train", "test")
        },
    )
    with pytest.raises(
        ValueError, match="is a Tensor: expected a tfds.features.ClassLabel"
    ):
        tfds_data.load_tfds("tfds:int_labels", data_dir=str(tmp_path))


def test_load_tfrecord_format(tmp_path: pathlib.Path) -> None:
    # Writing TFRecord files needs TensorFlow, so mark an array_record dataset as
    # TFRecord in its metadata, which is all that the format check reads.
    folder = tfds_data.write_tfds(tiny_dataset(), name="tiny", data_dir=str(tmp_path))
    info_path = folder / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info), encoding="utf-8")

    with pytest.raises(ValueError) as raised:
        tfds_data.load_tfds("tfds:tiny", data_dir=str(tmp_path))
    message = str(raised.value)
    assert "stored as tfrecord" in message
    assert "needs the array_record format" in message
    assert "tfds convert_format" in message
    assert "--file_format=array_record" in message


# Errors of write_tfds.


@pytest.mark.parametrize("name", ["", "My_Set", "my-set", "1set", "my set"])
def test_write_invalid_name(name: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="Invalid TFDS dataset name"):
        tfds_data.write_tfds(tiny_dataset(), name=name, data_dir=str(tmp_path))


@pytest.mark.parametrize("version", ["1.0", "1.0.0.0", "01.0.0", "v1.0.0"])
def test_write_invalid_version(version: str, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="Invalid TFDS dataset version"):
        tfds_data.write_tfds(
            tiny_dataset(), name="tiny", data_dir=str(tmp_path), version=version
        )


def test_write_empty_data_dir() -> None:
    with pytest.raises(ValueError, match="Missing data_dir"):
        tfds_data.write_tfds(tiny_dataset(), name="tiny", data_dir="")


@pytest.mark.parametrize(
    ("class_names", "pattern"),
    [
        (("cat", "cat", "dog"), "duplicate class names 'cat'"),
        (("cat", " dog", "cow"), "Invalid class name ' dog' of label 1"),
        (("cat", "", "cow"), "Invalid class name '' of label 1"),
        (("cat", "a\nb", "cow"), "line breaks"),
        (("cat", "dog"), "2 class names for 3 classes"),
    ],
)
def test_write_invalid_class_names(
    class_names: tuple[str, ...], pattern: str, tmp_path: pathlib.Path
) -> None:
    dataset = tiny_dataset()._replace(class_names=class_names)
    with pytest.raises(ValueError, match=pattern):
        tfds_data.write_tfds(dataset, name="tiny", data_dir=str(tmp_path))
    assert not (tmp_path / "tiny").exists()


def test_write_invalid_pixels(tmp_path: pathlib.Path) -> None:
    dataset = tiny_dataset()
    dataset.train_images[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match="expected values in \\[0, 1\\]"):
        tfds_data.write_tfds(dataset, name="tiny", data_dir=str(tmp_path))


# The train_size option of data.load_dataset.


def test_train_size_stratified() -> None:
    full = data.load_dataset("digits")
    subset = data.load_dataset("digits", train_size=100)
    assert len(subset.train_labels) == 100
    np.testing.assert_array_equal(subset.test_labels, full.test_labels)

    full_counts = np.bincount(full.train_labels, minlength=10)
    subset_counts = np.bincount(subset.train_labels, minlength=10)
    # One example per class, plus the other 90 in proportion to what is left.
    expected = 1 + (full_counts - 1) * 90 / (full_counts.sum() - 10)
    assert np.all(np.abs(subset_counts - expected) < 1)

    # Every kept example is a distinct train example of the full dataset.
    rows = {image.tobytes(): index for index, image in enumerate(full.train_images)}
    indices = [rows[image.tobytes()] for image in subset.train_images]
    assert len(set(indices)) == 100
    np.testing.assert_array_equal(full.train_labels[indices], subset.train_labels)


def test_train_size_deterministic() -> None:
    first = data.load_dataset("digits", train_size=50, split_seed=3)
    second = data.load_dataset("digits", train_size=50, split_seed=3)
    other_seed = data.load_dataset("digits", train_size=50, split_seed=4)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    assert not np.array_equal(first.train_images, other_seed.train_images)


@pytest.mark.parametrize(
    ("train_size", "expected"),
    [(10, 10), (796, 796), (797, 797), (5000, 797), (0, 797)],
)
def test_train_size_edges(train_size: int, expected: int) -> None:
    # digits keeps 797 train examples with the default test_size of 1000.
    dataset = data.load_dataset("digits", train_size=train_size)
    assert len(dataset.train_labels) == expected
    assert len(np.unique(dataset.train_labels)) == 10


@pytest.mark.parametrize("train_size", [9, 1, -1])
def test_train_size_too_small(train_size: int) -> None:
    with pytest.raises(
        ValueError, match=f"Invalid train_size {train_size} .* at least 10"
    ):
        data.load_dataset("digits", train_size=train_size)


@pytest.mark.parametrize("train_size", [1.5, True, "100"])
def test_train_size_wrong_type(train_size: Any) -> None:
    with pytest.raises(TypeError, match="Invalid train_size"):
        data.load_dataset("digits", train_size=train_size)


def test_train_size_single_example_class(tmp_path: pathlib.Path) -> None:
    labels = np.array([0] * 20 + [1] + [2] * 5, np.int32)
    path = tmp_path / "rare.npz"
    np.savez(
        path,
        train_images=np.zeros((26, 2, 2, 1), np.float32),
        train_labels=labels,
        test_images=np.zeros((3, 2, 2, 1), np.float32),
        test_labels=np.array([0, 1, 2], np.int32),
    )
    dataset = data.load_dataset(f"npz:{path}", train_size=6)
    # One example each, then the other 3 shared by the 19 and 4 examples left:
    # 19 * 3 / 23 = 2.48 and 4 * 3 / 23 = 0.52, rounded by largest remainder.
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [3, 1, 2])


# fashion_mnist from Debian's dataset-fashion-mnist package.


def test_fashion_mnist_missing_package(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "fashion-mnist"))
    with pytest.raises(ValueError) as info:
        data.load_dataset("fashion_mnist")
    message = str(info.value)
    assert "dataset-fashion-mnist" in message
    assert str(tmp_path / "fashion-mnist") in message
    assert "train-images-idx3-ubyte" in message


@pytest.mark.skipif(
    not os.path.isdir(data.FASHION_MNIST_DIR),
    reason=f"{data.FASHION_MNIST_DIR} is missing: install the Debian package "
    "dataset-fashion-mnist.",
)
def test_fashion_mnist_loads() -> None:
    dataset = data.load_dataset("fashion_mnist")
    assert dataset.name == "fashion_mnist"
    assert dataset.train_images.shape == (60000, 28, 28, 1)
    assert dataset.test_images.shape == (10000, 28, 28, 1)
    assert dataset.class_names == data.FASHION_MNIST_CLASS_NAMES
    assert dataset.num_classes == 10
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)

    subset = data.load_dataset("fashion_mnist", train_size=1000)
    assert len(subset.train_labels) == 1000
    np.testing.assert_array_equal(np.bincount(subset.train_labels), [100] * 10)
    assert len(subset.test_labels) == 10000


# The experiments.write_tfds binary.


def run_write_tfds(*flags: str) -> subprocess.CompletedProcess:
    return run_module("experiments.write_tfds", *flags, timeout=120)


def test_binary_writes_digits(tmp_path: pathlib.Path) -> None:
    flags = ("--dataset=digits", "--test_size=0.25", "--name=cli_digits")
    result = run_write_tfds(*flags, f"--data_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--config.dataset.name=tfds:cli_digits" in result.stderr
    assert f"--config.dataset.data_dir={tmp_path}" in result.stderr

    direct = data.load_dataset("digits", test_size=0.25)
    back = data.load_dataset("tfds:cli_digits", data_dir=str(tmp_path))
    assert back.train_images.shape == direct.train_images.shape
    # digits pixels are k/16, which uint8 storage rounds to the nearest k/255.
    np.testing.assert_allclose(back.train_images, direct.train_images, atol=0.5 / 255)
    np.testing.assert_array_equal(back.train_labels, direct.train_labels)
    np.testing.assert_array_equal(back.test_labels, direct.test_labels)


def test_binary_bad_test_size(tmp_path: pathlib.Path) -> None:
    result = run_write_tfds(
        "--dataset=digits", "--test_size=2.5", "--name=x", f"--data_dir={tmp_path}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Invalid --test_size 2.5: expected a whole number of examples or a "
        "fraction in (0, 1)."
    )


def test_binary_existing_dataset(tmp_path: pathlib.Path) -> None:
    (tmp_path / "x" / "1.0.0").mkdir(parents=True)
    result = run_write_tfds("--dataset=digits", "--name=x", f"--data_dir={tmp_path}")
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: TFDS dataset x version 1.0.0 already exists")
    assert "--overwrite" in last_line
    assert "Traceback" not in result.stderr
