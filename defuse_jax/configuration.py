"""Config validation and stage fingerprints.

`validate_config` runs before any data is loaded or any model is trained, so a bad value
fails in a second with one message that names the field, the value and the allowed range.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from defuse_jax.annotate import ANNOTATORS
from defuse_jax.identify import NOISE_TYPES
from defuse_jax.vae import LIKELIHOODS


class InputError(ValueError):
    """Invalid user input: a config value, a dataset name or path, or dataset contents."""


COVARIANCE_TYPES = ("diag", "full", "spherical")
SEARCH_SPLITS = ("train", "test")


def _field(config: ml_collections.ConfigDict, field: str) -> Any:
    """Return the value of a dotted config field such as "distill.alpha"."""
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def _check_range(
    config: ml_collections.ConfigDict,
    field: str,
    low: float | None,
    high: float | None,
    *,
    integer: bool = False,
    low_open: bool = False,
) -> None:
    value = _field(config, field)
    if integer and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"config.{field} must be an integer, got {value!r}.")
    if not integer and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise InputError(f"config.{field} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise InputError(f"config.{field}={value!r} must be a finite number.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        allowed = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise InputError(
            f"config.{field}={value!r} is out of range; allowed range is {allowed}. "
            f"Set --config.{field} to a value in that range."
        )


def _check_choice(
    config: ml_collections.ConfigDict, field: str, choices: tuple[str, ...]
) -> None:
    value = _field(config, field)
    if value not in choices:
        raise InputError(
            f"config.{field}={value!r} is not supported; use one of {', '.join(choices)}."
        )


def _check_bool(config: ml_collections.ConfigDict, field: str) -> None:
    value = _field(config, field)
    if not isinstance(value, bool):
        raise InputError(f"config.{field}={value!r} must be True or False.")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise InputError on the first config value that is missing or out of range."""
    required = (
        "seed",
        "dataset",
        "classifier",
        "vae",
        "identify",
        "radius",
        "distill",
        "regions",
        "annotate",
        "correct",
        "search_again",
        "report",
        "checkpoint",
    )
    missing = [name for name in required if name not in config]
    if missing:
        raise InputError(
            f"config is missing the fields {missing}; start from experiments/configs/mnist5k.py."
        )
    _check_range(config, "seed", 0, 2**32 - 1, integer=True)
    _check_range(config, "dataset.split_seed", 0, 2**32 - 1, integer=True)
    for model in ("classifier", "vae"):
        _check_range(config, f"{model}.num_epochs", 0, None, low_open=True)
        _check_range(config, f"{model}.batch_size", 1, None, integer=True)
        _check_range(config, f"{model}.learning_rate", 0, None, low_open=True)
    _check_range(config, "classifier.weight_decay", 0, None)
    _check_range(config, "classifier.hidden_dim", 1, None, integer=True)
    features = config.classifier.features
    if not features or any(
        isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features
    ):
        raise InputError(
            f"config.classifier.features={features!r} is invalid; use a non-empty tuple of "
            "positive integers such as (16, 32)."
        )
    _check_range(config, "vae.latent_dim", 1, None, integer=True)
    _check_range(config, "vae.beta", 0, None)
    _check_choice(config, "vae.likelihood", LIKELIHOODS)
    _check_range(config, "vae.gaussian_scale", 0, None, low_open=True)

    _check_choice(config, "identify.split", SEARCH_SPLITS)
    _check_range(config, "identify.num_perturbations", 1, None, integer=True)
    _check_range(config, "identify.max_flips_per_image", 1, None, integer=True)
    _check_bool(config, "identify.require_correct_reconstruction")
    _check_choice(config, "identify.noise", NOISE_TYPES)
    _check_range(config, "identify.noise_scale", 0, None, low_open=True)
    _check_range(config, "identify.beta_a", 0, None, low_open=True)
    _check_range(config, "identify.batch_size", 1, None, integer=True)
    _check_range(config, "identify.max_source_images", 0, None, integer=True)

    _check_range(config, "radius.num_images", 0, None, integer=True)
    _check_range(config, "radius.num_perturbations", 1, None, integer=True)
    _check_range(config, "radius.smallest", 0, None, low_open=True)
    _check_range(config, "radius.largest", config.radius.smallest, None)
    _check_range(config, "radius.steps", 1, None, integer=True)
    _check_range(config, "radius.batch_size", 1, None, integer=True)

    _check_range(config, "distill.truncation", 1, None, integer=True)
    _check_range(config, "distill.alpha", 0, None, low_open=True)
    _check_choice(config, "distill.covariance_type", COVARIANCE_TYPES)
    _check_range(config, "distill.alpha_prior_shape", 0, None)
    _check_range(config, "distill.alpha_prior_rate", 0, None)
    if config.distill.alpha_prior_shape > 0 and not config.distill.alpha_prior_rate > 0:
        raise InputError(
            "config.distill.alpha_prior_rate="
            f"{config.distill.alpha_prior_rate!r} must be > 0 when "
            "config.distill.alpha_prior_shape > 0 (a Gamma prior on alpha); set both, "
            "or set alpha_prior_shape=0 to keep alpha fixed."
        )
    _check_range(config, "distill.max_steps", 1, None, integer=True)
    _check_range(config, "distill.tolerance", 0, None)
    _check_range(config, "distill.num_restarts", 1, None, integer=True)
    _check_range(config, "distill.batch_size", 0, None, integer=True)
    _check_bool(config, "distill.error_aware")
    _check_range(config, "distill.merge_distance", 0, None)
    _check_range(config, "distill.min_weight", 0, 1)
    _check_range(config, "distill.min_region_size", 1, None, integer=True)

    _check_annotate(config)
    _check_range(config, "regions.tau", 0, None, low_open=True)
    _check_range(config, "regions.num_samples", 1, None, integer=True)

    _check_range(config, "correct.lam", 0, 1)
    _check_lambda_selection(config)
    _check_range(config, "correct.num_steps", 1, None, integer=True)
    _check_range(config, "correct.batch_size", 1, None, integer=True)
    _check_range(config, "correct.extra_batch_size", 1, None, integer=True)
    _check_range(config, "correct.learning_rate", 0, None, low_open=True)
    _check_range(config, "correct.num_test_samples", 1, None, integer=True)

    _check_bool(config, "search_again.enabled")
    _check_range(config, "search_again.match_distance", 0, None)
    _check_range(config, "search_again.max_closed_error_rate", 0, 1)

    _check_range(config, "report.samples_per_region", 1, None, integer=True)
    _check_range(config, "report.map_points", 0, None, integer=True)
    _check_range(config, "report.num_flip_examples", 1, None, integer=True)

    _check_range(config, "checkpoint.every_steps", 0, None, integer=True)
    _check_range(config, "checkpoint.identify_every_batches", 0, None, integer=True)


