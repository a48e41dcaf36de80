"""Pipeline stages after identification: distillation, regions, annotation, correction, report.

Each stage caches its outputs in the workdir under a fingerprint that chains the
fingerprints of the stages before it, so changing one config section recomputes that
stage and everything after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import (
    annotate,
    annotate_stage,
    classifier,
    correct,
    distill,
    report_stage,
)
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import fingerprint
from defuse_jax.identify import Flips

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run

# Workdir outputs of the correction stage, relative to the workdir.
_CORRECTION_OUTPUTS = (
    "checkpoints/corrected",
    "checkpoints/corrected.json",
    "checkpoints/baseline",
    "checkpoints/baseline.json",
    "progress/corrected",
    "progress/corrected.json",
    "progress/baseline",
    "progress/baseline.json",
)


def distill_correct_report(
    run: _Run,
    outputs: dict[str, Any],
    flips: Flips,
    classifier_params: Any,
    generator_params: Any,
    search_fingerprint: str,
) -> dict[str, Any]:
    """Run the stages after identification and write report.json; return the report."""
    config = run.config
    outputs["notes"] = []
    if flips.size < 2:
        message = (
            f"Identification found {flips.size} flips, fewer than the 2 needed to fit a "
            "mixture; no regions and no correction. Raise identify.noise_scale or "
            "identify.num_perturbations to search further."
        )
        _skip_correction(run, outputs, message, ["mixture.npz", "regions.npz"])
        return report_stage.write_report(
            run, outputs, flips, None, None, generator_params, classifier_params
        )

    # Distillation: a Dirichlet-process Gaussian mixture over the flips' codes.
    with run.stage("distill", f"{flips.size} codes") as summary:
        distill_fingerprint = fingerprint(search_fingerprint, config.distill)
        mixture_arrays = workdir_lib.cached_arrays(
            run.workdir,
            "mixture",
            distill_fingerprint,
            lambda: _fit_mixture(run, flips),
        )
        outputs["distill"] = {
            "num_codes": flips.size,
            "truncation": config.distill.truncation,
            "final_elbo": float(mixture_arrays["elbo_trace"][-1]),
            "weights": mixture_arrays["weights"],
            "num_regions": len(mixture_arrays["selected"]),
        }
        summary["output"] = (
            f"{int(np.sum(mixture_arrays['weights'] >= 0.01))} components with weight "
            f">= 0.01, {len(mixture_arrays['selected'])} kept as regions"
        )

    # Regions: statistics of the kept components from fresh samples.
    with run.stage("regions") as summary:
        regions_fingerprint = fingerprint(distill_fingerprint, config.regions)
        regions = regions_lib.Regions(
            **workdir_lib.cached_arrays(
                run.workdir,
                "regions",
                regions_fingerprint,
                lambda: _build_regions(
                    run, mixture_arrays, flips, generator_params, classifier_params
                )._asdict(),
            )
        )
        summary["output"] = f"{regions.size} regions"
    # The run id names this set of regions: annotation files carry it, so a file
    # exported from other regions is refused.
    outputs["run_id"] = regions_fingerprint
    # Region ids that stay the same across runs in this workdir.
    region_ids = np.arange(
        regions.size, dtype=np.int32
    )  # TODO(search-again): registry.
    if regions.size == 0:
        message = (
            f"No mixture component reached distill.min_weight={config.distill.min_weight} "
            f"and distill.min_region_size={config.distill.min_region_size}; no correction."
        )
        _skip_correction(run, outputs, message)
        return report_stage.write_report(
            run,
            outputs,
            flips,
            mixture_arrays,
            regions,
            generator_params,
            classifier_params,
            region_ids=region_ids,
        )

    # Annotation: one label per region, or a rejection.
    with run.stage("annotate", f"{regions.size} regions") as summary:
        annotation = annotate_stage.annotate_regions(
            run,
            regions,
            region_ids,
            flips,
            mixture_arrays,
            generator_params,
            outputs["run_id"],
        )
        outputs["annotation"] = {
            "annotator": annotation.source,
            "labels": annotation.label,
            "accepted": int(annotation.accepted.sum()),
            "rejected": int((~annotation.accepted).sum()),
        }
        summary["output"] = (
            f"{outputs['annotation']['accepted']} labelled, "
            f"{outputs['annotation']['rejected']} rejected by {annotation.source}"
        )

    # Correction: lambda-mixed fine-tuning from the audited params, and the baseline.
    if annotation.accepted.any():
        with run.stage("correct", f"lambda {config.correct.lam}") as summary:
            correct_fingerprint = fingerprint(
                regions_fingerprint,
                config.annotate,
                annotation.label.tolist(),
                config.correct,
            )
            outputs["correction"] = _correct(
                run,
                regions,
                annotation,
                flips,
                classifier_params,
                generator_params,
                correct_fingerprint,
            )
            result = outputs["correction"]
            summary["output"] = (
                "test accuracy {:.4f} -> {:.4f}, region test accuracy {:.4f} -> {:.4f}".format(
                    result["before"]["test_accuracy"],
                    result["defuse"]["test_accuracy"],
                    result["before"]["region_test_accuracy"],
                    result["defuse"]["region_test_accuracy"],
                )
            )
    else:
        message = "The annotator rejected every region; no correction."
        _skip_correction(run, outputs, message)
    return report_stage.write_report(
        run,
        outputs,
        flips,
        mixture_arrays,
        regions,
        generator_params,
        classifier_params,
        annotation,
        region_ids=region_ids,
    )


def _skip_correction(
    run: _Run,
    outputs: dict[str, Any],
    message: str,
    extra_stale: list[str] | None = None,
) -> None:
    """Record why correction does not run, and delete correction outputs of older runs."""
    logging.warning(message)
    outputs["notes"].append(message)
    workdir_lib.remove_stale(run.workdir, [*(extra_stale or []), *_CORRECTION_OUTPUTS])


def _fit_mixture(run: _Run, flips: Flips) -> dict[str, np.ndarray]:
    config = run.config.distill
    codes = jnp.asarray(flips.codes)
    num_classes = run.dataset.num_classes
    label_pair = (flips.source_label, flips.predicted_label)
    mixture = distill.fit_mixture(
        codes,
        run.keys["distill"],
        truncation=config.truncation,
        alpha=config.alpha,
        alpha_prior=(
            (config.alpha_prior_shape, config.alpha_prior_rate)
            if config.alpha_prior_shape > 0
            else None
        ),
        covariance_type=config.covariance_type,
        max_steps=config.max_steps,
        tolerance=config.tolerance,
        num_restarts=config.num_restarts,
        batch_size=config.batch_size or None,
        labels=(*label_pair, num_classes) if config.error_aware else None,
    )
    assignments = np.asarray(distill.assign(mixture, codes, label_pair))
    # Only components whose members share the majority confusion may merge.
    groups = -1 - np.arange(config.truncation)
    for component in np.unique(assignments):
        members = assignments == component
        source = np.bincount(flips.source_label[members], minlength=num_classes)
        predicted = np.bincount(flips.predicted_label[members], minlength=num_classes)
        groups[component] = int(np.argmax(source)) * num_classes + int(
            np.argmax(predicted)
        )
    merged, mapping = distill.merge_duplicates(
        mixture, max_distance=config.merge_distance, groups=groups
    )
    assignments = mapping[assignments]
    selected = distill.select_regions(
        merged,
        assignments,
        min_weight=config.min_weight,
        min_size=config.min_region_size,
    )
    arrays = {k: np.asarray(v) for k, v in merged._asdict().items()}
    arrays["assignments"] = np.asarray(assignments, np.int32)
    arrays["selected"] = np.asarray(selected, np.int32)
    arrays["merged_from"] = np.asarray(mapping, np.int32)
    return arrays


def _build_regions(
    run: _Run,
    mixture: dict[str, np.ndarray],
    flips: Flips,
    generator_params: Any,
    classifier_params: Any,
) -> regions_lib.Regions:
    return regions_lib.build_regions(
        run.keys["region_stats"],
        weights=mixture["weights"],
        means=mixture["means"],
        covariances=mixture["covariances"],
        selected=mixture["selected"],
        assignments=mixture["assignments"],
        flips=flips,
        num_classes=run.dataset.num_classes,
        generator=run.generator,
        generator_params=generator_params,
        apply_fn=run.apply_fn,
        classifier_params=classifier_params,
        tau=run.config.regions.tau,
        num_samples=run.config.regions.num_samples,
    )


def _region_test_set(
    run: _Run,
    regions: regions_lib.Regions,
    annotation: annotate.Annotation,
    generator_params: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out decoded samples of the accepted regions: images, labels, region rows."""
    accepted = np.nonzero(annotation.accepted)[0]
    count = run.config.correct.num_test_samples
    codes = regions_lib.sample_codes(
        run.keys["region_test"],
        jnp.asarray(regions.mean[accepted]),
        jnp.asarray(regions.covariance[accepted]),
        tau=run.config.regions.tau,
        num_samples=count,
    )
    images = regions_lib.decode_codes(
        run.generator,
        generator_params,
        np.asarray(codes).reshape(-1, regions.mean.shape[1]),
    )
    labels = np.repeat(annotation.label[accepted], count).astype(np.int32)
    rows = np.repeat(accepted, count).astype(np.int32)
    return images, labels, rows


