"""The annotation stage: a decision, and a label to fix with, for each region of a run.

`check_inputs` checks the annotator's files (the annotation file, the oracle's
checkpoint) before training, and `annotate_regions` runs the annotator that
`config.annotate.annotator` names.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from defuse_jax import annotate, annotation_file, classifier, models, training
from defuse_jax import regions as regions_lib
from defuse_jax.configuration import InputError
from defuse_jax.identify import Flips

if TYPE_CHECKING:
    from defuse_jax.data import Dataset
    from defuse_jax.pipeline import _Run


def check_inputs(config: ml_collections.ConfigDict, dataset: Dataset) -> None:
    """Raise InputError when the chosen annotator's file or checkpoint is unusable.

    For "file", the annotation file must exist and each row must be valid on its own.
    Its run id and region ids are checked later, once the regions exist. For "oracle",
    the checkpoint must contain params of the configured oracle architecture.
    """
    name = config.annotate.annotator
    if name == "file":
        annotation_file.parse_file(config.annotate.file, tuple(dataset.class_names))
    elif name == "oracle":
        load_oracle(config, dataset.num_classes, dataset.image_shape)


def oracle_architecture(
    config: ml_collections.ConfigDict,
) -> tuple[tuple[int, ...], int]:
    """Return the oracle CNN's (features, hidden_dim), the classifier's where unset."""
    features = tuple(config.annotate.oracle_features) or tuple(
        config.classifier.features
    )
    hidden_dim = config.annotate.oracle_hidden_dim or config.classifier.hidden_dim
    return features, hidden_dim


def load_oracle(
    config: ml_collections.ConfigDict,
    num_classes: int,
    image_shape: tuple[int, int, int],
) -> tuple[classifier.ApplyFn, Any]:
    """Restore the oracle classifier from `config.annotate.oracle_checkpoint`.

    The checkpoint is an orbax params folder of `models.CNN`, such as the
    `checkpoints/classifier` folder of any defuse_jax workdir.

    Returns:
        The oracle's `apply_fn(params, images) -> logits` and its params.

    Raises:
        InputError: The folder is missing, or its params do not fit the architecture
            (`annotate.oracle_features`, `annotate.oracle_hidden_dim`, and the
            dataset's number of classes).
    """
    path = config.annotate.oracle_checkpoint
    if not os.path.isdir(path):
        raise InputError(
            f"config.annotate.oracle_checkpoint={path!r} is not a folder; pass the "
            "orbax params folder of a classifier, such as WORKDIR/checkpoints/classifier "
            "of another defuse_jax run."
        )
    features, hidden_dim = oracle_architecture(config)
    cnn = models.CNN(num_classes, features, hidden_dim)
    like = jax.eval_shape(
        lambda: cnn.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))[
            "params"
        ]
    )
    expected = _shapes(like)
    stored = _stored_shapes(path)
    if stored is not None and stored != expected:
        # Checked before restoring, because a failed orbax restore leaves unfinished
        # reads behind that raise later, at garbage collection.
        raise InputError(
            _mismatch_message(path, features, hidden_dim, num_classes, stored)
        )
    try:
        params = training.restore_params(path, like)
    except Exception as error:  # Orbax raises many types here.
        raise InputError(
            _mismatch_message(path, features, hidden_dim, num_classes, stored)
            + f" Restoring failed with {type(error).__name__}: "
            + (str(error).splitlines() or [""])[0]
        ) from error
    return classifier.make_apply_fn(cnn), params


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """Map each leaf's path, such as "['Dense_0']['kernel']", to its shape."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(key): tuple(leaf.shape) for key, leaf in leaves}


def _stored_shapes(path: str) -> dict[str, tuple[int, ...]] | None:
    """Return the leaf shapes of an orbax checkpoint, or None when unreadable."""
    try:
        metadata = ocp.StandardCheckpointer().metadata(os.path.abspath(path))
        return _shapes(metadata.item_metadata.tree)
    except Exception:  # noqa: BLE001 - restoring then reports the problem.
        return None


def _mismatch_message(
    path: str,
    features: tuple[int, ...],
    hidden_dim: int,
    num_classes: int,
    stored: dict[str, tuple[int, ...]] | None,
) -> str:
    message = (
        f"Cannot restore the oracle from config.annotate.oracle_checkpoint={path!r} "
        f"as a CNN with features {features}, hidden_dim {hidden_dim} and "
        f"{num_classes} classes."
    )
    try:
        convs = sorted(
            (k for k in stored if k.startswith("['Conv_") and k.endswith("['kernel']")),
            key=lambda k: int(re.search(r"Conv_(\d+)", k).group(1)),
        )
        stored_features = tuple(stored[k][-1] for k in convs)
        stored_hidden = stored["['Dense_0']['kernel']"][-1]
        stored_classes = stored["['Dense_1']['kernel']"][-1]
    except (KeyError, IndexError, TypeError, AttributeError):  # Not a CNN.
        if stored:
            names = sorted({key.split("]")[0] + "]" for key in stored})
            return message + (
                f" It is not a classifier checkpoint: its top-level params are "
                f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}. Pass the "
                "checkpoints/classifier folder of a defuse_jax workdir."
            )
        return message + (
            " It has no readable orbax metadata, so it is not a params checkpoint. "
            "Pass the checkpoints/classifier folder of a defuse_jax workdir, not its "
            "parent folder."
        )
    else:
        message += (
            f" The checkpoint contains a CNN with features {stored_features}, "
            f"hidden_dim {stored_hidden} and {stored_classes} classes."
        )
    return message + (
        " Set --config.annotate.oracle_features and --config.annotate.oracle_hidden_dim "
        "to its architecture; its number of classes must be the dataset's."
    )


