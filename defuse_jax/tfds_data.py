"""Read and write TensorFlow Datasets (TFDS) image datasets without TensorFlow.

`load_tfds` reads the "train" and "test" splits of a prepared TFDS dataset in
the array_record file format with TFDS's random-access data source, so
TensorFlow need not be installed. It backs the ``"tfds:NAME"`` names of
`defuse_jax.data.load_dataset`. The dataset must have an "image" feature
(`tfds.features.Image`, which TFDS decodes with OpenCV or PIL, or
`tfds.features.Tensor`) and a
"label" feature (`tfds.features.ClassLabel`), as the TFDS catalog's mnist and
fashion_mnist do.

`write_tfds` writes an in-memory `defuse_jax.data.Dataset` as such a TFDS
dataset, offline, with the same two features and splits. It stores pixels as
uint8 PNG images, so float pixels are rounded to multiples of 1/255.

Example::

    from defuse_jax import data, tfds_data

    dataset = data.load_dataset("digits")
    tfds_data.write_tfds(dataset, name="my_digits", data_dir="/data/tfds")
    same = data.load_dataset("tfds:my_digits", data_dir="/data/tfds")

The command-line tool `experiments/write_tfds.py` does the same for any name
that `load_dataset` accepts.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import tempfile
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from google.protobuf import json_format
from PIL import Image

from defuse_jax import data

SPLITS = ("train", "test")
IMAGE_FEATURE = "image"
LABEL_FEATURE = "label"
# The file format whose data source reads without TensorFlow.
ARRAY_RECORD = "array_record"
DATASET_INFO_FILE = "dataset_info.json"
FEATURES_FILE = "features.json"
# TFDS keeps downloads in this folder of a data_dir. It contains no dataset.
DOWNLOADS_FOLDER = "downloads"

# "tfds:NAME", "tfds:NAME/CONFIG" or either with ":VERSION", such as "tfds:mnist:3.0.1".
TFDS_NAME_PATTERN = re.compile(
    r"^tfds:(?P<dataset>[A-Za-z]\w*)(?:/(?P<config>[\w+.-]+))?"
    r"(?::(?P<version>\d+\.\d+\.\d+))?$"
)
# Names that write_tfds accepts: TFDS builder names are snake_case.
WRITE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

# Examples decoded per `__getitems__` call while reading a split.
READ_CHUNK_SIZE = 1000
# Reading a split with more examples than this logs its progress.
LOG_PROGRESS_MIN_EXAMPLES = 10_000


def load_tfds(name: str, *, data_dir: str = "") -> data.Dataset:
    """Read the train and test splits of a TFDS dataset in array_record format.

    Args:
      name: "tfds:NAME", "tfds:NAME/CONFIG", or either followed by ":VERSION",
        such as "tfds:mnist:3.0.1". Without a version, the highest version
        prepared under `data_dir` is read.
      data_dir: The TFDS data folder that contains NAME/VERSION/. Empty means
        TFDS's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets.

    Returns:
      The dataset, named `name`. Images are float32 in [0, 1] with shape
      [N, H, W, C], and 2-D images get a channel axis. uint8 pixels are
      divided by 255, and float pixels are kept as they are. Labels are int32,
      and the class names are those of the "label" ClassLabel feature.

    Raises:
      ValueError: If the name is invalid or the dataset is not found under
        `data_dir`. Also if the dataset is not in the array_record format,
        lacks the train or test split or the "image" or "label" feature, or
        its images are not 2-D or 3-D arrays of one shape.
    """
    dataset_name, config, version = _parse_name(name)
    root = pathlib.Path(data_dir or tfds.core.constants.get_default_data_dir())
    root = root.expanduser()
    version_dir = _find_version_dir(name, root, dataset_name, config, version)
    # Building from the version folder, as tfds.data_source does for an explicit
    # version, reads the metadata written with the data. It never downloads, and
    # a builder of the same name in TFDS's catalog, such as mnist, is not used.
    builder = _read_builder(name, version_dir)
    image_feature, label_feature = _check_builder(name, builder, version_dir)

    try:
        sources = builder.as_data_source(split=list(SPLITS), file_format=ARRAY_RECORD)
    except (OSError, RuntimeError, ValueError, NotImplementedError) as error:
        # array_record raises RuntimeError for missing or truncated files.
        raise ValueError(
            f"Cannot open the splits of {name!r} in {str(version_dir)!r} "
            f"({type(error).__name__}: {error}). The files may be missing or "
            "corrupt: prepare the dataset again."
        ) from error

    arrays = {}
    for split, source in zip(SPLITS, sources, strict=True):
        arrays[split] = _read_split(name, split, source, image_feature, version_dir)

    class_names = tuple(str(label_name) for label_name in label_feature.names)
    return data.Dataset(
        name=name,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        num_classes=int(label_feature.num_classes),
        class_names=class_names,
    )


def write_tfds(
    dataset: data.Dataset,
    *,
    name: str,
    data_dir: str,
    version: str = "1.0.0",
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a dataset as a TFDS dataset in array_record format, offline.

    The dataset gets the splits "train" and "test" and the features "image",
    a `tfds.features.Image` of shape (H, W, C) with uint8 PNG images, and
    "label", a `tfds.features.ClassLabel` with the dataset's class names. The
    pixels are stored as round(x * 255), so float images are quantized to
    multiples of 1/255. Examples keep their order. PIL encodes the PNG images,
    so TensorFlow is not needed.

    Args:
      dataset: The dataset to write. Its arrays must pass `data.validate_arrays`.
      name: TFDS name of the dataset, in snake_case, such as "my_digits". Read
        it back as "tfds:NAME".
      data_dir: The TFDS data folder to write NAME/VERSION/ into.
      version: Version of the dataset, "MAJOR.MINOR.PATCH".
      overwrite: Replace a dataset already prepared with the same name and
        version. Without it, an existing one raises ValueError.

    Returns:
      The folder of the written dataset, DATA_DIR/NAME/VERSION.

    Raises:
      ValueError: If the name, version, data_dir or class names are invalid,
        the arrays fail `data.validate_arrays`, or the dataset already exists
        and `overwrite` is False.
    """
    version_dir = check_write_target(
        name=name, data_dir=data_dir, version=version, overwrite=overwrite
    )
    _check_class_names(dataset)
    for split in SPLITS:
        data.validate_arrays(
            getattr(dataset, f"{split}_images"),
            getattr(dataset, f"{split}_labels"),
            dataset.num_classes,
            where=f"{split} split of {dataset.name}",
        )

    builder_class = _make_builder_class(dataset, name=name, version=version)
    builder = builder_class(
        data_dir=os.fspath(version_dir.parents[1]), file_format=ARRAY_RECORD
    )
    download_mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    download_config = tfds.download.DownloadConfig(
        download_mode=download_mode,
        try_download_gcs=False,
    )
    logging.info(
        "Writing %d train and %d test examples of %s as TFDS dataset %s:%s in %s.",
        len(dataset.train_labels),
        len(dataset.test_labels),
        dataset.name,
        name,
        version,
        version_dir,
    )
    # Nothing is downloaded, so a temporary download folder keeps TFDS from
    # creating DATA_DIR/downloads.
    with _progress_bar_disabled(), tempfile.TemporaryDirectory() as download_dir:
        builder.download_and_prepare(
            download_dir=download_dir, download_config=download_config
        )
    return pathlib.Path(builder.data_dir)


