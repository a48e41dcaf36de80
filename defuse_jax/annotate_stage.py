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
    flips: Flips,
    mixture: dict[str, np.ndarray],
    generator_params: Any,
) -> annotate.Annotation:
    """Label each region with `config.annotate.annotator`."""
    del generator_params  # Used by annotators that look at decoded samples.
    config = run.config.annotate
    annotator = annotate.get_annotator(config.annotator)
    return annotate.reject_mixed(
        annotator(regions, flips, mixture["assignments"]),
        regions,
        config.min_source_purity,
    )
