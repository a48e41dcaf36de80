"""Annotators: decide for each region whether to correct it, and with which label.

An annotator is a function `(regions, flips, assignments, **inputs) -> Annotation`. The
annotate stage (`annotate_stage.py`) passes the keyword inputs that the built-in
annotators need (settings from `config.annotate`, oracle votes, a filled annotation
file); an annotator that takes no keyword inputs can be registered in `ANNOTATORS`
as it is. The built-in annotators:

- "majority_source": the majority source label of each region's flips, standing in for
  a person who looks at the region's samples and names the class they belong to.
- "agreement": the same label, but "unsure" when too many flips have another source
  label.
- "oracle": the majority prediction of a stronger reference classifier on decoded
  region samples, and "not_a_bug" where that is the audited classifier's prediction.
- "file": the decisions a person wrote into the manifest of `experiments/annotate.py
  export` (read by `annotation_file.py`).

Every region gets a decision: "fix" (correct it with its label), "not_a_bug" (the
classifier is right), "unsure" (no single label; not corrected) or "unannotated" (an
annotation file has no decision for it; not corrected).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from defuse_jax.identify import Flips
from defuse_jax.regions import Regions

# The label of a region that is not corrected.
REJECTED = -1
# Decisions an annotation file may contain.
FILE_DECISIONS = ("fix", "not_a_bug", "unsure")
# Every decision an Annotation may contain.
DECISIONS = (*FILE_DECISIONS, "unannotated")


@dataclasses.dataclass(frozen=True, eq=False)
class Annotation:
    """A decision for each of R regions, and the label of those to fix.

    Only `label` and `source` are required. Without `decision`, a region with a label
    is "fix" and a region labelled REJECTED is "unsure", so annotators written before
    decisions existed keep working.

    Attributes:
        label: [R] int32 class label of each "fix" region, REJECTED (-1) elsewhere.
        source: Name of the annotator, recorded in the report.
        decision: [R] str, one of DECISIONS.
        label_source: [R] str, what decided each region: the annotator's name, or
            "min_source_purity" where `reject_mixed` overrode the annotator.
        details: Facts about the whole annotation for the report, such as the file
            read and the rows it skipped. JSON-serialisable.
        region_details: Per-region numbers for the report, each an [R] array, such
            as "source_disagreement" or "oracle_agreement".
        region_ids: [R] the regions' stable ids (report.json "region"); defaults to
            the row numbers.
    """

    label: np.ndarray
    source: str
    decision: np.ndarray | None = None
    label_source: np.ndarray | None = None
    details: dict[str, Any] | None = None
    region_details: dict[str, np.ndarray] | None = None
    region_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        label = np.asarray(self.label, np.int32).reshape(-1)
        size = len(label)
        if self.decision is None:
            decision = _strings(["fix" if v != REJECTED else "unsure" for v in label])
        else:
            decision = _strings(self.decision)
        label_source = _strings(
            [self.source] * size if self.label_source is None else self.label_source
        )
        region_ids = (
            np.arange(size, dtype=np.int32)
            if self.region_ids is None
            else np.asarray(self.region_ids, np.int32).reshape(-1)
        )
        region_details = {
            name: np.asarray(values).reshape(-1)
            for name, values in (self.region_details or {}).items()
        }
        lengths = {
            "decision": len(decision),
            "label_source": len(label_source),
            "region_ids": len(region_ids),
            **{f"region_details[{n!r}]": len(v) for n, v in region_details.items()},
        }
        for name, length in lengths.items():
            if length != size:
                raise ValueError(
                    f"Annotation.{name} has {length} entries for {size} labels; "
                    "give one per region."
                )
        _check_decisions(label, decision)

        object.__setattr__(self, "label", label)
        object.__setattr__(self, "decision", decision)
        object.__setattr__(self, "label_source", label_source)
        object.__setattr__(self, "details", dict(self.details or {}))
        object.__setattr__(self, "region_details", region_details)
        object.__setattr__(self, "region_ids", region_ids)

    @property
    def size(self) -> int:
        """Number of regions R."""
        return len(self.label)

    @property
    def accepted(self) -> np.ndarray:
        """[R] bool, True for the regions to correct (decision "fix")."""
        return self.decision == "fix"

    def replace(self, **changes: Any) -> Annotation:
        """Return a copy with the given fields changed."""
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict[str, Any]:
        """Return the annotation as a JSON-serialisable dict for report.json.

        "regions" has one entry per region in row order, with its label (None when not
        corrected), decision, what decided it, and its `region_details`.
        """
        regions = []
        for row in range(self.size):
            entry = {
                "region": int(self.region_ids[row]),
                "row": row,
                "label": int(self.label[row]) if self.accepted[row] else None,
                "decision": str(self.decision[row]),
                "label_source": str(self.label_source[row]),
            }
            for name, values in self.region_details.items():
                entry[name] = values[row].item()
            regions.append(entry)
        return {
            "annotator": self.source,
            "labels": self.label.tolist(),
            "accepted": int(self.accepted.sum()),
            "rejected": int((~self.accepted).sum()),
            "decisions": {
                decision: int(np.sum(self.decision == decision))
                for decision in DECISIONS
            },
            "regions": regions,
            "details": dict(self.details),
        }


def _strings(values: Any) -> np.ndarray:
    """Return values as a 1-D array of str, sized to the longest (also when empty)."""
    return np.asarray([str(v) for v in np.asarray(values).reshape(-1)], dtype=str)


def _check_decisions(label: np.ndarray, decision: np.ndarray) -> None:
    """Raise ValueError unless each decision is valid and only "fix" has a label."""
    unknown = sorted(set(decision.tolist()) - set(DECISIONS))
    if unknown:
        raise ValueError(
            f"Annotation decisions {unknown} are invalid; use {', '.join(DECISIONS)}."
        )
    fix = decision == "fix"
    if np.any(fix & (label < 0)):
        rows = np.nonzero(fix & (label < 0))[0].tolist()
        raise ValueError(f"Regions at rows {rows} are to be fixed but have no label.")
    if np.any(~fix & (label != REJECTED)):
        rows = np.nonzero(~fix & (label != REJECTED))[0].tolist()
        raise ValueError(
            f"Regions at rows {rows} have a label but a decision other than 'fix'. "
            f"Only regions to fix carry a label, the others have {REJECTED}."
        )


Annotator = Callable[..., Annotation]


def majority_source_annotator(
    regions: Regions, flips: Flips, assignments: np.ndarray
) -> Annotation:
    """Fix each region with the majority source label of its members."""
    del flips, assignments  # The majority is already a region statistic.
    return Annotation(
        label=regions.source_label.astype(np.int32), source="majority_source"
    )


def agreement_annotator(
    regions: Regions,
    flips: Flips,
    assignments: np.ndarray,
    *,
    max_disagreement: float = 0.3,
) -> Annotation:
    """Fix each region with its majority source label unless its members disagree.

    A region is "unsure" (not corrected) when the fraction of its members whose source
    label is not the majority one exceeds `max_disagreement`. That fraction is
    1 - `Regions.source_purity`, so the annotator marks the same regions as
    `reject_mixed` with min_source_purity = 1 - max_disagreement, except those
    exactly at the threshold, which stay "fix".
    """
    del flips, assignments  # Source purity is already a region statistic.
    disagreement = 1.0 - np.asarray(regions.source_purity, np.float64)
    # Purities are float32, so 7 of 10 members give 0.30000001; the tolerance keeps
    # a fraction equal to the threshold from counting as above it.
    unsure = disagreement > max_disagreement + 1e-6
    return Annotation(
        label=np.where(unsure, REJECTED, regions.source_label).astype(np.int32),
        source="agreement",
        decision=np.where(unsure, "unsure", "fix"),
        details={"max_disagreement": float(max_disagreement)},
        region_details={"source_disagreement": np.round(disagreement, 6)},
    )


def oracle_annotator(
    regions: Regions,
    flips: Flips,
    assignments: np.ndarray,
    *,
    votes: np.ndarray,
    audited_votes: np.ndarray | None = None,
    checkpoint: str = "",
) -> Annotation:
    """Label each region with the majority prediction of a reference classifier.

    A region whose oracle label equals the audited classifier's majority prediction on
    the same samples is "not_a_bug": the audited classifier already predicts the oracle's
    label, so the perturbation changed the class and fine-tuning would teach
    nothing.

    Args:
        regions: The regions, R rows.
        flips: Unused.
        assignments: Unused.
        votes: [R, S] the oracle's predicted label for S decoded samples per region.
        audited_votes: [R, S] the audited classifier's labels for the same samples.
            Without them, the members' majority predicted label stands in.
        checkpoint: Path of the oracle's params, recorded in `details`.
    """
    del flips, assignments  # The oracle judges fresh samples, not the flips.
    votes = np.asarray(votes, np.int64)
    if votes.ndim != 2 or votes.shape[0] != regions.size or votes.shape[1] == 0:
        raise ValueError(
            f"oracle votes have shape {votes.shape}; expected [{regions.size}, samples]."
        )
    # Ties go to the smaller label.
    oracle_label = np.array([int(np.argmax(np.bincount(row))) for row in votes])
    agreement = np.mean(votes == oracle_label[:, None], axis=1)
    if audited_votes is None:
        audited_label = np.asarray(regions.predicted_label)
    else:
        audited_votes = np.asarray(audited_votes, np.int64)
        if audited_votes.shape != votes.shape:
            raise ValueError(
                f"audited votes have shape {audited_votes.shape}; expected the oracle "
                f"votes' shape {votes.shape}."
            )
        audited_label = np.array(
            [int(np.argmax(np.bincount(row))) for row in audited_votes]
        )
    not_a_bug = oracle_label == audited_label
    return Annotation(
        label=np.where(not_a_bug, REJECTED, oracle_label).astype(np.int32),
        source="oracle",
        decision=np.where(not_a_bug, "not_a_bug", "fix"),
        details={"oracle_checkpoint": checkpoint, "oracle_samples": votes.shape[1]},
        region_details={
            "oracle_label": oracle_label.astype(np.int32),
            "audited_label": np.asarray(audited_label, np.int32),
            "oracle_agreement": np.round(agreement, 6),
        },
    )


class FileDecisions(NamedTuple):
    """The decisions of an annotation file, matched to a run's regions (R rows).

    label: [R] int32 label of each "fix" region, REJECTED elsewhere.
    decision: [R] str: "fix", "not_a_bug", "unsure", or "unannotated" for a region
        with no row, or a row with neither label nor decision.
    line: [R] int32 the file line (CSV) or entry index (JSON) of each region's row,
        -1 for a region without a row.
    written_label: [R] int32 the label written in each region's row, also next to
        "not_a_bug" or "unsure", -1 when empty.
    details: The file's path, rows read, rows skipped and regions missing from it.
    """

    label: np.ndarray
    decision: np.ndarray
    line: np.ndarray
    written_label: np.ndarray
    details: dict[str, Any]


def file_annotator(
    regions: Regions,
    flips: Flips,
    assignments: np.ndarray,
    *,
    file_decisions: FileDecisions,
) -> Annotation:
    """Take each region's decision from a filled annotation file, as written."""
    del flips, assignments
    if len(file_decisions.label) != regions.size:
        raise ValueError(
            f"The annotation file gives {len(file_decisions.label)} decisions for "
            f"{regions.size} regions."
        )
    return Annotation(
        label=file_decisions.label,
        source="file",
        decision=file_decisions.decision,
        details=file_decisions.details,
        region_details={
            "file_line": file_decisions.line,
            "written_label": file_decisions.written_label,
        },
    )