def check_write_target(
    *, name: str, data_dir: str, version: str, overwrite: bool
) -> pathlib.Path:
    """Check the arguments of `write_tfds` that do not depend on the dataset.

    Callers can run this before loading a large dataset, so that a bad name or
    an existing dataset fails fast.

    Returns:
      The folder that `write_tfds` would write, DATA_DIR/NAME/VERSION.

    Raises:
      ValueError: As `write_tfds`, for the name, version and data_dir.
    """
    if not WRITE_NAME_PATTERN.match(name):
        raise ValueError(
            f"Invalid TFDS dataset name {name!r}: expected snake_case, lower-case "
            "letters, digits and underscores starting with a letter, such as "
            "'my_digits'."
        )
    if not tfds.core.Version.is_valid(version):
        raise ValueError(
            f"Invalid TFDS dataset version {version!r}: expected MAJOR.MINOR.PATCH "
            "without leading zeros, such as '1.0.0'."
        )
    if not data_dir:
        raise ValueError(
            "Missing data_dir for write_tfds: expected the TFDS data folder to "
            "write the dataset into."
        )
    root = pathlib.Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"TFDS data folder {str(root)!r} is a file: expected a folder, or a "
            "path where write_tfds can create one."
        )
    version_dir = root / name / version
    if version_dir.exists() and not overwrite:
        raise ValueError(
            f"TFDS dataset {name} version {version} already exists in "
            f"{str(version_dir)!r}: pass overwrite=True (--overwrite) to replace "
            "it, or choose another name or version."
        )
    return version_dir


