"""The Defuse pipeline: run(config, workdir) trains, identifies, distils, corrects, reports.

This module and the stage functions it calls are the only code that reads and writes the
workdir. Each stage stores its outputs with a fingerprint of the config fields it depends
on and of the stages before it. A rerun reuses a stage whose fingerprint matches and
recomputes it otherwise.

Workdir layout:
    config.json                  the resolved config of the last run
    checkpoints/NAME/            orbax params (classifier, vae, corrected, baseline)
    checkpoints/NAME.json        the fingerprint of those params
    flips.npz, mixture.npz, regions.npz
    report.json, flips.png, regions/region_RR.png
    metrics/                     JSON lines and TensorBoard events of training
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from defuse_jax import (
    classifier,
    configuration,
    data,
    identify,
    models,
    report,
    stages,
    training,
    vae,
)
from defuse_jax import (
    regions as regions_lib,
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
}


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
        )
    except (ValueError, TypeError) as error:
        raise InputError(f"config.dataset: {error}") from error


def num_steps(model_config: ml_collections.ConfigDict, num_examples: int) -> int:
    """Optimiser steps for `model_config.num_epochs` epochs of full batches."""
    steps_per_epoch = max(num_examples // model_config.batch_size, 1)
    return max(round(model_config.num_epochs * steps_per_epoch), 1)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run every Defuse stage on `config` and write the outputs to `workdir`.

    Args:
        config: A config like experiments/configs/mnist5k.py.
        workdir: Output folder, created if missing. Stages whose outputs exist there with
            the same fingerprint are reused.

    Returns:
        The report, also written to `workdir/report.json`.

    Raises:
        InputError: A config value, the dataset name or path, or the dataset contents
            are invalid. Raised before any training starts.
    """
    configuration.validate_config(config)
    if not workdir:
        raise InputError("--workdir is empty; pass a folder for the run's outputs.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise InputError(f"--workdir={workdir!r} is a file; pass a folder instead.")
    dataset = load_dataset(config)
    configuration.validate_against_dataset(config, dataset)
    os.makedirs(workdir, exist_ok=True)
    report.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    root_key = jax.random.key(config.seed)
    cnn = models.CNN(
        dataset.num_classes,
        tuple(config.classifier.features),
        config.classifier.hidden_dim,
    )
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
        apply_fn=classifier.make_apply_fn(cnn),
        generator=vae.make_generator(vae_model),
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
        return _run_stages(state, cnn, vae_model)
    finally:
        state.writer.close()


def _run_stages(
    run_state: _Run, cnn: models.CNN, vae_model: models.VAE
) -> dict[str, Any]:
    config, dataset = run_state.config, run_state.dataset
    data_fingerprint = fingerprint(
        config.dataset, config.seed, configuration.dataset_digest(dataset)
    )

    # Classifier: the model under audit.
    num_train = len(dataset.train_images)
    with run_state.stage("classifier", f"{num_train} train images") as summary:
        clf_fingerprint = fingerprint(data_fingerprint, config.classifier)
        classifier_params = _train_classifier(run_state, cnn, clf_fingerprint)
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
        search = _identify(
            run_state, generator_params, classifier_params, search_fingerprint
        )
        flips = search.pop("flips")
        summary["output"] = (
            f"{flips.size} flips from {search['images_with_flips']} of "
            f"{search['searched_images']} searched images"
        )

    outputs: dict[str, Any] = {
        "classifier_test_accuracy": test_accuracy,
        "search": search,
    }
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
    state = classifier.create_state(
        cnn,
        run_state.apply_fn,
        run_state.keys["classifier"],
        dataset.image_shape,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        decay_steps=num_steps(config, len(dataset.train_images)),
    )

    def train():
        return training.train_loop(
            state,
            classifier.train_step,
            (dataset.train_images, dataset.train_labels),
            key=run_state.keys["classifier"],
            num_steps=num_steps(config, len(dataset.train_images)),
            batch_size=config.batch_size,
            name="classifier",
            writer=run_state.writer,
        ).params

    return workdir_lib.cached_params(
        run_state.workdir, "classifier", stage_fingerprint, state.params, train
    )


def _train_vae(run_state: _Run, vae_model: models.VAE, stage_fingerprint: str) -> Any:
    config, dataset = run_state.config.vae, run_state.dataset
    state = vae.create_state(
        vae_model,
        run_state.keys["vae"],
        learning_rate=config.learning_rate,
        likelihood=config.likelihood,
        gaussian_scale=config.gaussian_scale,
        beta=config.beta,
    )

    def train():
        return training.train_loop(
            state,
            vae.train_step,
            (dataset.train_images,),
            key=run_state.keys["vae"],
            num_steps=num_steps(config, len(dataset.train_images)),
            batch_size=config.batch_size,
            name="vae",
            writer=run_state.writer,
        ).params

    return workdir_lib.cached_params(
        run_state.workdir, "vae", stage_fingerprint, state.params, train
    )


def _identify(
    run_state: _Run,
    generator_params: Any,
    classifier_params: Any,
    stage_fingerprint: str,
) -> dict[str, Any]:
    config, dataset = run_state.config.identify, run_state.dataset
    if config.split == "train":
        images, labels = dataset.train_images, dataset.train_labels
    else:
        images, labels = dataset.test_images, dataset.test_labels
    predicted = classifier.predict(run_state.apply_fn, classifier_params, images)
    is_source = predicted == labels
    num_misclassified = int(np.sum(~is_source))
    num_bad_reconstructions = 0
    if config.require_correct_reconstruction:
        reconstructed = regions_lib.decode_and_classify(
            run_state.generator,
            generator_params,
            run_state.apply_fn,
            classifier_params,
            identify.encode_means(run_state.generator, generator_params, images),
        )[1]
        num_bad_reconstructions = int(np.sum(is_source & (reconstructed != labels)))
        is_source &= reconstructed == labels
    correct_rows = np.nonzero(is_source)[0].astype(np.int32)
    if config.max_source_images:
        correct_rows = correct_rows[: config.max_source_images]
    logging.info(
        "identify: searching %d %s images: %d of %d are misclassified and %d have a "
        "misclassified VAE reconstruction, so they are skipped.",
        len(correct_rows),
        config.split,
        num_misclassified,
        len(labels),
        num_bad_reconstructions,
    )
    noise = identify.NoiseConfig(config.noise, config.noise_scale, config.beta_a)

    def compute():
        flips = identify.identify(
            generator_params,
            classifier_params,
            images[correct_rows],
            labels[correct_rows],
            run_state.keys["search"],
            generator=run_state.generator,
            apply_fn=run_state.apply_fn,
            num_perturbations=config.num_perturbations,
            max_flips_per_image=config.max_flips_per_image,
            noise=noise,
            batch_size=config.batch_size,
            source_indices=correct_rows,
        )
        return flips._asdict()

    arrays = workdir_lib.cached_arrays(
        run_state.workdir, "flips", stage_fingerprint, compute
    )
    flips = identify.Flips(**arrays)
    images_with_flips = len(np.unique(flips.source_index))
    return {
        "flips": flips,
        "split": config.split,
        "split_size": len(labels),
        "note": (
            "Only source images that the classifier labels correctly are searched"
            + (
                ", and only those whose VAE reconstruction it also labels correctly."
                if config.require_correct_reconstruction
                else "."
            )
        ),
        "misclassified_skipped": num_misclassified,
        "bad_reconstruction_skipped": num_bad_reconstructions,
        "searched_images": len(correct_rows),
        "num_flips": flips.size,
        "images_with_flips": images_with_flips,
        "fraction_images_with_flips": images_with_flips / max(len(correct_rows), 1),
    }
