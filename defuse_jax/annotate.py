"""Annotators: give each region one label, or reject it.

An annotator is any function `(regions, flips, assignments) -> Annotation`. The default
one labels each region with the majority source label of its members, standing in for a
person who looks at the region's samples and names the class they should belong to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from defuse_jax.identify import Flips
from defuse_jax.regions import Regions

REJECTED = -1


class Annotation(NamedTuple):
    """One label per region.

    label: [R] int32 class label, or REJECTED (-1) for a region the annotator rejects.
    source: Name of the annotator, recorded in the report.
    """

    label: np.ndarray
    source: str

    @property
    def accepted(self) -> np.ndarray:
        """[R] bool, True where the region has a label."""
        return self.label != REJECTED


Annotator = Callable[[Regions, Flips, np.ndarray], Annotation]


def majority_source_annotator(
    regions: Regions, flips: Flips, assignments: np.ndarray
) -> Annotation:
    """Label each region with the majority source label of its members."""
    del flips, assignments  # The majority is already a region statistic.
    return Annotation(
        label=regions.source_label.astype(np.int32), source="majority_source"
    )


ANNOTATORS: dict[str, Annotator] = {"majority_source": majority_source_annotator}


def reject_mixed(
    annotation: Annotation, regions: Regions, min_source_purity: float
) -> Annotation:
    """Reject every region whose members share a source label less than `min_source_purity`.

    A region that mixes many source classes has no single correct label, so an annotator
    would reject it.
    """
    mixed = np.asarray(regions.source_purity) < min_source_purity
    label = np.where(mixed, REJECTED, annotation.label).astype(np.int32)
    return annotation._replace(label=label)


def get_annotator(name: str) -> Annotator:
    """Return the annotator registered under `name`."""
    try:
        return ANNOTATORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown annotator {name!r}; use one of {sorted(ANNOTATORS)}."
        ) from None
