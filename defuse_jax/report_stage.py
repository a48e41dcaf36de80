"""The report stage: image grids, plots, report.json and report.html for one run.

It redraws every image on each run from the stage outputs it is given, so a rerun with
another config never leaves images of the old one behind.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import annotate, classifier, html_report, identify, quality, report
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib
from defuse_jax.identify import Flips

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run


def write_report(
    run: _Run,
    outputs: dict[str, Any],
    flips: Flips,
    mixture: dict[str, np.ndarray] | None,
    regions: regions_lib.Regions | None,
    generator_params: Any,
    classifier_params: Any,
    annotation: annotate.Annotation | None = None,
    *,
    region_ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Draw the report's images, write report.json and report.html; return the report.

    A run with `draw_report` False writes report.json only, without what is measured
    on the drawn samples.

    Besides the grids and plots, it measures each region's novelty and realism (see
    `defuse_jax.quality`) and draws a PCA map of the latent space.

    Args:
        region_ids: [R] stable id of each region row; grids are named by id.
    """
    if regions is not None and region_ids is None:
        region_ids = np.arange(regions.size, dtype=np.int32)
    if not run.draw_report:
        return _write_figures_only(run, outputs, regions, annotation, region_ids)
    with run.stage("report") as summary:
        names = run.dataset.class_names
        config = run.config.report
        # The report redraws every image. Region grids go to a temporary folder that
        # replaces regions/ once complete, so grids of an earlier config (more regions)
        # never sit next to new ones and a kill never leaves a half-drawn folder.
        grids = os.path.join(run.workdir, ".regions-partial")
        shutil.rmtree(grids, ignore_errors=True)
        os.makedirs(grids)
        if os.path.exists(os.path.join(run.workdir, "flips.png")) and not flips.size:
            os.remove(os.path.join(run.workdir, "flips.png"))
        if flips.size:
            rng = np.random.default_rng(run.config.seed)
            rows = np.sort(
                rng.choice(
                    flips.size, min(config.num_flip_examples, flips.size), replace=False
                )
            )
            images = regions_lib.decode_codes(
                run.generator, generator_params, flips.codes[rows]
            )
            report.save_image_grid(
                os.path.join(run.workdir, "flips.png"),
                images,
                [
                    f"{names[s]}→{names[p]}"
                    for s, p in zip(
                        flips.source_label[rows], flips.predicted_label[rows]
                    )
                ],
                title="Random flips: source label → classifier prediction",
            )
        radius_plot = os.path.join(run.workdir, "flip_radius.png")
        if "flip_radius" in outputs:
            report.save_radius_plot(radius_plot, outputs["flip_radius"], names)
        elif os.path.exists(radius_plot):
            os.remove(radius_plot)
        needs_codes = config.map_points > 0 or (regions is not None and regions.size)
        training = (
            _training_codes(run, generator_params, classifier_params)
            if needs_codes
            else None
        )
        region_records = []
        samples_path = os.path.join(run.workdir, "region_samples.npz")
        if os.path.exists(samples_path):
            os.remove(samples_path)
        if regions is not None and regions.size:
            codes = regions_lib.sample_codes(
                run.keys["report"],
                jnp.asarray(regions.mean),
                jnp.asarray(regions.covariance),
                tau=run.config.regions.tau,
                num_samples=config.samples_per_region,
            )
            per_region = config.samples_per_region
            all_images, all_predicted = regions_lib.decode_and_classify(
                run.generator,
                generator_params,
                run.apply_fn,
                classifier_params,
                np.asarray(codes).reshape(-1, regions.mean.shape[1]),
            )
            # The samples drawn here, for `experiments/annotate.py export`; the run id
            # is stored in the fingerprint field, so an export names the regions it shows.
            workdir_lib.save_arrays(
                samples_path,
                outputs["run_id"],
                {
                    "region_id": np.repeat(region_ids, per_region).astype(np.int32),
                    "images": np.round(np.clip(all_images, 0, 1) * 255).astype(
                        np.uint8
                    ),
                    "predicted": np.asarray(all_predicted, np.int32),
                    "class_names": np.asarray(names),
                },
            )
            outputs["quality"] = _quality_summary(run, generator_params, training)
            sample_errors = quality.reconstruction_errors(
                run.generator, generator_params, all_images
            )
            codes = np.asarray(codes)
            for r in range(regions.size):
                rows = slice(r * per_region, (r + 1) * per_region)
                images, predicted = all_images[rows], all_predicted[rows]
                target = regions.source_label[r]
                region_id = int(region_ids[r])
                path = os.path.join("regions", f"region_{region_id:02d}.png")
                report.save_image_grid(
                    os.path.join(grids, os.path.basename(path)),
                    images,
                    [f"pred {names[p]}" for p in predicted],
                    title_colors=["red" if p != target else "black" for p in predicted],
                    title=(
                        f"Region {region_id}: {names[target]} → {names[regions.predicted_label[r]]}, "
                        f"weight {regions.weight[r]:.3f}, {regions.member_count[r]} flips, "
                        f"sample error {regions.sample_error_rate[r]:.2f}"
                    ),
                )
                region_records.append(
                    {
                        **region_record(regions, r, region_id, annotation),
                        "novelty": quality.region_novelty(
                            codes[r],
                            training.misclassified_codes,
                            outputs["quality"]["typical_nearest_distance"],
                        ),
                        "realism": quality.region_realism(
                            sample_errors[rows],
                            outputs["quality"]["test_reconstruction_error_median"],
                        ),
                        "grid": path,
                    }
                )
        workdir_lib.replace_folder(grids, os.path.join(run.workdir, "regions"))
        outputs["regions"] = region_records
        _draw_latent_map(run, outputs, training, flips, regions, region_ids)
        outputs["config"] = run.config.to_dict()
        outputs.update(run_fields(run))
        summary["output"] = f"{len(region_records)} region grids"
    progress = os.path.join(run.workdir, "progress")
    if os.path.isdir(progress) and not os.listdir(progress):
        os.rmdir(progress)
    outputs["stage_seconds"] = dict(run.durations)
    outputs["package_versions"] = workdir_lib.package_versions()
    text = report.json_text(outputs)
    report.atomic_write_bytes(
        os.path.join(run.workdir, "report.json"), (text + "\n").encode()
    )
    # The HTML is rendered from the JSON as written, so rendering it again from
    # report.json alone gives the same page.
    page = html_report.render_report(json.loads(text), run.workdir)
    report.atomic_write_bytes(os.path.join(run.workdir, "report.html"), page.encode())
    logging.info("Wrote %s and report.html.", os.path.join(run.workdir, "report.json"))
    return outputs


