"""Pipeline stage after identification: the minimal flip radius of the source images.

For `config.radius.num_images` source images of the identify stage, evenly spaced over
them so that every class is represented, the stage
finds the smallest noise scale on a geometric grid at which one of
`config.radius.num_perturbations` perturbations flips the classifier's prediction
(`identify.minimal_radius`). It caches the radii in `radius.npz` and summarises them per
class for report.json. Its fingerprint chains the identify stage's, and no later stage
depends on it, so changing the `radius` section recomputes only this stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from defuse_jax import identify
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import fingerprint

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run

# Definition of the radius, written into report.json next to the numbers.
_NOTE = (
    "Per source image, the smallest noise scale (std per latent dimension) on the grid "
    "`scales` at which at least one of `num_perturbations` perturbations, the same "
    "directions at every scale, changes the classifier's prediction. median_radius is "
    "null when half or more of the images have no flip up to the largest scale."
)


def minimal_radius_stage(
    run: _Run,
    images: np.ndarray,
    labels: np.ndarray,
    source_rows: np.ndarray,
    generator_params: Any,
    classifier_params: Any,
    search_fingerprint: str,
) -> dict[str, Any] | None:
    """Compute or reuse the radius of `config.radius.num_images` spread source rows.

    Args:
        run: The pipeline's shared run state.
        images: [N, H, W, C] images of the split that identify searched.
        labels: [N] their labels.
        source_rows: [S] rows of `images` that identify searched, in search order.
        generator_params: VAE params.
        classifier_params: Classifier params.
        search_fingerprint: The identify stage's fingerprint.

    Returns:
        The report entry: noise kind, perturbation count, grid, and per-class median
        radius and fraction of images with no flip (`identify.radius_summary`). None
        when the stage is off (`num_images` is 0) or there are no source images, and
        then a radius.npz of an earlier run is deleted.
    """
    config = run.config.radius
    rows = _spread(np.asarray(source_rows, np.int32), config.num_images)
    if not len(rows):
        workdir_lib.remove_stale(run.workdir, ["radius.npz"])
        return None
    with run.stage("radius", f"{len(rows)} source images") as summary:
        entry = _radius_entry(
            run,
            images,
            labels,
            rows,
            generator_params,
            classifier_params,
            search_fingerprint,
        )
        overall = entry["all"]
        median = overall["median_radius"]
        median_text = "above the grid" if median is None else f"{median:.3g}"
        summary["output"] = (
            f"median radius {median_text}, {overall['fraction_no_flip']:.1%} of "
            f"images with no flip up to scale {config.largest:g}"
        )
    return entry


def _spread(source_rows: np.ndarray, count: int) -> np.ndarray:
    """Pick `count` source rows evenly spaced over all of them, in order.

    Datasets are often stored sorted by class, so the first rows would all come from
    one class; evenly spaced rows cover every class in proportion.
    """
    if len(source_rows) <= count:
        return source_rows
    picks = np.round(np.linspace(0, len(source_rows) - 1, count)).astype(int)
    return source_rows[picks]


def _radius_entry(
    run: _Run,
    images: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray,
    generator_params: Any,
    classifier_params: Any,
    search_fingerprint: str,
) -> dict[str, Any]:
    config = run.config.radius
    search_config = run.config.identify
    scales = identify.radius_scales(config.smallest, config.largest, config.steps)
    # The scale of the noise family is ignored: the grid sets it.
    noise = identify.NoiseConfig(search_config.noise, 1.0, search_config.beta_a)

    def compute() -> dict[str, np.ndarray]:
        radius = identify.minimal_radius(
            generator_params,
            classifier_params,
            images[rows],
            labels[rows],
            run.keys["radius"],
            generator=run.generator,
            apply_fn=run.apply_fn,
            num_perturbations=config.num_perturbations,
            scales=scales,
            noise=noise,
            batch_size=config.batch_size,
            source_indices=rows,
        )
        return {"radius": radius, "source_index": rows}

    # NOTE: unlike identify, this stage saves no progress, so a run killed during it
    # computes every radius again when it resumes.
    arrays = workdir_lib.cached_arrays(
        run.workdir, "radius", fingerprint(search_fingerprint, config), compute
    )
    summary = identify.radius_summary(
        arrays["radius"],
        labels[arrays["source_index"]],
        list(run.dataset.class_names),
        scales,
    )
    return {
        "note": _NOTE,
        "noise": search_config.noise,
        "beta_a": search_config.beta_a,
        "num_perturbations": config.num_perturbations,
        **summary,
    }