def _parse_name(name: str) -> tuple[str, str | None, str | None]:
    """Split "tfds:NAME[/CONFIG][:VERSION]" into its three parts."""
    match = TFDS_NAME_PATTERN.match(name)
    if match is None:
        raise ValueError(
            f"Invalid TFDS dataset name {name!r}: expected 'tfds:NAME', "
            "'tfds:NAME/CONFIG' or either with ':VERSION', such as "
            "'tfds:mnist' or 'tfds:mnist:3.0.1'."
        )
    return match["dataset"], match["config"], match["version"]


def _list_folders(folder: pathlib.Path) -> list[str]:
    """Return the sorted names of the subfolders of `folder`, [] if it is unreadable."""
    try:
        return sorted(path.name for path in folder.iterdir() if path.is_dir())
    except OSError:
        return []


def _find_version_dir(
    name: str,
    root: pathlib.Path,
    dataset_name: str,
    config: str | None,
    version: str | None,
) -> pathlib.Path:
    """Return the prepared DATA_DIR/NAME[/CONFIG]/VERSION folder of a dataset."""
    write_hint = (
        "Prepare it with `tfds build --file_format=array_record`, write it "
        "with `python -m experiments.write_tfds`, or set "
        "config.dataset.data_dir to the folder that contains it."
    )
    if not root.is_dir():
        raise ValueError(
            f"TFDS data folder {str(root)!r} for {name!r} does not exist or is not "
            f"a folder. {write_hint}"
        )

    dataset_dir = root / dataset_name
    if not dataset_dir.is_dir():
        present = [
            folder for folder in _list_folders(root) if folder != DOWNLOADS_FOLDER
        ]
        raise ValueError(
            f"TFDS dataset {dataset_name!r} of {name!r} not found: there is no "
            f"folder {dataset_name} in the data folder {str(root)!r}, which contains "
            f"the dataset folders {', '.join(present) or '(none)'}. {write_hint}"
        )
    if config is not None:
        dataset_dir = dataset_dir / config
        if not dataset_dir.is_dir():
            raise ValueError(
                f"TFDS config {config!r} of {name!r} not found in "
                f"{str(dataset_dir.parent)!r}, which contains "
                f"{', '.join(_list_folders(dataset_dir.parent)) or 'no folders'}."
            )

    versions = sorted(
        (
            tfds.core.Version(folder)
            for folder in _list_folders(dataset_dir)
            if tfds.core.Version.is_valid(folder)
            and (dataset_dir / folder / DATASET_INFO_FILE).is_file()
        ),
    )
    if not versions:
        config_hint = (
            ""
            if config
            else " If the dataset has configs, name one: 'tfds:NAME/CONFIG'."
        )
        raise ValueError(
            f"TFDS dataset folder {str(dataset_dir)!r} of {name!r} contains no "
            f"prepared version: expected a folder such as 1.0.0 with a "
            f"{DATASET_INFO_FILE} file, but it contains "
            f"{', '.join(_list_folders(dataset_dir)) or 'no folders'}.{config_hint}"
        )
    if version is None:
        return dataset_dir / str(versions[-1])
    if tfds.core.Version(version) not in versions:
        raise ValueError(
            f"Version {version} of {name!r} not found in {str(dataset_dir)!r}: "
            f"prepared versions are {', '.join(str(v) for v in versions)}."
        )
    return dataset_dir / version