def _evaluate(
    run: _Run,
    params: Any,
    region_images: np.ndarray,
    region_labels: np.ndarray,
    region_rows: np.ndarray,
) -> dict[str, Any]:
    predicted = classifier.predict(run.apply_fn, params, region_images)
    per_region = {
        int(r): float(
            np.mean(predicted[region_rows == r] == region_labels[region_rows == r])
        )
        for r in np.unique(region_rows)
    }
    return {
        "test_accuracy": classifier.accuracy(
            run.apply_fn, params, run.dataset.test_images, run.dataset.test_labels
        ),
        "region_test_accuracy": float(np.mean(predicted == region_labels)),
        "region_test_accuracy_per_region": per_region,
    }


def _correct(
    run: _Run,
    regions: regions_lib.Regions,
    annotation: annotate.Annotation,
    flips: Flips,
    classifier_params: Any,
    generator_params: Any,
    stage_fingerprint: str,
) -> dict[str, Any]:
    config, dataset = run.config.correct, run.dataset
    region_images, region_labels, region_rows = _region_test_set(
        run, regions, annotation, generator_params
    )
    accepted = np.nonzero(annotation.accepted)[0]
    common = {
        "lam": config.lam,
        "num_steps": config.num_steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "writer": run.writer,
        "checkpoint_every": run.config.checkpoint.every_steps,
    }

    def fine_tune_defuse(progress: str):
        data = correct.RegionSamplerData(
            generator_params=generator_params,
            means=jnp.asarray(regions.mean[accepted]),
            cholesky=correct.region_cholesky(
                regions.covariance[accepted], run.config.regions.tau
            ),
            labels=jnp.asarray(annotation.label[accepted]),
        )
        return correct.fine_tune(
            run.apply_fn,
            classifier_params,
            dataset.train_images,
            dataset.train_labels,
            sampler=correct.make_region_sampler(run.generator, config.extra_batch_size),
            extra_data=data,
            name="correct_defuse",
            key=run.keys["correct"],
            checkpoint_dir=progress,
            **common,
        )

    def fine_tune_baseline(progress: str):
        flip_images = regions_lib.decode_codes(
            run.generator, generator_params, flips.codes
        )
        return correct.fine_tune(
            run.apply_fn,
            classifier_params,
            dataset.train_images,
            dataset.train_labels,
            sampler=correct.make_pool_sampler(config.extra_batch_size),
            extra_data=(jnp.asarray(flip_images), jnp.asarray(flips.source_label)),
            name="correct_baseline",
            key=run.keys["baseline"],
            checkpoint_dir=progress,
            **common,
        )

    defuse_params = workdir_lib.cached_params(
        run.workdir, "corrected", stage_fingerprint, classifier_params, fine_tune_defuse
    )
    baseline_params = workdir_lib.cached_params(
        run.workdir,
        "baseline",
        stage_fingerprint,
        classifier_params,
        fine_tune_baseline,
    )
    result = {
        "lam": config.lam,
        "num_steps": config.num_steps,
        "region_test_size": len(region_labels),
        "before": _evaluate(
            run, classifier_params, region_images, region_labels, region_rows
        ),
        "defuse": _evaluate(
            run, defuse_params, region_images, region_labels, region_rows
        ),
        "finetune_on_flips_baseline": _evaluate(
            run, baseline_params, region_images, region_labels, region_rows
        ),
    }
    for name in ("before", "defuse", "finetune_on_flips_baseline"):
        logging.info(
            "Correction %s: test accuracy %.4f, region test accuracy %.4f.",
            name,
            result[name]["test_accuracy"],
            result[name]["region_test_accuracy"],
        )
    return result
