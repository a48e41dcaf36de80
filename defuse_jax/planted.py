"""A planted bug: mislabel one known sub-style of a class, then score Defuse's regions.

On real data the bugs of a classifier are unknown, so whether Defuse found them
cannot be checked. A planted bug is a known one to look for. `plant_bug` picks the
light images of one class, those whose mean pixel intensity ("ink") is in the
lowest `quantile` of that class's train images (for MNIST 7s: thin, short or faint
7s), and relabels a random `fraction` of them as another class. A classifier
trained on these labels learns to confuse that sub-style. `score_regions` then
measures, for each region, how many of its member flips come from images of the
sub-style (precision) and how many of the sub-style's flips it holds (recall).

    bug = planted.plant_bug(dataset, source_class=7, target_class=1)
    outputs = pipeline.run(config, workdir, dataset=bug.dataset)
    ...
    scores = planted.score_regions(bug.style[flips.source_index],
                                   mixture["assignments"], regions.component)

Only the train split is relabelled. The test split keeps its true labels, and
`style_mask` finds the same sub-style there with the train split's threshold.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from defuse_jax.data import Dataset


class PlantedBug(NamedTuple):
    """A dataset with a planted bug, and what was planted.

    Attributes:
      dataset: The dataset with relabelled train images; its test split is unchanged.
      true_train_labels: [N] the train labels before relabelling.
      style: [N] True for the train images of the sub-style: true label
        `source_class` and ink at most `threshold`.
      relabelled: [N] True for the train images now labelled `target_class`.
      threshold: The ink threshold of the sub-style.
      source_class: The class whose light images form the sub-style.
      target_class: The label that the relabelled images carry.
    """

    dataset: Dataset
    true_train_labels: np.ndarray
    style: np.ndarray
    relabelled: np.ndarray
    threshold: float
    source_class: int
    target_class: int


def ink(images: np.ndarray) -> np.ndarray:
    """Mean pixel intensity of each image in [N, H, W, C] images, as [N] floats."""
    images = np.asarray(images, np.float32)
    return images.reshape(len(images), -1).mean(axis=1)


def style_mask(
    images: np.ndarray, labels: np.ndarray, *, source_class: int, threshold: float
) -> np.ndarray:
    """[N] True for images of class `source_class` with ink at most `threshold`."""
    return (np.asarray(labels) == source_class) & (ink(images) <= threshold)


def plant_bug(
    dataset: Dataset,
    *,
    source_class: int = 7,
    target_class: int = 1,
    quantile: float = 0.4,
    fraction: float = 0.5,
    seed: int = 0,
) -> PlantedBug:
    """Relabel a `fraction` of the lightest `quantile` of `source_class` train images.

    A validation split is held out of the same collected data, so the same fraction
    of its sub-style images is relabelled too, with the train split's threshold.

    Args:
      dataset: The dataset to plant the bug in.
      source_class: The class whose light images form the sub-style.
      target_class: Their new label.
      quantile: The sub-style is the images of `source_class` whose ink is at most
        this quantile of the ink of that class's train images, in (0, 1).
      fraction: The fraction of the sub-style relabelled, in [0, 1]. 0 plants
        nothing, which gives a control run with the same sub-style.
      seed: Seed of the choice of the relabelled images.

    Returns:
      The planted dataset and what was planted.

    Raises:
      ValueError: If a class is out of range, the two classes are equal, or
        `quantile` or `fraction` is out of range.
    """
    num_classes = dataset.num_classes
    for name, value in (("source_class", source_class), ("target_class", target_class)):
        if not 0 <= value < num_classes:
            raise ValueError(
                f"{name}={value} is not a class of {dataset.name}; pass a label from "
                f"0 to {num_classes - 1}."
            )
    if source_class == target_class:
        raise ValueError(
            f"source_class and target_class are both {source_class}; relabelling a "
            "class as itself plants nothing, so pass two different classes."
        )
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile={quantile} must lie in (0, 1), such as 0.4.")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in [0, 1], such as 0.5.")

    labels = np.asarray(dataset.train_labels)
    of_class = labels == source_class
    if not of_class.any():
        raise ValueError(
            f"No image of class {source_class} found in the train split of "
            f"{dataset.name}; pick another source_class."
        )
    threshold = float(np.quantile(ink(dataset.train_images[of_class]), quantile))
    style = style_mask(
        dataset.train_images, labels, source_class=source_class, threshold=threshold
    )
    rows = np.nonzero(style)[0]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(rows, size=round(fraction * len(rows)), replace=False)
    relabelled = np.zeros(len(labels), bool)
    relabelled[chosen] = True
    new_labels = labels.copy()
    new_labels[relabelled] = target_class
    planted = dataset._replace(
        name=(
            f"{dataset.name}+planted({source_class}->{target_class}, "
            f"quantile {quantile:g}, fraction {fraction:g}, seed {seed})"
        ),
        train_labels=new_labels.astype(np.int32),
    )
    if dataset.validation_labels is not None:
        # Drawn after the train choice, so the train choice of a seed stays the same
        # with or without a validation split.
        validation_labels = np.asarray(dataset.validation_labels)
        validation_rows = np.nonzero(
            style_mask(
                dataset.validation_images,
                validation_labels,
                source_class=source_class,
                threshold=threshold,
            )
        )[0]
        validation_chosen = rng.choice(
            validation_rows,
            size=round(fraction * len(validation_rows)),
            replace=False,
        )
        new_validation_labels = validation_labels.copy()
        new_validation_labels[validation_chosen] = target_class
        planted = planted._replace(
            validation_labels=new_validation_labels.astype(np.int32)
        )
    return PlantedBug(
        dataset=planted,
        true_train_labels=labels,
        style=style,
        relabelled=relabelled,
        threshold=threshold,
        source_class=source_class,
        target_class=target_class,
    )


def score_regions(
    flip_is_style: np.ndarray,
    assignments: np.ndarray,
    components: np.ndarray,
) -> list[dict[str, Any]]:
    """Precision and recall of the sub-style among each region's member flips.

    Args:
      flip_is_style: [M] True for the flips whose source image is of the sub-style.
      assignments: [M] the mixture component of each flip.
      components: [R] the component of each region.

    Returns:
      One dict per region, in region order: its row, its member count, how many
      members are of the sub-style, precision (that count over the members) and
      recall (that count over all flips of the sub-style).
    """
    flip_is_style = np.asarray(flip_is_style, bool)
    assignments = np.asarray(assignments)
    if flip_is_style.shape != assignments.shape:
        raise ValueError(
            f"flip_is_style has shape {flip_is_style.shape} but assignments "
            f"{assignments.shape}; pass one entry per flip in both."
        )
    total = int(flip_is_style.sum())
    scores = []
    for row, component in enumerate(np.asarray(components)):
        members = assignments == component
        hits = int((members & flip_is_style).sum())
        count = int(members.sum())
        scores.append(
            {
                "row": row,
                "members": count,
                "style_members": hits,
                "precision": hits / count if count else 0.0,
                "recall": hits / total if total else 0.0,
            }
        )
    return scores
