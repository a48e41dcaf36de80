r"""Write a dataset that defuse_jax can load as a TFDS dataset in array_record format.

    python -m experiments.write_tfds --dataset=digits --name=my_digits \
        --data_dir=/tmp/tfds

Then run Defuse on it with
--config.dataset.name=tfds:my_digits --config.dataset.data_dir=/tmp/tfds.
Pixels are stored as uint8, so float pixels are rounded to multiples of 1/255.
TensorFlow is not needed.
"""

import os
import sys

from absl import app, flags, logging

from defuse_jax import data, tfds_data

_DATASET = flags.DEFINE_string(
    "dataset",
    None,
    "Dataset to write: any name that defuse_jax.data.load_dataset accepts, such as "
    "mnist5k, digits, fashion_mnist, idx:DIR or npz:FILE.",
)
_TEST_SIZE = flags.DEFINE_float(
    "test_size",
    1000,
    "Test split size for mnist5k and digits: a whole number of examples, or a "
    "fraction in (0, 1). Other datasets keep their own split.",
)
_SPLIT_SEED = flags.DEFINE_integer(
    "split_seed", 0, "Seed of the stratified train/test split of mnist5k and digits."
)
_NAME = flags.DEFINE_string(
    "name", None, "TFDS name to write the dataset under, in snake_case."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data folder to write NAME/VERSION/ into."
)
_VERSION = flags.DEFINE_string(
    "version", "1.0.0", "Version of the written dataset, MAJOR.MINOR.PATCH."
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "Replace a dataset that already exists with the same name and version.",
)
flags.mark_flags_as_required(["dataset", "name", "data_dir"])


def _test_size(value: float) -> int | float:
    """Return --test_size as load_dataset takes it: an int count or a float fraction."""
    if 0.0 < value < 1.0:
        return value
    if value >= 1.0 and value.is_integer():
        return int(value)
    raise ValueError(
        f"Invalid --test_size {value}: expected a whole number of examples or a "
        "fraction in (0, 1)."
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        # Checked first, because loading a large dataset takes a while.
        tfds_data.check_write_target(
            name=_NAME.value,
            data_dir=_DATA_DIR.value,
            version=_VERSION.value,
            overwrite=_OVERWRITE.value,
        )
        dataset = data.load_dataset(
            _DATASET.value,
            test_size=_test_size(_TEST_SIZE.value),
            split_seed=_SPLIT_SEED.value,
        )
        folder = tfds_data.write_tfds(
            dataset,
            name=_NAME.value,
            data_dir=_DATA_DIR.value,
            version=_VERSION.value,
            overwrite=_OVERWRITE.value,
        )
    except (ValueError, TypeError) as error:
        # Both functions raise these for bad input, with the value and the fix.
        sys.exit(f"error: {error}")

    logging.info(
        "Wrote %d train and %d test examples of %s to %s.",
        len(dataset.train_labels),
        len(dataset.test_labels),
        _DATASET.value,
        folder,
    )
    logging.info(
        "Use it with: python -m experiments.run_defuse --workdir=WORKDIR "
        "--config.dataset.name=tfds:%s --config.dataset.data_dir=%s (the name "
        "tfds:%s:%s pins this version).",
        _NAME.value,
        os.path.abspath(os.path.expanduser(_DATA_DIR.value)),
        _NAME.value,
        _VERSION.value,
    )


if __name__ == "__main__":
    app.run(main)
