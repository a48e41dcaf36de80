"""The Defuse pipeline: run(config, workdir) trains, identifies, distils, corrects, reports.

This module and the stage functions it calls are the only code that reads and writes the
workdir. Each stage stores its outputs with a fingerprint of the config fields it depends
on and of the stages before it. A rerun reuses a stage whose fingerprint matches and
recomputes it otherwise.

A run refuses a workdir written with other inputs (config, dataset or classifier)
unless `allow_config_change` is set. Training loops and the identification search save
progress under `progress/` as they go, so a killed run resumes where it stopped and ends
with the same outputs as an uninterrupted one.

Workdir layout:
    config.json                  the config and input digests of the last run
    checkpoints/NAME/            orbax params (classifier, vae, corrected, baseline)
    checkpoints/NAME.json        the fingerprint of those params
    progress/                    checkpoints of unfinished stages, deleted when they end
    flips.npz, radius.npz, mixture.npz, regions.npz
    region_ids.json              every region seen here, so ids stay stable
    flips_after.npz, mixture_after.npz, regions_after.npz
                                 the search of the corrected classifier
    report.json, report.html, region_samples.npz, *.png, regions/region_II.png,
    search_again/region_II.png   the report and its images
    metrics/                     JSON lines and TensorBoard events of training
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from defuse_jax import (
    annotate_stage,
    classifier,
    configuration,
    data,
    identify_stage,
    models,
    radius_stage,
    stages,
    training,
    vae,
)
from defuse_jax import (
    workdir as workdir_lib,
)
from defuse_jax.configuration import InputError, fingerprint

# Fixed fold_in ids, so adding a stage never changes the keys of the others.
_KEY_IDS = {
    "classifier": 1,
    "vae": 2,
    "search": 3,
    "distill": 4,
    "region_stats": 5,
    "correct": 6,
    "baseline": 7,
    "region_test": 8,
    "report": 9,
    "radius": 10,
    "annotate": 11,
    "search_again": 12,
    "region_validation": 13,
}


class Classifier(NamedTuple):
    """A classifier to audit instead of the one the pipeline would train.

    apply_fn: `apply_fn(params, images [B, H, W, C] float32 in [0, 1]) -> logits
        [B, num_classes]`; it must be jittable.
    params: Its parameters. Correction fine-tunes a copy of them.
    """

    apply_fn: classifier.ApplyFn
    params: Any


@dataclasses.dataclass
class _Run:
    """State shared by every stage of one run."""

    config: ml_collections.ConfigDict
    dataset: data.Dataset
    workdir: str
    keys: dict[str, jax.Array]
    writer: training.MetricWriter
    apply_fn: classifier.ApplyFn
    generator: vae.Generator
    # False writes report.json only: no images and no report.html.
    draw_report: bool = True
    durations: dict[str, float] = dataclasses.field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str, inputs: str = "") -> Iterator[dict[str, str]]:
        """Log the start and end of a stage and record its duration.

        The stage may set `summary["output"]` to a description of its outputs, which the
        end line repeats.
        """
        logging.info("Stage %s: start%s.", name, f" ({inputs})" if inputs else "")
        start = time.perf_counter()
        summary: dict[str, str] = {}
        yield summary
        self.durations[name] = round(time.perf_counter() - start, 3)
        output = f" ({summary['output']})" if "output" in summary else ""
        logging.info("Stage %s: done in %.1f s%s.", name, self.durations[name], output)


def load_dataset(config: ml_collections.ConfigDict) -> data.Dataset:
    """Load `config.dataset`, raising InputError on a bad name, path or file."""
    try:
        return data.load_dataset(
            config.dataset.name,
            test_size=config.dataset.test_size,
            split_seed=config.dataset.split_seed,
            train_size=config.dataset.get("train_size", 0),
            validation_size=config.dataset.get("validation_size", 0),
            data_dir=config.dataset.get("data_dir", ""),
        )
    except (ValueError, TypeError) as error:
        raise InputError(f"config.dataset: {error}") from error


def num_steps(model_config: ml_collections.ConfigDict, num_examples: int) -> int:
    """Optimiser steps for `model_config.num_epochs` epochs of full batches."""
    steps_per_epoch = max(num_examples // model_config.batch_size, 1)
    return max(round(model_config.num_epochs * steps_per_epoch), 1)


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    allow_config_change: bool = False,
    dataset: data.Dataset | None = None,
    audited: Classifier | None = None,
    draw_report: bool = True,
) -> dict[str, Any]:
    """Run every Defuse stage on `config` and write the outputs to `workdir`.

    Args:
        config: A config like experiments/configs/mnist5k.py.
        workdir: Output folder, created if missing. Stages whose outputs exist there with
            the same fingerprint are reused, and unfinished stages resume.
        allow_config_change: Accept a workdir written with a different config, dataset
            or classifier, and recompute the stages that depend on what changed.
        dataset: Arrays to use instead of loading `config.dataset.name`.
        audited: A classifier to audit instead of training `config.classifier`.
        draw_report: False writes report.json only, without images or report.html;
            for sweeps that only need the numbers.

    Returns:
        The report, also written to `workdir/report.json`.

    Raises:
        InputError: A config value, the dataset, the classifier or the workdir is
            invalid. Raised before anything is written or trained.
        FloatingPointError: A training loss became non-finite; the message names the
            step, and the last good progress checkpoint is kept.
    """
    configuration.validate_config(config)
    if not workdir:
        raise InputError("--workdir is empty; pass a folder for the run's outputs.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise InputError(f"--workdir={workdir!r} is a file; pass a folder instead.")
    if dataset is None:
        dataset = load_dataset(config)
    else:
        _check_dataset(dataset)
    configuration.validate_against_dataset(config, dataset)
    # A bad annotation file or oracle checkpoint fails here, before anything is written.
    annotate_stage.check_inputs(config, dataset)
    cnn = models.CNN(
        dataset.num_classes,
        tuple(config.classifier.features),
        config.classifier.hidden_dim,
    )
    if audited is not None:
        audited_digest = configuration.check_classifier(
            audited.apply_fn, audited.params, dataset
        )
        classifier_record = f"given:{audited_digest}"
    else:
        classifier_record = "trained from config.classifier"
    record = {
        "config": config.to_dict(),
        "dataset": dataset.name,
        "dataset_digest": configuration.dataset_digest(dataset),
        "classifier": classifier_record,
    }
    changes = workdir_lib.check_workdir(
        workdir, record, allow_change=allow_config_change
    )
    workdir_lib.write_record(workdir, record, changes)
    root_key = jax.random.key(config.seed)
    vae_model = models.VAE(dataset.image_shape, config.vae.latent_dim)
    state = _Run(
        config=config,
        dataset=dataset,
        workdir=workdir,
        keys={name: jax.random.fold_in(root_key, i) for name, i in _KEY_IDS.items()},
        # One metrics folder per invocation, so reruns never interleave their series.
        writer=training.MetricWriter(
            os.path.join(
                workdir, "metrics", f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            )
        ),
        apply_fn=(
            classifier.make_apply_fn(cnn) if audited is None else audited.apply_fn
        ),
        generator=vae.make_generator(vae_model),
        draw_report=draw_report,
    )
    logging.info(
        "Dataset %s: %d train and %d test images of shape %s, %d classes.",
        dataset.name,
        len(dataset.train_images),
        len(dataset.test_images),
        dataset.image_shape,
        dataset.num_classes,
    )
    try:
        return _run_stages(state, cnn, vae_model, audited, record)
    finally:
        state.writer.close()


def _check_dataset(dataset: data.Dataset) -> None:
    """Raise InputError unless a dataset passed to `run` has valid arrays."""
    if not isinstance(dataset, data.Dataset):
        raise InputError(
            f"dataset is a {type(dataset).__name__}; pass a defuse_jax.data.Dataset."
        )
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        if not isinstance(getattr(dataset, field), np.ndarray):
            raise InputError(
                f"dataset.{field} is a {type(getattr(dataset, field)).__name__}; pass "
                "a numpy array (np.asarray converts it)."
            )
    if len(dataset.class_names) != dataset.num_classes:
        raise InputError(
            f"dataset.class_names has {len(dataset.class_names)} names for "
            f"dataset.num_classes={dataset.num_classes}; give one name per class."
        )
    if (dataset.validation_images is None) != (dataset.validation_labels is None):
        raise InputError(
            "dataset has only one of validation_images and validation_labels; give "
            "both, or neither for no validation split."
        )
    splits = ("train", "test") if dataset.validation_labels is None else (
        "train",
        "validation",
        "test",
    )
    for split in splits:
        try:
            data.validate_arrays(
                getattr(dataset, f"{split}_images"),
                getattr(dataset, f"{split}_labels"),
                dataset.num_classes,
                where=f"{split} split of {dataset.name}",
            )
        except (ValueError, TypeError) as error:
            raise InputError(f"dataset: {error}") from error


def _run_stages(
    run_state: _Run,
    cnn: models.CNN,
    vae_model: models.VAE,
    audited: Classifier | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    config, dataset = run_state.config, run_state.dataset
    data_fingerprint = fingerprint(
        config.dataset, config.seed, record["dataset_digest"]
    )

    # Classifier: the model under audit.
    num_train = len(dataset.train_images)
    with run_state.stage("classifier", f"{num_train} train images") as summary:
        if audited is None:
            clf_fingerprint = fingerprint(data_fingerprint, config.classifier)
            classifier_params = _train_classifier(run_state, cnn, clf_fingerprint)
        else:
            logging.info("Auditing the given classifier instead of training one.")
            clf_fingerprint = fingerprint(data_fingerprint, record["classifier"])
            classifier_params = audited.params
        test_accuracy = classifier.accuracy(
            run_state.apply_fn,
            classifier_params,
            dataset.test_images,
            dataset.test_labels,
        )
        summary["output"] = f"test accuracy {test_accuracy:.4f}"

    # VAE: the generator whose latent space is searched.
    with run_state.stage("vae", f"{num_train} train images"):
        vae_fingerprint = fingerprint(data_fingerprint, config.vae)
        generator_params = _train_vae(run_state, vae_model, vae_fingerprint)

    # Identification: perturb codes of correctly classified images, keep the flips.
    with run_state.stage("identify") as summary:
        search_fingerprint = fingerprint(
            clf_fingerprint, vae_fingerprint, config.identify
        )
        search = identify_stage.search(
            run_state, generator_params, classifier_params, search_fingerprint
        )
        flips = search.pop("flips")
        source_rows = search.pop("source_rows")
        summary["output"] = (
            f"{flips.size} flips from {search['images_with_flips']} of "
            f"{search['searched_images']} searched images"
        )

    outputs: dict[str, Any] = {
        "classifier_test_accuracy": test_accuracy,
        "search": search,
    }

    # Minimal flip radius of the first source images. No later stage reads it.
    images, labels = identify_stage.search_split(run_state)
    flip_radius = radius_stage.minimal_radius_stage(
        run_state,
        images,
        labels,
        source_rows,
        generator_params,
        classifier_params,
        search_fingerprint,
    )
    if flip_radius is not None:
        outputs["flip_radius"] = flip_radius

    return stages.distill_correct_report(
        run_state,
        outputs,
        flips,
        classifier_params,
        generator_params,
        search_fingerprint,
    )


def _train_classifier(run_state: _Run, cnn: models.CNN, stage_fingerprint: str) -> Any:
    config, dataset = run_state.config.classifier, run_state.dataset
    total_steps = num_steps(config, len(dataset.train_images))

    def create_state():
        return classifier.create_state(
            cnn,
            run_state.apply_fn,
            run_state.keys["classifier"],
            dataset.image_shape,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            decay_steps=total_steps,
        )

    def train(progress: str):
        return training.train_loop(
            create_state(),
            classifier.train_step,
            (dataset.train_images, dataset.train_labels),
            key=run_state.keys["classifier"],
            num_steps=total_steps,
            batch_size=config.batch_size,
            name="classifier",
            writer=run_state.writer,
            checkpoint_dir=progress,
            checkpoint_every=run_state.config.checkpoint.every_steps,
        ).params

    # Restoring needs only shapes, and initialising the CNN compiles for seconds.
    like = jax.eval_shape(lambda: create_state().params)
    return workdir_lib.cached_params(
        run_state.workdir, "classifier", stage_fingerprint, like, train
    )


def _train_vae(run_state: _Run, vae_model: models.VAE, stage_fingerprint: str) -> Any:
    config, dataset = run_state.config.vae, run_state.dataset

    def create_state():
        return vae.create_state(
            vae_model,
            run_state.keys["vae"],
            learning_rate=config.learning_rate,
            likelihood=config.likelihood,
            gaussian_scale=config.gaussian_scale,
            beta=config.beta,
        )

    def train(progress: str):
        return training.train_loop(
            create_state(),
            vae.train_step,
            (dataset.train_images,),
            key=run_state.keys["vae"],
            num_steps=num_steps(config, len(dataset.train_images)),
            batch_size=config.batch_size,
            name="vae",
            writer=run_state.writer,
            checkpoint_dir=progress,
            checkpoint_every=run_state.config.checkpoint.every_steps,
        ).params

    like = jax.eval_shape(lambda: create_state().params)
    return workdir_lib.cached_params(
        run_state.workdir, "vae", stage_fingerprint, like, train
    )
