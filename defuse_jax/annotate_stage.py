"""The annotation stage: one label, or none, for each region of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from defuse_jax import annotate
from defuse_jax import regions as regions_lib
from defuse_jax.identify import Flips

if TYPE_CHECKING:
    from defuse_jax.pipeline import _Run


def annotate_regions(
    run: _Run,
    regions: regions_lib.Regions,
    region_ids: np.ndarray,
    flips: Flips,
    mixture: dict[str, np.ndarray],
    generator_params: Any,
    run_id: str,
) -> annotate.Annotation:
    """Label each region with `config.annotate.annotator`.

    Args:
        run: The run's state (config, dataset, generator, classifier apply_fn, keys).
        regions: The regions, R rows.
        region_ids: [R] the regions' stable ids, as in report.json and annotation files.
        flips: The flips the regions were fitted to.
        mixture: The mixture stage's arrays ("assignments": each flip's component).
        generator_params: The VAE's params, to decode region samples.
        run_id: Id of this run's regions; an annotation file must carry the same one.
    """
    del generator_params, region_ids, run_id  # Used by the oracle and file annotators.
    config = run.config.annotate
    annotator = annotate.get_annotator(config.annotator)
    return annotate.reject_mixed(
        annotator(regions, flips, mixture["assignments"]),
        regions,
        config.min_source_purity,
    )