def oracle_votes(
    run: _Run,
    regions: regions_lib.Regions,
    generator_params: Any,
    classifier_params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the oracle's and the audited classifier's predictions on region samples.

    Both classify the same decoded samples, drawn from N(mean, tau * covariance) with
    the "annotate" key, so a rerun draws the same ones.

    Returns:
        Oracle predictions [R, oracle_samples] and audited predictions of the same shape.
    """
    config = run.config
    apply_fn, params = load_oracle(
        config, run.dataset.num_classes, run.dataset.image_shape
    )
    count = config.annotate.oracle_samples
    codes = regions_lib.sample_codes(
        run.keys["annotate"],
        jnp.asarray(regions.mean),
        jnp.asarray(regions.covariance),
        tau=config.regions.tau,
        num_samples=count,
    )
    images = regions_lib.decode_codes(
        run.generator,
        generator_params,
        np.asarray(codes).reshape(-1, regions.mean.shape[1]),
    )
    oracle = classifier.predict(apply_fn, params, images)
    audited = classifier.predict(run.apply_fn, classifier_params, images)
    return (
        np.asarray(oracle).reshape(regions.size, count),
        np.asarray(audited).reshape(regions.size, count),
    )


def _annotator_inputs(
    run: _Run,
    regions: regions_lib.Regions,
    region_ids: np.ndarray,
    generator_params: Any,
    classifier_params: Any,
    run_id: str,
) -> dict[str, Any]:
    """Return the keyword inputs of the built-in annotator that the config names."""
    config = run.config.annotate
    if config.annotator == "agreement":
        return {"max_disagreement": config.max_disagreement}
    if config.annotator == "oracle":
        votes, audited_votes = oracle_votes(
            run, regions, generator_params, classifier_params
        )
        return {
            "votes": votes,
            "audited_votes": audited_votes,
            "checkpoint": os.path.abspath(config.oracle_checkpoint),
        }
    if config.annotator == "file":
        return {
            "file_decisions": annotation_file.read_file_decisions(
                config.file,
                tuple(run.dataset.class_names),
                run_id,
                region_ids,
                workdir=run.workdir,
            )
        }
    return {}


def annotate_regions(
    run: _Run,
    regions: regions_lib.Regions,
    region_ids: np.ndarray,
    flips: Flips,
    mixture: dict[str, np.ndarray],
    generator_params: Any,
    run_id: str,
    classifier_params: Any = None,
) -> annotate.Annotation:
    """Decide for each region with `config.annotate.annotator` whether to fix it.

    The automatic annotators' regions to fix whose source purity is below
    `config.annotate.min_source_purity` become "unsure". Decisions from an annotation
    file are kept as written.

    Args:
        run: The run's state (config, dataset, generator, classifier apply_fn, keys).
        regions: The regions, R rows.
        region_ids: [R] the regions' stable ids, as in report.json and annotation files.
        flips: The flips the regions were fitted to.
        mixture: The mixture stage's arrays ("assignments": each flip's component).
        generator_params: The VAE's params, to decode region samples for the oracle.
        run_id: Id of this run's regions; an annotation file must carry the same one.
        classifier_params: The audited classifier's params; the oracle annotator
            compares its predictions with the oracle's on the same samples.

    Raises:
        InputError: The annotation file does not match this run's regions, or the
            oracle checkpoint cannot be restored.
    """
    config = run.config.annotate
    annotator = annotate.get_annotator(config.annotator)
    inputs = _annotator_inputs(
        run, regions, region_ids, generator_params, classifier_params, run_id
    )
    annotation = annotator(regions, flips, mixture["assignments"], **inputs)
    if config.annotator != "file":
        annotation = annotate.reject_mixed(
            annotation, regions, config.min_source_purity
        )
    annotation = annotation.replace(region_ids=np.asarray(region_ids, np.int32))
    counts = annotation.summary()["decisions"]
    logging.info(
        "annotate: %s decided %s.",
        annotation.source,
        ", ".join(f"{count} {name}" for name, count in counts.items() if count),
    )
    if config.annotator == "file":
        details = annotation.details
        logging.info(
            "annotate: read %d rows of %s. Rows without label and decision, skipped: "
            "%d (%s). Regions without a row: %d (%s).",
            details["rows_read"],
            details["file"],
            details["rows_skipped"],
            ", ".join(details["skipped_rows"]) or "none",
            len(details["regions_without_row"]),
            ", ".join(map(str, details["regions_without_row"])) or "none",
        )
    return annotation
