"""Region ids that stay stable across runs, and matching regions before and after correction.

A region is a Gaussian in latent space plus the class its flips came from (the
majority source label). Two regions are "the same" when they have the same source label
and the Bhattacharyya distance between their Gaussians is small. The label matters:
flips gather where the VAE decodes ambiguous images, so after correction a region of
another class's flips (3 -> 8 where 2 -> 0 was) can sit on the same spot, and that is a
different bug. This module uses the match for two things:

- Stable ids. Every region a workdir has seen is stored in `region_ids.json` with its
  id and Gaussian. When a run fits regions again (another distill config, or the search
  after correction), each region takes the id of the nearest stored region within the
  match distance, and the others take new ids. The same regions always get the same ids.
- Search again. After correction, the pipeline searches the corrected classifier with
  the same settings and key, fits regions to its flips, and matches them to the old
  regions. A corrected region is closed when no new region matches it and the corrected
  classifier labels its samples as annotated; otherwise it persists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from defuse_jax import report

REGISTRY_FILE = "region_ids.json"

CLOSED = "closed"
PERSISTING = "persisting"
NOT_CORRECTED = "not_corrected"


def bhattacharyya_matrix(
    means_a: np.ndarray,
    covariances_a: np.ndarray,
    means_b: np.ndarray,
    covariances_b: np.ndarray,
) -> np.ndarray:
    """Return the [A, B] Bhattacharyya distances between two sets of Gaussians.

    Args:
        means_a: [A, L] means.
        covariances_a: [A, L, L] covariances, positive definite.
        means_b: [B, L] means.
        covariances_b: [B, L, L] covariances, positive definite.
    """
    means_a, means_b = np.asarray(means_a, np.float64), np.asarray(means_b, np.float64)
    covariances_a = np.asarray(covariances_a, np.float64)
    covariances_b = np.asarray(covariances_b, np.float64)
    if means_a.shape[-1] != means_b.shape[-1]:
        raise ValueError(
            f"Cannot compare Gaussians of dimension {means_a.shape[-1]} and "
            f"{means_b.shape[-1]}; both sets need the same latent size."
        )
    average = 0.5 * (covariances_a[:, None] + covariances_b[None, :])
    difference = means_a[:, None] - means_b[None, :]
    solved = np.linalg.solve(average, difference[..., None])[..., 0]
    _, log_det_average = np.linalg.slogdet(average)
    _, log_det_a = np.linalg.slogdet(covariances_a)
    _, log_det_b = np.linalg.slogdet(covariances_b)
    return 0.125 * np.sum(difference * solved, axis=-1) + 0.5 * (
        log_det_average - 0.5 * (log_det_a[:, None] + log_det_b[None, :])
    )


def label_distance(
    means_a: np.ndarray,
    covariances_a: np.ndarray,
    labels_a: np.ndarray,
    means_b: np.ndarray,
    covariances_b: np.ndarray,
    labels_b: np.ndarray,
) -> np.ndarray:
    """[A, B] Bhattacharyya distances, infinite between regions of different labels."""
    distance = bhattacharyya_matrix(means_a, covariances_a, means_b, covariances_b)
    same = np.asarray(labels_a)[:, None] == np.asarray(labels_b)[None, :]
    return np.where(same, distance, np.inf)


def greedy_pairs(distance: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """Pair rows with columns one to one, closest first, up to `max_distance`.

    Returns:
        (row, column) pairs, each row and each column at most once, sorted by row.
    """
    rows, columns = np.nonzero(distance <= max_distance)
    order = np.lexsort((columns, rows, distance[rows, columns]))
    used_rows, used_columns, pairs = set(), set(), []
    for row, column in zip(rows[order], columns[order], strict=True):
        if row in used_rows or column in used_columns:
            continue
        used_rows.add(int(row))
        used_columns.add(int(column))
        pairs.append((int(row), int(column)))
    return sorted(pairs)


class Registry(NamedTuple):
    """Every region a workdir has seen: ids [E], Gaussians [E, L] and [E, L, L], and
    source labels [E]."""

    ids: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])


def empty_registry(latent_dim: int) -> Registry:
    return Registry(
        np.zeros(0, np.int32),
        np.zeros((0, latent_dim)),
        np.zeros((0, latent_dim, latent_dim)),
        np.zeros(0, np.int32),
    )


def assign_ids(
    registry: Registry,
    means: np.ndarray,
    covariances: np.ndarray,
    labels: np.ndarray,
    *,
    max_distance: float,
) -> tuple[np.ndarray, Registry]:
    """Give each region the id of its stored match, or a new id.

    A region matches a stored region with the same source label within Bhattacharyya
    distance `max_distance`; pairs are made closest first, one to one. Unmatched regions get ids above every
    stored id, in row order, and join the registry. Stored Gaussians never move, so a
    region drifting over many runs keeps being compared with where it was first seen.

    Returns:
        [R] int32 ids, and the registry with the new regions added.
    """
    ids = np.full(len(means), -1, np.int32)
    if registry.size and len(means):
        distance = label_distance(
            means,
            covariances,
            labels,
            registry.means,
            registry.covariances,
            registry.labels,
        )
        for row, entry in greedy_pairs(distance, max_distance):
            ids[row] = registry.ids[entry]
    new = np.nonzero(ids < 0)[0]
    first = int(registry.ids.max()) + 1 if registry.size else 0
    ids[new] = first + np.arange(len(new), dtype=np.int32)
    registry = Registry(
        np.concatenate([registry.ids, ids[new]]).astype(np.int32),
        np.concatenate([registry.means, np.asarray(means)[new]]),
        np.concatenate([registry.covariances, np.asarray(covariances)[new]]),
        np.concatenate([registry.labels, np.asarray(labels)[new]]).astype(np.int32),
    )
    return ids, registry


def load_registry(workdir: str, latent_dim: int) -> Registry:
    """Read `workdir/region_ids.json`; an absent, unreadable or other-size one is empty.

    An unreadable registry is logged: the regions then get ids from 0 again.
    """
    path = os.path.join(workdir, REGISTRY_FILE)
    if not os.path.exists(path):
        return empty_registry(latent_dim)
    try:
        with open(path, encoding="utf-8") as file:
            entries = json.load(file)["regions"]
        registry = Registry(
            np.asarray([entry["id"] for entry in entries], np.int32),
            np.asarray([entry["mean"] for entry in entries], np.float64),
            np.asarray([entry["covariance"] for entry in entries], np.float64),
            np.asarray([entry["source_label"] for entry in entries], np.int32),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        logging.warning(
            "Cannot read %s (%s); region ids start again from 0.", path, error
        )
        return empty_registry(latent_dim)
    if registry.size and registry.means.shape[1:] != (latent_dim,):
        logging.warning(
            "%s holds regions of another latent size; region ids start again from 0.",
            path,
        )
        return empty_registry(latent_dim)
    if not registry.size:
        return empty_registry(latent_dim)
    return registry


def save_registry(workdir: str, registry: Registry) -> None:
    """Write the registry to `workdir/region_ids.json`, atomically."""
    report.write_json(
        os.path.join(workdir, REGISTRY_FILE),
        {
            "note": (
                "Every region this workdir has seen, by id. A new region takes the id "
                "of the nearest region here with its source label, within "
                "search_again.match_distance."
            ),
            "regions": [
                {
                    "id": int(i),
                    "source_label": int(label),
                    "mean": mean.tolist(),
                    "covariance": cov.tolist(),
                }
                for i, mean, cov, label in zip(
                    registry.ids,
                    registry.means,
                    registry.covariances,
                    registry.labels,
                    strict=True,
                )
            ],
        },
    )


def region_status(
    *,
    old_ids: np.ndarray,
    corrected: np.ndarray,
    error_rate_before: Sequence[float | None],
    error_rate_after: Sequence[float | None],
    distance: np.ndarray,
    same_label: np.ndarray,
    new_ids: np.ndarray,
    match_distance: float,
    max_closed_error_rate: float,
) -> list[dict[str, Any]]:
    """Decide for each old region whether it is closed, persisting or not corrected.

    Args:
        old_ids: [R] ids of the regions found before correction.
        corrected: [R] bool, True for the regions correction trained on.
        error_rate_before: [R] fraction of held-out region samples the classifier
            labelled other than annotated, before correction (None if not corrected).
        error_rate_after: [R] the same after correction.
        distance: [R, N] Bhattacharyya distances to the N regions found after
            correction.
        same_label: [R, N] bool, True where the two regions have the same source label.
        new_ids: [N] ids of those regions.
        match_distance: An old and a new region with the same source label match at
            this distance or less.
        max_closed_error_rate: A corrected region with no match is closed when its
            error rate after correction is at most this.

    Returns:
        One record per old region with "region", "status", "error_rate_before" and
        "error_rate_after". "matched_region" is the id of the nearest new region with
        the same source label within the match distance, or None. "distance" is the
        distance to the nearest new region with the same source label, or None.
        "nearest_region" and "nearest_distance" name the nearest new region of any
        label.
    """
    records = []
    labelled = np.where(same_label, distance, np.inf)
    for row, region_id in enumerate(old_ids):
        nearest = int(np.argmin(distance[row])) if distance.shape[1] else None
        same = int(np.argmin(labelled[row])) if distance.shape[1] else None
        same_distance = None
        if same is not None and np.isfinite(labelled[row, same]):
            same_distance = float(labelled[row, same])
        matched = same_distance is not None and same_distance <= match_distance
        after = error_rate_after[row]
        if not corrected[row]:
            status = NOT_CORRECTED
        elif not matched and after is not None and after <= max_closed_error_rate:
            status = CLOSED
        else:
            status = PERSISTING
        records.append(
            {
                "region": int(region_id),
                "status": status,
                "error_rate_before": error_rate_before[row],
                "error_rate_after": after,
                "matched_region": int(new_ids[same]) if matched else None,
                "distance": same_distance,
                "nearest_region": None if nearest is None else int(new_ids[nearest]),
                "nearest_distance": (
                    None if nearest is None else float(distance[row, nearest])
                ),
            }
        )
    return records