def _check_lambda_selection(config: ml_collections.ConfigDict) -> None:
    """Check correct.lam_grid, correct.max_validation_drop and dataset.validation_size.

    Configs written before lambda selection have none of the three and keep a fixed
    lambda.
    """
    if "validation_size" in config.dataset:
        _check_range(config, "dataset.validation_size", 0, None, integer=True)
    grid = config.correct.get("lam_grid", ())
    if not isinstance(grid, (tuple, list)) or any(
        isinstance(lam, bool)
        or not isinstance(lam, (int, float))
        or not (math.isfinite(lam) and 0 <= lam <= 1)
        for lam in grid
    ):
        raise InputError(
            f"config.correct.lam_grid={grid!r} is invalid; use a tuple of lambdas in "
            "[0, 1] such as (0.05, 0.1, 0.2), or () to use config.correct.lam."
        )
    if len(set(grid)) != len(grid):
        raise InputError(
            f"config.correct.lam_grid={grid!r} repeats a lambda; list each once."
        )
    if not grid:
        return
    if "max_validation_drop" not in config.correct:
        raise InputError(
            "config.correct.lam_grid needs config.correct.max_validation_drop, the "
            "largest validation accuracy drop allowed (a fraction, such as 0.005); "
            "add it as in experiments/configs/mnist5k.py."
        )
    _check_range(config, "correct.max_validation_drop", 0, 1)
    if not config.dataset.get("validation_size", 0):
        raise InputError(
            f"config.correct.lam_grid={tuple(grid)!r} chooses lambda on a validation "
            "split, but config.dataset.validation_size is 0. Set "
            "--config.dataset.validation_size to a number of train examples to hold "
            "out (500 for mnist5k), or --config.correct.lam_grid='()' to use "
            "config.correct.lam."
        )


