"""The correction stage: fine-tune with Defuse and the baseline, choose lambda, score.

`correct` fine-tunes the audited classifier with Defuse's region samples and with the
finetune-on-flips baseline. When `correct.lam_grid` is set, it chooses each method's
lambda on the validation split, and the baseline's lambda at Defuse's fix. It scores
every classifier on the test set and on held-out samples of the corrected regions.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import annotate, classifier
from defuse_jax import correct as correct_lib
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import fingerprint
from defuse_jax.identify import Flips

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run


def _region_test_set(
    run: _Run,
    regions: regions_lib.Regions,
    annotation: annotate.Annotation,
    generator_params: Any,
    key_name: str = "region_test",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out decoded samples of the accepted regions: images, labels, region rows.

    `key_name` "region_test" draws the test samples, "region_validation" an
    independent set that chooses lambda.
    """
    accepted = np.nonzero(annotation.accepted)[0]
    count = run.config.correct.num_test_samples
    codes = regions_lib.sample_codes(
        run.keys[key_name],
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
    region_ids: np.ndarray,
) -> dict[str, Any]:
    predicted = classifier.predict(run.apply_fn, params, region_images)
    # Keyed by region id, as strings: JSON object keys are strings anyway.
    per_region = {
        str(int(region_ids[r])): float(
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


def correct(
    run: _Run,
    regions: regions_lib.Regions,
    region_ids: np.ndarray,
    annotation: annotate.Annotation,
    flips: Flips,
    classifier_params: Any,
    generator_params: Any,
    fingerprints: dict[str, str],
) -> tuple[dict[str, Any], Any]:
    """Fine-tune with Defuse and with the baseline; return the figures and Defuse params.

    `fingerprints` contains "defuse" and "baseline", the fingerprints of the final
    params, and "defuse_candidate" and "baseline_candidate", those of the params of
    one lambda of `correct.lam_grid` without the lambda.
    """
    config, dataset = run.config.correct, run.dataset
    region_images, region_labels, region_rows = _region_test_set(
        run, regions, annotation, generator_params
    )
    accepted = np.nonzero(annotation.accepted)[0]
    common = {
        "num_steps": config.num_steps,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "writer": run.writer,
        "checkpoint_every": run.config.checkpoint.every_steps,
    }

    def fine_tune_defuse(lam: float, progress: str):
        data = correct_lib.RegionSamplerData(
            generator_params=generator_params,
            means=jnp.asarray(regions.mean[accepted]),
            cholesky=correct_lib.region_cholesky(
                regions.covariance[accepted], run.config.regions.tau
            ),
            labels=jnp.asarray(annotation.label[accepted]),
        )
        return correct_lib.fine_tune(
            run.apply_fn,
            classifier_params,
            dataset.train_images,
            dataset.train_labels,
            sampler=correct_lib.make_region_sampler(
                run.generator, config.extra_batch_size
            ),
            extra_data=data,
            name=f"correct_defuse_lambda_{lam:g}",
            key=run.keys["correct"],
            checkpoint_dir=progress,
            lam=lam,
            **common,
        )

    def fine_tune_baseline(lam: float, progress: str):
        flip_images = regions_lib.decode_codes(
            run.generator, generator_params, flips.codes
        )
        return correct_lib.fine_tune(
            run.apply_fn,
            classifier_params,
            dataset.train_images,
            dataset.train_labels,
            sampler=correct_lib.make_pool_sampler(config.extra_batch_size),
            extra_data=(jnp.asarray(flip_images), jnp.asarray(flips.source_label)),
            name=f"correct_baseline_lambda_{lam:g}",
            key=run.keys["baseline"],
            checkpoint_dir=progress,
            lam=lam,
            **common,
        )

    fine_tunes = {"defuse": fine_tune_defuse, "baseline": fine_tune_baseline}
    grid = tuple(float(lam) for lam in config.get("lam_grid", ()))
    if grid:
        selection, chosen = _select_lambdas(
            run,
            regions,
            annotation,
            classifier_params,
            generator_params,
            grid,
            fine_tunes,
            fingerprints,
        )
        lams = {name: float(grid[index]) for name, (index, _) in chosen.items()}
        matched_params = chosen["baseline_matched"][1]

        def final_params(name: str):
            return lambda progress: chosen[name][1]
    else:
        selection, matched_params = None, None
        lams = {"defuse": float(config.lam), "baseline": float(config.lam)}

        def final_params(name: str):
            return functools.partial(fine_tunes[name], lams[name])

    defuse_params = workdir_lib.cached_params(
        run.workdir,
        "corrected",
        fingerprints["defuse"],
        classifier_params,
        final_params("defuse"),
    )
    baseline_params = workdir_lib.cached_params(
        run.workdir,
        "baseline",
        fingerprints["baseline"],
        classifier_params,
        final_params("baseline"),
    )
    result = {
        "lam": lams["defuse"],
        "baseline_lam": lams["baseline"],
        "num_steps": config.num_steps,
        "region_test_size": len(region_labels),
        "baseline_note": (
            "The finetune-on-flips baseline trains on every flip with its own source "
            "label and ignores the annotation. Every classifier is scored on the same "
            "held-out samples of the corrected regions, labelled with their annotation."
        ),
        "before": _evaluate(
            run,
            classifier_params,
            region_images,
            region_labels,
            region_rows,
            region_ids,
        ),
        "defuse": _evaluate(
            run, defuse_params, region_images, region_labels, region_rows, region_ids
        ),
        "finetune_on_flips_baseline": _evaluate(
            run,
            baseline_params,
            region_images,
            region_labels,
            region_rows,
            region_ids,
        ),
    }
    if selection is not None:
        result["lambda_selection"] = selection
        result["baseline_matched_lam"] = lams["baseline_matched"]
        result["matched_note"] = (
            "finetune_on_flips_matched is the baseline at the lambda of the grid where "
            "its validation region accuracy reaches Defuse's (or comes closest), so "
            "that test accuracy compares the cost of an equal fix."
        )
        result["finetune_on_flips_matched"] = _evaluate(
            run, matched_params, region_images, region_labels, region_rows, region_ids
        )
    for name in (
        "before",
        "defuse",
        "finetune_on_flips_baseline",
        "finetune_on_flips_matched",
    ):
        if name not in result:
            continue
        logging.info(
            "Correction %s: test accuracy %.4f, region test accuracy %.4f.",
            name,
            result[name]["test_accuracy"],
            result[name]["region_test_accuracy"],
        )
    return result, defuse_params


def _select_lambdas(
    run: _Run,
    regions: regions_lib.Regions,
    annotation: annotate.Annotation,
    classifier_params: Any,
    generator_params: Any,
    grid: tuple[float, ...],
    fine_tunes: dict[str, Any],
    fingerprints: dict[str, str],
) -> tuple[dict[str, Any], dict[str, tuple[int, Any]]]:
    """Fine-tune with every lambda of the grid and choose one per method on validation.

    Each method gets its own lambda by the rule of `defuse_jax.correct.select_lambda`, applied
    to the validation split and to validation samples of the corrected regions (a
    key other than the test samples'). The baseline also gets the lambda of
    `defuse_jax.correct.match_lambda` at Defuse's validation region accuracy ("baseline_matched").
    No test figure is read. Returns the selection record for report.json and, per
    method and for "baseline_matched", the chosen grid index and params.
    """
    dataset = run.dataset
    max_drop = float(run.config.correct.max_validation_drop)
    images, labels, _ = _region_test_set(
        run, regions, annotation, generator_params, key_name="region_validation"
    )

    def scores(params: Any) -> dict[str, float]:
        return {
            "validation_accuracy": classifier.accuracy(
                run.apply_fn,
                params,
                dataset.validation_images,
                dataset.validation_labels,
            ),
            "validation_region_accuracy": classifier.accuracy(
                run.apply_fn, params, images, labels
            ),
        }

    before = scores(classifier_params)
    selection: dict[str, Any] = {
        "grid": list(grid),
        "max_validation_drop": max_drop,
        "rule": (
            "Per method, the lambda with the highest validation region accuracy among "
            "those whose validation accuracy is at most max_validation_drop below the "
            "audited classifier's (the smallest lambda on a tie); if none is, the "
            "lambda with the highest validation accuracy."
        ),
        "validation_size": len(dataset.validation_labels),
        "validation_region_size": len(labels),
        "before": before,
    }
    chosen: dict[str, tuple[int, Any]] = {}
    candidate_params: dict[str, list[Any]] = {}
    for name, fine_tune in fine_tunes.items():
        rows, all_params = [], []
        for lam in grid:
            params = workdir_lib.cached_params(
                run.workdir,
                f"lambda_candidates/{name}_{lam:g}",
                fingerprint(fingerprints[f"{name}_candidate"], lam),
                classifier_params,
                functools.partial(fine_tune, lam),
            )
            rows.append({"lam": lam, **scores(params)})
            all_params.append(params)
            logging.info(
                "Lambda selection, %s, lambda %g: validation accuracy %.4f (audited "
                "%.4f), validation region accuracy %.4f (audited %.4f).",
                name,
                lam,
                rows[-1]["validation_accuracy"],
                before["validation_accuracy"],
                rows[-1]["validation_region_accuracy"],
                before["validation_region_accuracy"],
            )
        index = correct_lib.select_lambda(
            grid,
            [row["validation_accuracy"] for row in rows],
            [row["validation_region_accuracy"] for row in rows],
            reference_accuracy=before["validation_accuracy"],
            max_drop=max_drop,
        )
        within = rows[index]["validation_accuracy"] >= (
            before["validation_accuracy"] - max_drop - 1e-9
        )
        if not within:
            logging.warning(
                "Lambda selection, %s: every lambda of %s lowers validation accuracy "
                "by more than correct.max_validation_drop=%g; using lambda %g, the one "
                "that lowers it least.",
                name,
                list(grid),
                max_drop,
                grid[index],
            )
        logging.info("Lambda selection, %s: chose lambda %g.", name, grid[index])
        selection[name] = {
            "lam": grid[index],
            "within_max_drop": bool(within),
            "candidates": rows,
        }
        chosen[name] = (index, all_params[index])
        candidate_params[name] = all_params
    # Score the baseline again at the lambda where it fixes as much as Defuse does on
    # validation, so that the two methods compare on what an equal fix costs.
    rows = selection["baseline"]["candidates"]
    target = selection["defuse"]["candidates"][chosen["defuse"][0]][
        "validation_region_accuracy"
    ]
    index = correct_lib.match_lambda(
        grid,
        [row["validation_accuracy"] for row in rows],
        [row["validation_region_accuracy"] for row in rows],
        target_region_accuracy=target,
    )
    reaches = rows[index]["validation_region_accuracy"] >= target - 1e-9
    logging.info(
        "Lambda selection, baseline matched to Defuse's validation region accuracy "
        "%.4f: chose lambda %g (%s).",
        target,
        grid[index],
        "it reaches it" if reaches else "none reaches it, so the closest one",
    )
    selection["baseline_matched"] = {
        "lam": grid[index],
        "target_region_accuracy": target,
        "reaches_target": bool(reaches),
        "rule": (
            "The baseline's lambda with the highest validation accuracy among those "
            "whose validation region accuracy reaches Defuse's at its chosen lambda; "
            "if none does, the one with the highest validation region accuracy."
        ),
    }
    chosen["baseline_matched"] = (index, candidate_params["baseline"][index])
    return selection, chosen