class _TrainingCodes(NamedTuple):
    """Latent means of the training images and what the classifier predicts for them.

    codes: [N, L] VAE encoder means.
    labels: [N] true labels.
    misclassified_codes: [K, L] the rows of `codes` whose image the classifier gets
        wrong.
    """

    codes: np.ndarray
    labels: np.ndarray
    misclassified_codes: np.ndarray


def _training_codes(
    run: _Run, generator_params: Any, classifier_params: Any
) -> _TrainingCodes:
    images, labels = run.dataset.train_images, run.dataset.train_labels
    codes = identify.encode_means(run.generator, generator_params, images)
    predicted = classifier.predict(run.apply_fn, classifier_params, images)
    return _TrainingCodes(
        codes=codes, labels=labels, misclassified_codes=codes[predicted != labels]
    )


def _quality_summary(
    run: _Run, generator_params: Any, training: _TrainingCodes
) -> dict[str, Any]:
    """Return the reference values that region novelty and realism are divided by."""
    notes = []
    typical = None
    if len(training.codes) >= 2:
        typical = quality.typical_nearest_distance(training.codes)
    else:
        notes.append("Novelty needs at least 2 training images for its unit distance.")
    if not len(training.misclassified_codes):
        notes.append(
            "The classifier misclassifies no training image, so novelty is undefined."
        )
    test_images = run.dataset.test_images
    test_median = None
    if len(test_images):
        test_median = float(
            np.median(
                quality.reconstruction_errors(
                    run.generator, generator_params, test_images
                )
            )
        )
    else:
        notes.append("Realism needs test images, and the test split is empty.")
    return {
        "novelty": (
            "Median distance from a region's samples to the latent code of the nearest "
            "misclassified training image, divided by the median distance from a "
            "training code to its nearest other training code."
        ),
        "realism": (
            "Median reconstruction error of a region's decoded samples, divided by the "
            "median reconstruction error of the test images. The error is the mean "
            "squared error per pixel, on the [0, 1] scale, of decode(encode_mean(x))."
        ),
        "train_images": len(training.codes),
        "misclassified_train_images": len(training.misclassified_codes),
        "typical_nearest_distance": typical,
        "test_images": len(test_images),
        "test_reconstruction_error_median": test_median,
        "notes": notes,
    }