_ANNOTATE_FIELDS = (
    "annotator",
    "min_source_purity",
    "max_disagreement",
    "file",
    "oracle_checkpoint",
    "oracle_features",
    "oracle_hidden_dim",
    "oracle_samples",
)


def _check_annotate(config: ml_collections.ConfigDict) -> None:
    """Check the annotate section; files named there are checked when a run starts."""
    missing = [name for name in _ANNOTATE_FIELDS if name not in config.annotate]
    if missing:
        raise InputError(
            f"config.annotate is missing the fields {missing}; copy them from "
            "experiments/configs/mnist5k.py."
        )
    _check_choice(config, "annotate.annotator", tuple(ANNOTATORS))
    _check_range(config, "annotate.min_source_purity", 0, 1)
    _check_range(config, "annotate.max_disagreement", 0, 1)

    for field in ("file", "oracle_checkpoint"):
        value = config.annotate[field]
        if not isinstance(value, str):
            raise InputError(
                f"config.annotate.{field}={value!r} must be a path (a string)."
            )

    if config.annotate.annotator == "file" and not config.annotate.file:
        raise InputError(
            "config.annotate.annotator='file' needs config.annotate.file; pass "
            "--config.annotate.file=PATH, a manifest written by `python -m "
            "experiments.annotate export` and filled in."
        )
    if config.annotate.annotator == "oracle" and not config.annotate.oracle_checkpoint:
        raise InputError(
            "config.annotate.annotator='oracle' needs config.annotate.oracle_checkpoint; "
            "pass --config.annotate.oracle_checkpoint=FOLDER, the orbax params of a "
            "classifier such as WORKDIR/checkpoints/classifier of another run."
        )

    features = config.annotate.oracle_features
    if not isinstance(features, (tuple, list)) or any(
        isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in features
    ):
        raise InputError(
            f"config.annotate.oracle_features={features!r} is invalid; use a tuple of "
            "positive integers such as (32, 64), or () for the classifier's features."
        )
    _check_range(config, "annotate.oracle_hidden_dim", 0, None, integer=True)
    _check_range(config, "annotate.oracle_samples", 1, None, integer=True)


def validate_against_dataset(config: ml_collections.ConfigDict, dataset: Any) -> None:
    """Raise InputError when config values do not fit the loaded dataset."""
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise InputError(
            f"Dataset {dataset.name!r} has train images of shape "
            f"{dataset.train_images.shape[1:]} but test images of shape "
            f"{dataset.test_images.shape[1:]}; both splits need the same image shape."
        )
    validation = getattr(dataset, "validation_images", None)
    if validation is not None and validation.shape[1:] != dataset.train_images.shape[1:]:
        raise InputError(
            f"Dataset {dataset.name!r} has train images of shape "
            f"{dataset.train_images.shape[1:]} but validation images of shape "
            f"{validation.shape[1:]}; every split needs the same image shape."
        )
    num_train = len(dataset.train_images)
    for field in ("classifier.batch_size", "vae.batch_size", "correct.batch_size"):
        section, name = field.split(".")
        if config[section][name] > num_train:
            raise InputError(
                f"config.{field}={config[section][name]} is larger than the "
                f"{num_train} training images of {dataset.name!r}; set it to at most "
                f"{num_train}."
            )
    if config.correct.get("lam_grid", ()) and (
        getattr(dataset, "validation_labels", None) is None
    ):
        raise InputError(
            f"config.correct.lam_grid={tuple(config.correct.lam_grid)!r} chooses lambda "
            f"on a validation split, but dataset {dataset.name!r} has none. A dataset "
            "passed to pipeline.run needs validation_images and validation_labels "
            "(config.dataset.validation_size only applies to datasets the pipeline "
            "loads); or set config.correct.lam_grid=() to use config.correct.lam."
        )