def _read_builder(name: str, version_dir: pathlib.Path) -> Any:
    """Return a read-only TFDS builder for a prepared version folder."""
    try:
        return tfds.builder_from_directory(os.fspath(version_dir))
    except (OSError, ValueError, KeyError, json_format.Error) as error:
        if not (version_dir / FEATURES_FILE).is_file():
            hint = (
                f"It has no {FEATURES_FILE}, which TFDS 3.2.1 and older did not "
                "write: prepare the dataset again with a recent TFDS."
            )
        else:
            hint = "The metadata may be corrupt: prepare the dataset again."
        raise ValueError(
            f"Cannot read the TFDS metadata of {name!r} in {str(version_dir)!r} "
            f"({type(error).__name__}: {error}). {hint}"
        ) from error


def _check_builder(
    name: str, builder: Any, version_dir: pathlib.Path
) -> tuple[Any, tfds.features.ClassLabel]:
    """Check the file format, splits and features of a dataset.

    Returns:
      The "image" and "label" features.
    """
    info = builder.info
    formats = {file_format.value for file_format in info.available_file_formats()}
    if ARRAY_RECORD not in formats:
        raise ValueError(
            f"TFDS dataset {name!r} in {str(version_dir)!r} is stored as "
            f"{', '.join(sorted(formats)) or 'an unknown file format'}, but reading "
            f"it without TensorFlow needs the {ARRAY_RECORD} format. Convert it, on "
            "a machine with TensorFlow, with `tfds convert_format "
            f"--dataset_version_dir={version_dir} --out_file_format={ARRAY_RECORD}`, "
            f"or prepare it again with `tfds build {info.name} "
            f"--file_format={ARRAY_RECORD}`."
        )

    missing_splits = [split for split in SPLITS if split not in info.splits]
    if missing_splits:
        raise ValueError(
            f"TFDS dataset {name!r} in {str(version_dir)!r} has no "
            f"{' or '.join(missing_splits)} split: it has the splits "
            f"{', '.join(sorted(info.splits)) or '(none)'}. Defuse needs a train "
            "and a test split."
        )

    features = info.features
    feature_names = sorted(features.keys()) if features is not None else []
    missing_features = [
        key for key in (IMAGE_FEATURE, LABEL_FEATURE) if key not in feature_names
    ]
    if missing_features:
        raise ValueError(
            f"TFDS dataset {name!r} in {str(version_dir)!r} has no "
            f"{' or '.join(repr(key) for key in missing_features)} feature: it has "
            f"the features {', '.join(feature_names) or '(none)'}. Expected an "
            f"image feature named {IMAGE_FEATURE!r} and a ClassLabel feature named "
            f"{LABEL_FEATURE!r}, as in the TFDS mnist dataset."
        )

    image_feature = features[IMAGE_FEATURE]
    _check_image_feature(name, image_feature)
    label_feature = features[LABEL_FEATURE]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        # The feature type comes from the dataset's files, so it is invalid data.
        raise ValueError(  # noqa: TRY004
            f"Feature {LABEL_FEATURE!r} of TFDS dataset {name!r} is a "
            f"{type(label_feature).__name__}: expected a tfds.features.ClassLabel, "
            "which gives the number of classes and their names."
        )
    return image_feature, label_feature


