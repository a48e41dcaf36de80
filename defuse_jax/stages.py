"""Pipeline stages after identification: distillation, regions, annotation, correction, report.

Each stage caches its outputs in the workdir under a fingerprint that chains the
fingerprints of the stages before it, so changing one config section recomputes that
stage and everything after it.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import (
    annotate,
    annotate_stage,
    correct_stage,
    distill,
    identify_stage,
    report,
    report_stage,
    search_again,
)
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import fingerprint, validation_digest
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
    "checkpoints/lambda_candidates",
    "progress/lambda_candidates",
)
# Workdir outputs of the search after correction.
_SEARCH_AGAIN_OUTPUTS = (
    "flips_after.npz",
    "mixture_after.npz",
    "regions_after.npz",
    "progress/flips_after.npz",
    "search_again",
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

    mixture_arrays, regions, regions_fingerprint = _distill_and_regions(
        run, outputs, flips, classifier_params, generator_params, search_fingerprint
    )
    # The run id names this set of regions. Annotation files carry it, so a file
    # exported from other regions is rejected.
    outputs["run_id"] = regions_fingerprint
    # Region ids that stay the same across runs in this workdir.
    registry = search_again.load_registry(run.workdir, regions.mean.shape[1])
    region_ids, registry = search_again.assign_ids(
        registry,
        regions.mean,
        regions.covariance,
        regions.source_label,
        max_distance=config.search_again.match_distance,
    )
    search_again.save_registry(run.workdir, registry)
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
            classifier_params,
        )
        if hasattr(annotation, "summary"):
            outputs["annotation"] = annotation.summary()
        else:
            outputs["annotation"] = {"annotator": annotation.source}
        outputs["annotation"].update(
            accepted=int(annotation.accepted.sum()),
            rejected=int((~annotation.accepted).sum()),
        )
        summary["output"] = (
            f"{outputs['annotation']['accepted']} labelled, "
            f"{outputs['annotation']['rejected']} not corrected, by {annotation.source}"
        )

    # Correction: lambda-mixed fine-tuning from the audited params, and the baseline.
    if annotation.accepted.any():
        grid = tuple(config.correct.get("lam_grid", ()))
        with run.stage(
            "correct",
            f"lambda chosen on validation from {list(grid)}"
            if grid
            else f"lambda {config.correct.lam}",
        ) as summary:
            # The labels and decisions decide correction, not the annotate config, so
            # two annotators that agree share one correction.
            decisions = getattr(annotation, "decision", annotation.accepted).tolist()
            correct_parts = [
                regions_fingerprint,
                annotation.label.tolist(),
                decisions,
                config.correct,
            ]
            # The validation split decides which candidate becomes the final params.
            # Runs without lambda selection keep their fingerprints unchanged.
            selection_parts = (
                [validation_digest(run.dataset)]
                if config.correct.get("lam_grid", ())
                else []
            )
            correct_fingerprint = fingerprint(*correct_parts, *selection_parts)
            # What one fine-tuning depends on, without the lambda and the selection
            # settings: the candidates of a lambda grid are reused when only those
            # change.
            tune = {
                name: config.correct[name]
                for name in (
                    "num_steps",
                    "batch_size",
                    "extra_batch_size",
                    "learning_rate",
                )
            }
            outputs["correction"], corrected_params = correct_stage.correct(
                run,
                regions,
                region_ids,
                annotation,
                flips,
                classifier_params,
                generator_params,
                {
                    "defuse": correct_fingerprint,
                    # The baseline trains on every flip with its source label, so
                    # the annotation never changes it.
                    "baseline": fingerprint(
                        "baseline", search_fingerprint, config.correct, *selection_parts
                    ),
                    "defuse_candidate": fingerprint(
                        regions_fingerprint, annotation.label.tolist(), decisions, tune
                    ),
                    "baseline_candidate": fingerprint(
                        "baseline", search_fingerprint, tune
                    ),
                },
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
        if config.search_again.enabled:
            _search_again(
                run,
                outputs,
                regions,
                region_ids,
                annotation,
                corrected_params,
                generator_params,
                fingerprint("search_again", correct_fingerprint, search_fingerprint),
            )
        else:
            workdir_lib.remove_stale(run.workdir, list(_SEARCH_AGAIN_OUTPUTS))
    else:
        message = "The annotator marked no region as fix, so nothing is corrected."
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


def _distill_and_regions(
    run: _Run,
    outputs: dict[str, Any],
    flips: Flips,
    classifier_params: Any,
    generator_params: Any,
    search_fingerprint: str,
    *,
    suffix: str = "",
) -> tuple[dict[str, np.ndarray], regions_lib.Regions, str]:
    """Fit the mixture to the flips and build its regions; cache both in the workdir.

    Args:
        suffix: Appended to the stage names and workdir files ("_after" for the
            search after correction).

    Returns:
        The mixture's arrays, the regions and the regions' fingerprint.
    """
    config = run.config
    # Distillation: a Dirichlet-process Gaussian mixture over the flips' codes.
    with run.stage(f"distill{suffix}", f"{flips.size} codes") as summary:
        distill_fingerprint = fingerprint(search_fingerprint, config.distill)
        mixture_arrays = workdir_lib.cached_arrays(
            run.workdir,
            f"mixture{suffix}",
            distill_fingerprint,
            lambda: _fit_mixture(run, flips),
        )
        outputs[f"distill{suffix}"] = {
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
    with run.stage(f"regions{suffix}") as summary:
        regions_fingerprint = fingerprint(distill_fingerprint, config.regions)
        regions = regions_lib.Regions(
            **workdir_lib.cached_arrays(
                run.workdir,
                f"regions{suffix}",
                regions_fingerprint,
                lambda: _build_regions(
                    run, mixture_arrays, flips, generator_params, classifier_params
                )._asdict(),
            )
        )
        summary["output"] = f"{regions.size} regions"
    return mixture_arrays, regions, regions_fingerprint


def _search_again(
    run: _Run,
    outputs: dict[str, Any],
    regions: regions_lib.Regions,
    region_ids: np.ndarray,
    annotation: annotate.Annotation,
    corrected_params: Any,
    generator_params: Any,
    stage_fingerprint: str,
) -> None:
    """Search the corrected classifier again and report which old regions closed.

    The search uses the identify config and key of the first search, and its flips are
    fitted with the same distill and regions config. Results go to
    `outputs["search_again"]`; grids of the regions that match no old region go to
    `search_again/region_II.png`.
    """
    config = run.config
    with run.stage("search_again", "identification on the corrected classifier"):
        search = identify_stage.search(
            run,
            generator_params,
            corrected_params,
            stage_fingerprint,
            name="flips_after",
        )
    flips = search.pop("flips")
    del search["source_rows"]
    latent_dim = regions.mean.shape[1]
    if flips.size >= 2:
        _, after, _ = _distill_and_regions(
            run,
            outputs,
            flips,
            corrected_params,
            generator_params,
            stage_fingerprint,
            suffix="_after",
        )
    else:
        logging.info(
            "search_again: %d flips, fewer than 2; no regions to fit.", flips.size
        )
        after = None
    new_means = np.zeros((0, latent_dim)) if after is None else after.mean
    new_covariances = (
        np.zeros((0, latent_dim, latent_dim)) if after is None else after.covariance
    )
    registry = search_again.load_registry(run.workdir, latent_dim)
    new_labels = np.zeros(0, np.int32) if after is None else after.source_label
    new_ids, registry = search_again.assign_ids(
        registry,
        new_means,
        new_covariances,
        new_labels,
        max_distance=config.search_again.match_distance,
    )
    search_again.save_registry(run.workdir, registry)
    distance = search_again.bhattacharyya_matrix(
        regions.mean, regions.covariance, new_means, new_covariances
    )
    same_label = regions.source_label[:, None] == new_labels[None, :]

    # Error rates on the correction stage's held-out samples of each corrected region.
    correction = outputs["correction"]

    def error_rates(name: str) -> list[float | None]:
        per_region = correction[name]["region_test_accuracy_per_region"]
        return [
            None if str(int(i)) not in per_region else 1.0 - per_region[str(int(i))]
            for i in region_ids
        ]

    records = search_again.region_status(
        old_ids=region_ids,
        corrected=annotation.accepted,
        error_rate_before=error_rates("before"),
        error_rate_after=error_rates("defuse"),
        distance=distance,
        same_label=same_label,
        new_ids=new_ids,
        match_distance=config.search_again.match_distance,
        max_closed_error_rate=config.search_again.max_closed_error_rate,
    )
    labelled = np.where(same_label, distance, np.inf)
    unmatched = (
        np.ones(len(new_ids), bool)
        if not regions.size
        else labelled.min(axis=0) > config.search_again.match_distance
    )
    new_records = _draw_new_regions(
        run, after, new_ids, unmatched, corrected_params, generator_params
    )
    closed = sum(record["status"] == search_again.CLOSED for record in records)
    persisting = sum(record["status"] == search_again.PERSISTING for record in records)
    outputs["search_again"] = {
        **search,
        "num_regions": len(new_ids),
        "match_distance": config.search_again.match_distance,
        "max_closed_error_rate": config.search_again.max_closed_error_rate,
        "corrected": int(annotation.accepted.sum()),
        "closed": closed,
        "persisting": persisting,
        "fraction_closed": closed / max(int(annotation.accepted.sum()), 1),
        "regions": records,
        "new_regions": new_records,
    }
    logging.info(
        "search_again: %d of %d corrected regions closed, %d persisting; %d flips and "
        "%d regions after correction, %d of them new.",
        closed,
        int(annotation.accepted.sum()),
        persisting,
        flips.size,
        len(new_ids),
        len(new_records),
    )


def _draw_new_regions(
    run: _Run,
    after: regions_lib.Regions | None,
    new_ids: np.ndarray,
    unmatched: np.ndarray,
    corrected_params: Any,
    generator_params: Any,
) -> list[dict[str, Any]]:
    """Draw a grid per region found after correction that matches no old region."""
    folder = os.path.join(run.workdir, "search_again")
    partial = os.path.join(run.workdir, ".search_again-partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    records = []
    rows = np.nonzero(unmatched)[0]
    if after is not None and len(rows):
        names = run.dataset.class_names
        count = run.config.report.samples_per_region
        codes = regions_lib.sample_codes(
            run.keys["search_again"],
            jnp.asarray(after.mean[rows]),
            jnp.asarray(after.covariance[rows]),
            tau=run.config.regions.tau,
            num_samples=count,
        )
        images, predicted = regions_lib.decode_and_classify(
            run.generator,
            generator_params,
            run.apply_fn,
            corrected_params,
            np.asarray(codes).reshape(-1, after.mean.shape[1]),
        )
        for index, row in enumerate(rows):
            region_id = int(new_ids[row])
            source = int(after.source_label[row])
            tiles = slice(index * count, (index + 1) * count)
            grid = os.path.join("search_again", f"region_{region_id:02d}.png")
            report.save_image_grid(
                os.path.join(partial, os.path.basename(grid)),
                images[tiles],
                [f"pred {names[p]}" for p in predicted[tiles]],
                title_colors=[
                    "red" if p != source else "black" for p in predicted[tiles]
                ],
                title=(
                    f"New region {region_id} after correction: {names[source]} → "
                    f"{names[after.predicted_label[row]]}, weight {after.weight[row]:.3f}, "
                    f"{after.member_count[row]} flips"
                ),
            )
            records.append(
                {
                    "region": region_id,
                    "source_label": source,
                    "predicted_label": int(after.predicted_label[row]),
                    "weight": float(after.weight[row]),
                    "member_count": int(after.member_count[row]),
                    "sample_error_rate": float(after.sample_error_rate[row]),
                    "grid": grid,
                }
            )
    workdir_lib.replace_folder(partial, folder)
    return records


def _skip_correction(
    run: _Run,
    outputs: dict[str, Any],
    message: str,
    extra_stale: list[str] | None = None,
) -> None:
    """Record why correction does not run, and delete correction outputs of older runs."""
    logging.warning(message)
    outputs["notes"].append(message)
    workdir_lib.remove_stale(
        run.workdir,
        [*(extra_stale or []), *_CORRECTION_OUTPUTS, *_SEARCH_AGAIN_OUTPUTS],
    )


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