def check_classifier(
    apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, dataset: Any
) -> str:
    """Check a given classifier once, and return a digest of its params and outputs.

    `jax.jit(apply_fn)(params, images)` runs on the first five training images (an odd
    batch size, so code that assumes a batch size fails here) and must give finite
    float logits of shape [5, num_classes]. The digest covers the params and those
    logits, so a changed apply_fn with the same params still changes it.

    Raises:
        InputError: The call fails or its output is not such logits.
    """
    images = jax.numpy.asarray(dataset.train_images[:5])
    expected = (len(images), dataset.num_classes)
    try:
        logits = jax.jit(apply_fn)(params, images)
    except Exception as error:  # Any failure of user code is reported as bad input.
        raise InputError(
            f"The classifier's apply_fn failed under jax.jit on a batch of images of "
            f"shape {images.shape} (float32 in [0, 1], NHWC): "
            f"{type(error).__name__}: {error}"
        ) from error
    shape = getattr(logits, "shape", None)
    dtype = getattr(logits, "dtype", None)
    if shape != expected:
        raise InputError(
            f"The classifier returned logits of shape {shape} for {len(images)} images; "
            f"expected {expected}, one logit per class of {dataset.name!r}. Make "
            "apply_fn(params, images) return [batch, num_classes] logits."
        )
    if dtype is None or not jax.numpy.issubdtype(dtype, jax.numpy.floating):
        raise InputError(
            f"The classifier returned logits of dtype {dtype}; expected a floating "
            "dtype such as float32. Return logits, not predicted labels."
        )
    logits = np.asarray(logits)
    if not np.all(np.isfinite(logits)):
        raise InputError(
            "The classifier returned non-finite logits on the first training images; "
            "check its params."
        )
    return fingerprint(
        params_digest(params), hashlib.sha256(logits.tobytes()).hexdigest()
    )


def params_digest(params: Any) -> str:
    """Return a short hash of a params pytree: its paths, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.asarray(leaf)
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def dataset_digest(dataset: Any) -> str:
    """Return a short hash of a dataset's arrays, so changed data invalidates stages."""
    digest = hashlib.sha256()
    for array in (
        dataset.train_images,
        dataset.train_labels,
        dataset.test_images,
        dataset.test_labels,
    ):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    digest.update(json.dumps(list(dataset.class_names)).encode())
    return digest.hexdigest()[:16]


def validation_digest(dataset: Any) -> str | None:
    """Return a short hash of a dataset's validation split, or None without one.

    Only the choice of lambda reads the validation split, so this digest enters
    the correction stage's fingerprint rather than `dataset_digest`, and changing
    the split retrains nothing.
    """
    if getattr(dataset, "validation_labels", None) is None:
        return None
    digest = hashlib.sha256()
    for array in (dataset.validation_images, dataset.validation_labels):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def fingerprint(*parts: Any) -> str:
    """Return a short stable hash of JSON-serialisable parts (config sections, hashes)."""

    def to_plain(value):
        if isinstance(value, ml_collections.ConfigDict):
            return value.to_dict()
        return value

    text = json.dumps([to_plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
