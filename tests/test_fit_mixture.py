"""Tests of the mixture fit in defuse_jax.distill: restarts, stopping, minibatches."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from defuse_jax import distill

NUM_DIMS = 4
TRUNCATION = 8


def _planted(seed: int, num_points: int, shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Points from 4 well-separated Gaussians whose shape suits `shape` covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 6.0, size=(4, NUM_DIMS))
    labels = rng.integers(0, 4, size=num_points)
    noise = rng.normal(size=(num_points, NUM_DIMS))
    if shape == "spherical":
        mixing = np.broadcast_to(np.eye(NUM_DIMS), (4, NUM_DIMS, NUM_DIMS))
    else:
        mixing = rng.uniform(0.4, 1.2, size=(4, NUM_DIMS))[:, :, None] * np.eye(
            NUM_DIMS
        )
        if shape == "full":
            mixing = mixing + rng.normal(0.0, 0.5, size=(4, NUM_DIMS, NUM_DIMS))
    points = centers[labels] + np.einsum("nij,nj->ni", mixing[labels], noise)
    return points.astype(np.float32), labels


@functools.cache
def _fit(shape: str, seed: int = 1, **options) -> tuple[np.ndarray, np.ndarray, tuple]:
    points, labels = _planted(0, 2000, shape)
    options = {"truncation": TRUNCATION, "covariance_type": shape, **options}
    mixture = distill.fit_mixture(points, jax.random.key(seed), **options)
    return points, labels, mixture


@pytest.mark.parametrize("shape", ["full", "diag", "spherical"])
def test_each_covariance_type_recovers_planted_clusters(shape):
    points, labels, mixture = _fit(shape)
    assigned = np.asarray(distill.assign(mixture, points))

    assert adjusted_rand_score(labels, assigned) >= 0.95
    assert np.isclose(np.sum(mixture.weights), 1.0, atol=1e-5)
    covariances = np.asarray(mixture.covariances)
    assert covariances.shape == (TRUNCATION, NUM_DIMS, NUM_DIMS)
    np.testing.assert_array_equal(covariances, np.swapaxes(covariances, 1, 2))
    assert np.all(np.linalg.eigvalsh(covariances) > 0)


def test_fit_reports_original_units():
    points, labels = _planted(0, 2000, "diag")
    # Shift and shrink the codes so that standardisation matters.
    codes = points * np.float32(0.01) + np.linspace(-50, 50, NUM_DIMS, dtype=np.float32)
    mixture = distill.fit_mixture(
        codes, jax.random.key(1), truncation=TRUNCATION, covariance_type="diag"
    )

    predicted = np.asarray(distill.assign(mixture, codes))
    assert adjusted_rand_score(labels, predicted) >= 0.95
    for cluster in range(4):
        members = codes[labels == cluster]
        component = np.bincount(predicted[labels == cluster]).argmax()
        weight = float(mixture.weights[component])
        assert weight == pytest.approx(len(members) / len(codes), abs=0.02)
        mean_error = np.asarray(mixture.means[component]) - members.mean(axis=0)
        assert np.all(np.abs(mean_error) <= 0.1 * members.std(axis=0)), cluster
        # The precision prior (scikit-learn's default strength: L pseudo-codes with
        # the variance of the whole set) widens narrow clusters; here by up to 42%.
        np.testing.assert_allclose(
            np.diag(np.asarray(mixture.covariances[component])),
            members.var(axis=0),
            rtol=0.5,
        )


def test_restarts_keep_the_best_elbo():
    _, _, mixture = _fit("full", num_restarts=4)
    restart_elbos = np.asarray(mixture.restart_elbos)

    assert restart_elbos.shape == (4,)
    # The winner's screening steps open its trace; its last one is the best ELBO.
    screened = min(8, len(mixture.elbo_trace))
    assert mixture.elbo_trace[screened - 1] == restart_elbos.max()
    assert len(np.unique(restart_elbos)) > 1


def test_convergence_stop(monkeypatch):
    warnings = []
    monkeypatch.setattr(
        distill.logging, "warning", lambda message, *args: warnings.append(message)
    )
    points, _, loose = _fit("full", tolerance=1.0)
    _, _, tight = _fit("full", tolerance=1e-7)
    assert not warnings
    _, _, capped = _fit("full", tolerance=0.0, max_steps=10, alpha_prior=(1.0, 1.0))

    assert len(loose.elbo_trace) < len(tight.elbo_trace)
    trace = np.asarray(tight.elbo_trace)
    assert abs(trace[-1] - trace[-2]) <= 1e-7 * len(points)
    assert len(capped.elbo_trace) == 10
    assert any("max_steps=%d" in message for message in warnings)


def test_minibatch_agrees_with_full_batch():
    points, labels = _planted(3, 6000, "full")
    key = jax.random.key(2)
    options = {"truncation": TRUNCATION, "covariance_type": "full"}
    full = distill.fit_mixture(points, key, **options)
    minibatch = distill.fit_mixture(points, key, batch_size=1000, **options)

    full_assigned = np.asarray(distill.assign(full, points))
    minibatch_assigned = np.asarray(distill.assign(minibatch, points))
    assert adjusted_rand_score(full_assigned, minibatch_assigned) >= 0.99
    assert adjusted_rand_score(labels, minibatch_assigned) >= 0.99
    used = np.asarray(full.weights) > 0.01
    for mean in np.asarray(full.means)[used]:
        distances = np.linalg.norm(np.asarray(minibatch.means) - mean, axis=1)
        assert distances.min() < 0.1


def test_same_key_gives_identical_result():
    points, _, first = _fit("full")
    second = distill.fit_mixture(
        points, jax.random.key(1), truncation=TRUNCATION, covariance_type="full"
    )
    for name, value in first._asdict().items():
        np.testing.assert_array_equal(
            np.asarray(value), np.asarray(getattr(second, name))
        )


def test_gamma_prior_on_alpha():
    # Ten steps (the fit of test_convergence_stop) already separate these clusters.
    points, labels, mixture = _fit(
        "full", tolerance=0.0, max_steps=10, alpha_prior=(1.0, 1.0)
    )

    assigned = np.asarray(distill.assign(mixture, points))
    assert adjusted_rand_score(labels, assigned) >= 0.95


def test_error_aware_mixture_separates_confusions():
    # Two confusions whose codes overlap: their means are 1.5 standard deviations
    # apart, so the codes alone hardly tell them apart, but the labels do.
    rng = np.random.default_rng(5)
    group = rng.integers(0, 2, size=2000)
    points = rng.normal(size=(2000, NUM_DIMS)).astype(np.float32)
    points[:, 0] += 1.5 * group
    source = np.full(2000, 8, np.int32)
    predicted = np.where(group == 0, 3, 5).astype(np.int32)
    options = {"truncation": TRUNCATION, "covariance_type": "full"}
    plain = distill.fit_mixture(points, jax.random.key(1), **options)
    aware = distill.fit_mixture(
        points, jax.random.key(1), labels=(source, predicted, 10), **options
    )

    pair = (source, predicted)
    aware_assigned = np.asarray(distill.assign(aware, points, pair))
    plain_assigned = np.asarray(distill.assign(plain, points, pair))
    assert adjusted_rand_score(group, aware_assigned) >= 0.95
    assert adjusted_rand_score(group, plain_assigned) < 0.5
    assert np.asarray(aware.predicted_probs).shape == (TRUNCATION, 10)


@pytest.mark.parametrize(
    ("codes", "options", "error", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), {}, ValueError, "row 0"),
        (np.zeros((1, 3)), {}, ValueError, "at least 2 codes to fit a mixture, got 1"),
        (None, {"truncation": 0}, ValueError, "truncation must be >= 1, got 0"),
        (None, {"truncation": 2.5}, TypeError, "truncation must be an int"),
        (None, {"covariance_type": "tied"}, ValueError, "'tied'"),
        (None, {"tolerance": -1.0}, ValueError, "tolerance must be"),
        (None, {"alpha_prior": (1.0, 0.0)}, ValueError, "alpha_prior must be"),
        (None, {"num_restarts": 0}, ValueError, "num_restarts must be >= 1"),
        (
            None,
            {"labels": (np.zeros(3, int), np.zeros(50, int), 10)},
            ValueError,
            r"shape \(50,\)",
        ),
        (
            None,
            {"labels": (np.full(50, 12), np.zeros(50, int), 10)},
            ValueError,
            r"\[0, 10\)",
        ),
    ],
)
def test_bad_input_raises_clear_errors(codes, options, error, message):
    if codes is None:
        codes = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(error, match=message):
        distill.fit_mixture(codes, jax.random.key(0), **options)


def test_merge_duplicates():
    eye = np.eye(2, dtype=np.float32)
    mixture = distill.Mixture(
        weights=np.array([0.3, 0.3, 0.4], np.float32),
        means=np.array([[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]], np.float32),
        covariances=np.stack([eye, eye, eye]),
        elbo_trace=np.zeros(1, np.float32),
        restart_elbos=np.zeros(1, np.float32),
        source_probs=np.zeros((3, 0), np.float32),
        predicted_probs=np.zeros((3, 0), np.float32),
    )

    merged, mapping = distill.merge_duplicates(mixture, max_distance=0.1)
    np.testing.assert_array_equal(mapping, [0, 0, 1])
    np.testing.assert_allclose(merged.weights, [0.6, 0.4])

    _, apart = distill.merge_duplicates(
        mixture, max_distance=0.1, groups=np.array([0, 1, 0])
    )
    np.testing.assert_array_equal(apart, [0, 1, 2])
    with pytest.raises(ValueError, match="max_distance must be >= 0"):
        distill.merge_duplicates(mixture, max_distance=-1.0)


def test_long_fit_logs_progress(monkeypatch):
    messages = []
    monkeypatch.setattr(distill, "_LOG_INTERVAL", 0.0)
    monkeypatch.setattr(
        distill.logging, "info", lambda message, *args: messages.append(message % args)
    )
    points, _ = _planted(0, 2000, "full")
    distill.fit_mixture(
        points, jax.random.key(3), truncation=TRUNCATION, covariance_type="full"
    )

    assert any(m.startswith("mixture fit, full-batch phase") for m in messages)