def _check_image_feature(name: str, feature: Any) -> None:
    """Raise ValueError unless a feature contains 2-D or 3-D uint8 or float images."""
    if not isinstance(feature, (tfds.features.Image, tfds.features.Tensor)):
        raise ValueError(  # noqa: TRY004 - invalid data, as for the label feature.
            f"Feature {IMAGE_FEATURE!r} of TFDS dataset {name!r} is a "
            f"{type(feature).__name__}: expected a tfds.features.Image or a "
            "tfds.features.Tensor of images."
        )
    shape = tuple(feature.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"Feature {IMAGE_FEATURE!r} of TFDS dataset {name!r} has shape {shape}: "
            "expected images of shape (H, W) or (H, W, C)."
        )
    dtype = np.dtype(feature.np_dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"Feature {IMAGE_FEATURE!r} of TFDS dataset {name!r} has dtype {dtype}: "
            "expected uint8 pixels in 0..255 or float pixels in [0, 1]."
        )


def _read_split(
    name: str,
    split: str,
    source: Any,
    image_feature: Any,
    version_dir: pathlib.Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split in chunks into float32 NHWC images and int32 labels."""
    num_examples = len(source)
    if num_examples < 1:
        raise ValueError(
            f"The {split} split of TFDS dataset {name!r} has no examples: expected "
            "at least 1."
        )
    log_progress = num_examples > LOG_PROGRESS_MIN_EXAMPLES
    if log_progress:
        logging.info("Reading %d %s examples of %s.", num_examples, split, name)

    images = None
    labels = np.empty(num_examples, np.int32)
    for start in range(0, num_examples, READ_CHUNK_SIZE):
        indices = list(range(start, min(start + READ_CHUNK_SIZE, num_examples)))
        try:
            examples = _get_examples(source, indices)
        except (OSError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"Cannot read examples {indices[0]} to {indices[-1]} of the {split} "
                f"split of {name!r} in {str(version_dir)!r} ({type(error).__name__}: "
                f"{error}). The files may be missing or corrupt: prepare the dataset again."
            ) from error
        for index, example in zip(indices, examples, strict=True):
            image = np.asarray(example[IMAGE_FEATURE])
            if image.ndim == 2:
                image = image[..., np.newaxis]
            if images is None:
                if image.ndim != 3:
                    raise ValueError(
                        f"Example 0 of the {split} split of TFDS dataset {name!r} "
                        f"has an image of shape {image.shape}: expected (H, W) or "
                        "(H, W, C)."
                    )
                images = np.empty((num_examples, *image.shape), image.dtype)
            elif image.shape != images.shape[1:]:
                raise ValueError(
                    f"Example {index} of the {split} split of TFDS dataset {name!r} "
                    f"has an image of shape {image.shape}, but example 0 has "
                    f"{images.shape[1:]}: expected images of one shape. Resize "
                    "them to one size."
                )
            images[index] = image
            labels[index] = example[LABEL_FEATURE]
        if log_progress:
            logging.info(
                "Read %d of %d %s examples of %s.",
                indices[-1] + 1,
                num_examples,
                split,
                name,
            )

    float_images = images.astype(np.float32)
    if np.dtype(image_feature.np_dtype) == np.uint8:
        # float32 division is correctly rounded, so pixel k becomes float32(k / 255),
        # the value that data.load_dataset gives for uint8 sources.
        float_images /= np.float32(255.0)
    return float_images, labels


def _get_examples(source: Any, indices: list[int]) -> list[Any]:
    """Read and decode the examples at `indices`, in one call when the source can."""
    get_items = getattr(source, "__getitems__", None)
    if get_items is not None:
        return list(get_items(indices))
    return [source[index] for index in indices]


def _check_class_names(dataset: data.Dataset) -> None:
    """Raise ValueError unless the class names survive TFDS's labels.txt file.

    ClassLabel stores one name per line and strips each line when reading, so
    names must be non-empty, unique, without surrounding whitespace and
    without line breaks.
    """
    names = list(dataset.class_names)
    if len(names) != dataset.num_classes:
        raise ValueError(
            f"Dataset {dataset.name} has {len(names)} class names for "
            f"{dataset.num_classes} classes: expected one name per class."
        )
    for label, class_name in enumerate(names):
        if not class_name or class_name != class_name.strip() or "\n" in class_name:
            raise ValueError(
                f"Invalid class name {class_name!r} of label {label} in dataset "
                f"{dataset.name}: TFDS stores class names one per line, so expected "
                "a non-empty name without line breaks or surrounding whitespace."
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Dataset {dataset.name} has the duplicate class names "
            f"{', '.join(repr(n) for n in duplicates)}: TFDS needs unique names."
        )


def _encode_png(image: np.ndarray) -> bytes:
    """Encode an [H, W, C] float image in [0, 1] as a uint8 PNG with PIL."""
    pixels = np.round(image * 255.0).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]  # PIL takes grayscale images as [H, W].
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _make_builder_class(dataset: data.Dataset, *, name: str, version: str) -> type:
    """Create a GeneratorBasedBuilder subclass that writes `dataset` as `name`.

    TFDS registers every subclass under its `name` attribute and raises on a
    second class with the same name. This class skips registration because
    the builder is only used here, and datasets are read back from their files.
    """
    image_shape = dataset.image_shape
    if image_shape[-1] not in (1, 2, 3, 4):
        raise ValueError(
            f"Images of dataset {dataset.name} have {image_shape[-1]} channels: "
            "PNG, which TFDS image features use, stores 1 to 4 channels."
        )

    def _info(self: Any) -> Any:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Dataset {dataset.name} written by defuse_jax.tfds_data.write_tfds, "
                "with pixels quantized to uint8."
            ),
            features=tfds.features.FeaturesDict(
                {
                    IMAGE_FEATURE: tfds.features.Image(shape=image_shape),
                    LABEL_FEATURE: tfds.features.ClassLabel(
                        names=list(dataset.class_names)
                    ),
                }
            ),
            supervised_keys=(IMAGE_FEATURE, LABEL_FEATURE),
            # Keep the examples in the order of the arrays.
            disable_shuffling=True,
        )

    def _split_generators(self: Any, dl_manager: Any) -> dict[str, Iterator[Any]]:
        del dl_manager  # Nothing to download.
        return {
            split: self._generate_examples(
                getattr(dataset, f"{split}_images"),
                getattr(dataset, f"{split}_labels"),
            )
            for split in SPLITS
        }

    def _generate_examples(
        self: Any, images: np.ndarray, labels: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        del self  # The examples come from the arrays alone.
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield index, {IMAGE_FEATURE: _encode_png(image), LABEL_FEATURE: int(label)}

    namespace = {
        "name": name,
        "VERSION": tfds.core.Version(version),
        "RELEASE_NOTES": {version: "Written by defuse_jax.tfds_data.write_tfds."},
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        # The builder has no source folder with checksums or metadata files, and
        # TFDS 4.9.10 needs the package importlib_resources, which it does not
        # declare for Python >= 3.9, to find one for a class in a package.
        "code_path": None,
        "__module__": __name__,
    }
    return types.new_class(
        "WrittenDatasetBuilder",
        (tfds.core.GeneratorBasedBuilder,),
        {"skip_registration": True},
        lambda class_namespace: class_namespace.update(namespace),
    )


@contextlib.contextmanager
def _progress_bar_disabled() -> Iterator[None]:
    """Turn off TFDS's tqdm progress bars, then restore their previous state."""
    # NOTE: TFDS 4.9 has no public getter for the progress-bar state, so this
    # reads the private flag of tqdm_utils and assumes it was on if it is gone.
    from tensorflow_datasets.core.utils import tqdm_utils

    was_enabled = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_enabled)
