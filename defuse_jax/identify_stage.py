"""The identification stage: search a classifier for flips and cache them in the workdir."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from absl import logging

from defuse_jax import classifier, identify
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run


def search_split(run_state: _Run) -> tuple[np.ndarray, np.ndarray]:
    """Return the images and labels of the split that `config.identify.split` names."""
    dataset = run_state.dataset
    if run_state.config.identify.split == "train":
        return dataset.train_images, dataset.train_labels
    return dataset.test_images, dataset.test_labels


def search(
    run_state: _Run,
    generator_params: Any,
    classifier_params: Any,
    stage_fingerprint: str,
    *,
    name: str = "flips",
    key: jax.Array | None = None,
) -> dict[str, Any]:
    """Search the latent space around the split's correctly classified images.

    Args:
        run_state: The run.
        generator_params: The VAE's params.
        classifier_params: Params of the classifier to search.
        stage_fingerprint: Fingerprint of the search's inputs.
        name: Workdir name of the flips (`NAME.npz`) and of their progress file.
        key: PRNG key of the search; `run_state.keys["search"]` by default.

    Returns:
        The search's figures for report.json, with the `Flips` under "flips" and the
        searched rows of the split under "source_rows".
    """
    config = run_state.config.identify
    images, labels = search_split(run_state)
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
    progress_path = os.path.join(run_state.workdir, "progress", f"{name}.npz")

    def save_progress(num_done: int, flips: identify.Flips) -> None:
        workdir_lib.save_arrays(
            progress_path,
            stage_fingerprint,
            {"num_done": np.asarray(num_done), **flips._asdict()},
        )
        logging.info(
            "identify: saved progress after %d of %d images.",
            num_done,
            len(correct_rows),
        )

    def compute():
        resume = None
        stored = workdir_lib.load_arrays(progress_path, stage_fingerprint)
        if stored is not None:
            resume = (int(stored.pop("num_done")), identify.Flips(**stored))
        flips = identify.identify(
            generator_params,
            classifier_params,
            images[correct_rows],
            labels[correct_rows],
            run_state.keys["search"] if key is None else key,
            generator=run_state.generator,
            apply_fn=run_state.apply_fn,
            num_perturbations=config.num_perturbations,
            max_flips_per_image=config.max_flips_per_image,
            noise=noise,
            batch_size=config.batch_size,
            source_indices=correct_rows,
            resume=resume,
            on_progress=save_progress,
            progress_every=run_state.config.checkpoint.identify_every_batches,
        )
        return flips._asdict()

    arrays = workdir_lib.cached_arrays(
        run_state.workdir, name, stage_fingerprint, compute
    )
    workdir_lib.remove_progress(run_state.workdir, name)
    flips = identify.Flips(**arrays)
    images_with_flips = len(np.unique(flips.source_index))
    return {
        "flips": flips,
        "source_rows": correct_rows,
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
