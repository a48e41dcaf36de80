"""The report stage: image grids, plots and report.json for one run.

It redraws every image on each run from the stage outputs it is given, so a rerun with
another config never leaves images of the old one behind.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import annotate, report
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
    """Draw the report's images and write report.json; return the report.

    Args:
        region_ids: [R] stable id of each region row; grids are named by id.
    """
    if regions is not None and region_ids is None:
        region_ids = np.arange(regions.size, dtype=np.int32)
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
            # stands in the fingerprint field, so an export names the regions it shows.
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
            for r in range(regions.size):
                images = all_images[r * per_region : (r + 1) * per_region]
                predicted = all_predicted[r * per_region : (r + 1) * per_region]
                target = regions.source_label[r]
                label = None if annotation is None else int(annotation.label[r])
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
                        "region": region_id,
                        "row": r,
                        "component": int(regions.component[r]),
                        "weight": float(regions.weight[r]),
                        "member_count": int(regions.member_count[r]),
                        "source_label": int(target),
                        "source_purity": float(regions.source_purity[r]),
                        "predicted_label": int(regions.predicted_label[r]),
                        "predicted_purity": float(regions.predicted_purity[r]),
                        "sample_error_rate": float(regions.sample_error_rate[r]),
                        "annotated_label": label,
                        "grid": path,
                    }
                )
        _replace_folder(grids, os.path.join(run.workdir, "regions"))
        outputs["regions"] = region_records
        outputs["config"] = run.config.to_dict()
        outputs["seed"] = run.config.seed
        outputs["dataset"] = {
            "name": run.dataset.name,
            "num_train": len(run.dataset.train_images),
            "num_test": len(run.dataset.test_images),
            "num_classes": run.dataset.num_classes,
            "class_names": list(names),
            "image_shape": list(run.dataset.image_shape),
        }
        summary["output"] = f"{len(region_records)} region grids"
    progress = os.path.join(run.workdir, "progress")
    if os.path.isdir(progress) and not os.listdir(progress):
        os.rmdir(progress)
    outputs["stage_seconds"] = dict(run.durations)
    outputs["package_versions"] = workdir_lib.package_versions()
    report.write_json(os.path.join(run.workdir, "report.json"), outputs)
    logging.info("Wrote %s.", os.path.join(run.workdir, "report.json"))
    return outputs


def _replace_folder(new: str, target: str) -> None:
    """Move folder `new` to `target`, replacing what was there; delete `new` if empty."""
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
        os.rename(target, old)
    if os.listdir(new):
        os.rename(new, target)
    else:
        os.rmdir(new)
    shutil.rmtree(old, ignore_errors=True)
