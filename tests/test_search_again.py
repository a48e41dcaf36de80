"""Tests of stable region ids and of matching regions before and after correction."""

import json
import os

import numpy as np
import pytest

from defuse_jax import distill, search_again


def _gaussians(rng, count, dim=3):
    means = rng.normal(size=(count, dim)) * 5.0
    factors = rng.normal(size=(count, dim, dim)) * 0.3
    covariances = factors @ np.swapaxes(factors, 1, 2) + 0.2 * np.eye(dim)
    return means, covariances


def test_bhattacharyya_matches_the_closed_form_in_one_dimension():
    means_a, variances_a = np.array([[0.0], [1.0]]), np.array([[[1.0]], [[2.0]]])
    means_b, variances_b = np.array([[3.0]]), np.array([[[0.5]]])
    distance = search_again.bhattacharyya_matrix(
        means_a, variances_a, means_b, variances_b
    )
    for row in range(2):
        m1, v1 = means_a[row, 0], variances_a[row, 0, 0]
        m2, v2 = 3.0, 0.5
        expected = 0.25 * (m1 - m2) ** 2 / (v1 + v2) + 0.5 * np.log(
            (v1 + v2) / (2 * np.sqrt(v1 * v2))
        )
        assert distance[row, 0] == pytest.approx(expected)


def test_bhattacharyya_agrees_with_the_merge_distance():
    means, covariances = _gaussians(np.random.default_rng(0), 5)
    np.testing.assert_allclose(
        search_again.bhattacharyya_matrix(means, covariances, means, covariances),
        distill._bhattacharyya(means, covariances),
        atol=1e-9,
    )


def test_bhattacharyya_refuses_other_latent_sizes():
    means, covariances = _gaussians(np.random.default_rng(0), 2, dim=3)
    other_means, other_covariances = _gaussians(np.random.default_rng(1), 2, dim=4)
    with pytest.raises(ValueError, match="dimension 3 and 4"):
        search_again.bhattacharyya_matrix(
            means, covariances, other_means, other_covariances
        )


def test_greedy_pairs_one_to_one():
    distance = np.array(
        [
            [0.1, 0.2, 5.0],
            [0.05, 0.3, 5.0],
            [5.0, 5.0, 5.0],
        ]
    )
    # Row 1 takes column 0 (the closest pair), so row 0 falls back to column 1; row 2
    # has nothing within the limit.
    assert search_again.greedy_pairs(distance, 1.0) == [(0, 1), (1, 0)]
    assert search_again.greedy_pairs(distance, 0.07) == [(1, 0)]


def test_ids_follow_the_gaussians_across_runs():
    rng = np.random.default_rng(1)
    means, covariances = _gaussians(rng, 4)
    registry = search_again.empty_registry(3)
    labels = np.array([1, 1, 2, 3])
    ids, registry = search_again.assign_ids(
        registry, means, covariances, labels, max_distance=0.5
    )
    np.testing.assert_array_equal(ids, [0, 1, 2, 3])

    # The same regions in another order, one of them slightly moved, plus a new one.
    order = np.array([2, 0, 3, 1])
    new_mean, new_covariance = _gaussians(np.random.default_rng(7), 1)
    moved = means[order] + 0.01
    again_means = np.concatenate([moved, new_mean + 40.0])
    again_covariances = np.concatenate([covariances[order], new_covariance])
    again_labels = np.concatenate([labels[order], [1]])
    again, registry = search_again.assign_ids(
        registry, again_means, again_covariances, again_labels, max_distance=0.5
    )
    np.testing.assert_array_equal(again, [2, 0, 3, 1, 4])
    assert registry.size == 5

    # A far-away region never takes a stored id, however many regions are stored.
    far, registry = search_again.assign_ids(
        registry, means[:1] + 100.0, covariances[:1], labels[:1], max_distance=0.5
    )
    np.testing.assert_array_equal(far, [5])
    # Nor does a region on the same spot whose flips come from another class.
    other_class, _ = search_again.assign_ids(
        registry, means[:1], covariances[:1], np.array([9]), max_distance=0.5
    )
    np.testing.assert_array_equal(other_class, [6])


def test_registry_round_trip_and_bad_files(tmp_path, caplog):
    means, covariances = _gaussians(np.random.default_rng(2), 3)
    ids, registry = search_again.assign_ids(
        search_again.empty_registry(3),
        means,
        covariances,
        np.array([4, 0, 4]),
        max_distance=0.5,
    )
    search_again.save_registry(str(tmp_path), registry)
    loaded = search_again.load_registry(str(tmp_path), 3)
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_allclose(loaded.means, means)
    np.testing.assert_allclose(loaded.covariances, covariances)
    np.testing.assert_array_equal(loaded.labels, [4, 0, 4])

    # Another latent size (the VAE changed): ids start again instead of failing.
    assert search_again.load_registry(str(tmp_path), 5).size == 0
    path = os.path.join(tmp_path, search_again.REGISTRY_FILE)
    with open(path, "w", encoding="utf-8") as file:
        file.write("{not json")
    assert search_again.load_registry(str(tmp_path), 3).size == 0
    assert "region ids start again from 0" in caplog.text
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"regions": []}, file)
    assert search_again.load_registry(str(tmp_path), 3).size == 0


def _status(**overrides):
    arguments = {
        "old_ids": np.array([3, 5, 7, 9]),
        "corrected": np.array([True, True, True, False]),
        "error_rate_before": [0.8, 0.9, 0.7, None],
        "error_rate_after": [0.1, 0.6, 0.0, None],
        # Old region 3 (row 2) sits on new region 11; the others are far from both.
        "distance": np.array(
            [[4.0, 3.0], [2.5, 6.0], [0.2, 5.0], [0.3, 8.0]], np.float64
        ),
        "same_label": np.ones((4, 2), bool),
        "new_ids": np.array([11, 12]),
        "match_distance": 1.0,
        "max_closed_error_rate": 0.5,
    }
    arguments.update(overrides)
    return search_again.region_status(**arguments)


def test_region_status_closed_rule():
    records = {record["region"]: record for record in _status()}
    assert records[3]["status"] == search_again.CLOSED
    assert records[3]["matched_region"] is None
    assert records[3]["distance"] == pytest.approx(3.0)
    # Not matched, but the corrected classifier still mislabels 60% of its samples.
    assert records[5]["status"] == search_again.PERSISTING
    # Error rate 0, but the second search still finds a region on top of it.
    assert records[7]["status"] == search_again.PERSISTING
    assert records[7]["matched_region"] == 11
    assert records[9]["status"] == search_again.NOT_CORRECTED
    assert records[9]["matched_region"] == 11


def test_region_status_other_class_match():
    same_label = np.ones((4, 2), bool)
    same_label[2, 0] = False  # New region 11 contains flips of another source class.
    records = {record["region"]: record for record in _status(same_label=same_label)}
    assert records[7]["status"] == search_again.CLOSED
    assert records[7]["matched_region"] is None
    assert records[7]["distance"] == pytest.approx(5.0)
    assert records[7]["nearest_region"] == 11
    assert records[7]["nearest_distance"] == pytest.approx(0.2)


def test_region_status_without_new_regions():
    records = _status(
        distance=np.zeros((4, 0)),
        same_label=np.zeros((4, 0), bool),
        new_ids=np.zeros(0, np.int32),
    )
    assert [record["status"] for record in records] == [
        search_again.CLOSED,
        search_again.PERSISTING,
        search_again.CLOSED,
        search_again.NOT_CORRECTED,
    ]
    assert all(record["distance"] is None for record in records)