# Insertion order is the order that config errors list the annotators in.
ANNOTATORS: dict[str, Annotator] = {
    "majority_source": majority_source_annotator,
    "agreement": agreement_annotator,
    "oracle": oracle_annotator,
    "file": file_annotator,
}


def reject_mixed(
    annotation: Annotation, regions: Regions, min_source_purity: float
) -> Annotation:
    """Mark "unsure" every region to fix whose members share a source label too rarely.

    A region whose members have their majority source label less often than
    `min_source_purity` mixes several source classes, so no single label fits it.
    Such a region gets decision "unsure", no label, and label source
    "min_source_purity". Regions not marked "fix" keep their decision.
    """
    mixed = (np.asarray(regions.source_purity) < min_source_purity) & (
        annotation.accepted
    )
    if not mixed.any():
        return annotation
    return annotation.replace(
        label=np.where(mixed, REJECTED, annotation.label).astype(np.int32),
        decision=np.where(mixed, "unsure", annotation.decision),
        label_source=np.where(mixed, "min_source_purity", annotation.label_source),
        details={**annotation.details, "min_source_purity": float(min_source_purity)},
    )


def get_annotator(name: str) -> Annotator:
    """Return the annotator registered under `name`."""
    try:
        return ANNOTATORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown annotator {name!r}; use one of {', '.join(ANNOTATORS)}."
        ) from None