def _write_figures_only(
    run: _Run,
    outputs: dict[str, Any],
    regions: regions_lib.Regions | None,
    annotation: annotate.Annotation | None,
    region_ids: np.ndarray | None,
) -> dict[str, Any]:
    """Write report.json with every figure that needs no drawing; return the report."""
    workdir_lib.remove_stale(
        run.workdir,
        [
            name
            for name in workdir_lib.REPORT_OUTPUTS
            if name not in ("report.json", "region_samples.npz")
        ],
        "this run draws no report",
    )
    if regions is not None:
        outputs["regions"] = [
            region_record(regions, row, int(region_ids[row]), annotation)
            for row in range(regions.size)
        ]
    outputs["config"] = run.config.to_dict()
    outputs.update(run_fields(run))
    outputs["stage_seconds"] = dict(run.durations)
    outputs["package_versions"] = workdir_lib.package_versions()
    report.write_json(os.path.join(run.workdir, "report.json"), outputs)
    return outputs


def region_record(
    regions: regions_lib.Regions,
    row: int,
    region_id: int,
    annotation: annotate.Annotation | None,
) -> dict[str, Any]:
    """Return the figures of one region that need no drawing, for report.json."""
    return {
        "region": int(region_id),
        "row": row,
        "component": int(regions.component[row]),
        "weight": float(regions.weight[row]),
        "member_count": int(regions.member_count[row]),
        "source_label": int(regions.source_label[row]),
        "source_purity": float(regions.source_purity[row]),
        "predicted_label": int(regions.predicted_label[row]),
        "predicted_purity": float(regions.predicted_purity[row]),
        "sample_error_rate": float(regions.sample_error_rate[row]),
        **_annotation_fields(annotation, row),
    }


def run_fields(run: _Run) -> dict[str, Any]:
    """Return the seed and the dataset description that report.json records."""
    return {
        "seed": run.config.seed,
        "dataset": {
            "name": run.dataset.name,
            "num_train": len(run.dataset.train_images),
            "num_test": len(run.dataset.test_images),
            "num_classes": run.dataset.num_classes,
            "class_names": list(run.dataset.class_names),
            "image_shape": list(run.dataset.image_shape),
        },
    }


def _annotation_fields(
    annotation: annotate.Annotation | None, row: int
) -> dict[str, Any]:
    """Return a region record's annotation fields; None where the run has no annotation."""
    if annotation is None:
        return {
            "annotated_label": None,
            "decision": None,
            "label_source": None,
            "corrected": False,
        }
    # NOTE: Annotations written before `decision` and `label_source` existed have
    # only labels; their decision is None and their label source is the annotator.
    decisions = getattr(annotation, "decision", None)
    label_sources = getattr(annotation, "label_source", None)
    return {
        "annotated_label": int(annotation.label[row]),
        "decision": None if decisions is None else str(decisions[row]),
        "label_source": (
            annotation.source if label_sources is None else str(label_sources[row])
        ),
        "corrected": bool(annotation.accepted[row]),
    }


def _draw_latent_map(
    run: _Run,
    outputs: dict[str, Any],
    training: _TrainingCodes | None,
    flips: Flips,
    regions: regions_lib.Regions | None,
    region_ids: np.ndarray | None,
) -> None:
    """Draw latent_map.png from at most `config.report.map_points` training codes."""
    path = os.path.join(run.workdir, "latent_map.png")
    limit = run.config.report.map_points
    if training is None or limit == 0 or len(training.codes) < 2:
        outputs.pop("latent_map", None)
        if os.path.exists(path):
            os.remove(path)
        return
    rng = np.random.default_rng(run.config.seed)
    train_rows = _subsample(rng, len(training.codes), limit)
    flip_rows = _subsample(rng, flips.size, limit)
    has_regions = regions is not None and regions.size > 0
    ratios = report.save_latent_map(
        path,
        training.codes[train_rows],
        training.labels[train_rows],
        flips.codes[flip_rows],
        regions.mean if has_regions else np.zeros((0, training.codes.shape[1])),
        [int(i) for i in region_ids] if has_regions else [],
        run.dataset.class_names,
    )
    outputs["latent_map"] = {
        "path": "latent_map.png",
        "method": "PCA fitted on the drawn training codes",
        "train_points": len(train_rows),
        "flip_points": len(flip_rows),
        "explained_variance_ratio": ratios,
    }


def _subsample(rng: np.random.Generator, count: int, limit: int) -> np.ndarray:
    """Return at most `limit` sorted distinct rows of `range(count)`, drawn by `rng`."""
    if count <= limit:
        return np.arange(count)
    return np.sort(rng.choice(count, limit, replace=False))
