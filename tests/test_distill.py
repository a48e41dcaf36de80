"""Tests for the Dirichlet-process mixture in defuse_jax.distill."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from defuse_jax import distill

NUM_CLUSTERS = 4
NUM_POINTS = 2000
NUM_DIMS = 6
TRUNCATION = 20
NUM_STEPS = 2000


def _planted_clusters(seed: int, covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw NUM_POINTS points from NUM_CLUSTERS well-separated Gaussians.

    Each cluster has its own random shape: axis-aligned with unequal spreads for
    "diag", and correlated for "full". Diagonal components cannot represent a
    correlated cluster, so the "diag" data stay axis-aligned.

    Returns:
        Points [NUM_POINTS, NUM_DIMS] (float32) and their cluster labels
        [NUM_POINTS].
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 8.0, size=(NUM_CLUSTERS, NUM_DIMS))
    labels = rng.integers(0, NUM_CLUSTERS, size=NUM_POINTS)
    spreads = rng.uniform(0.5, 1.5, size=(NUM_CLUSTERS, NUM_DIMS))
    mixing = spreads[:, :, None] * np.eye(NUM_DIMS)
    if covariance_type == "full":
        mixing += rng.normal(0.0, 0.6, size=(NUM_CLUSTERS, NUM_DIMS, NUM_DIMS))
    noise = rng.normal(size=(NUM_POINTS, NUM_DIMS))
    points = centers[labels] + np.einsum("nij,nj->ni", mixing[labels], noise)
    return points.astype(np.float32), labels


class Fit(NamedTuple):
    """Planted clusters and the mixture fitted to them."""

    covariance_type: str
    points: np.ndarray
    labels: np.ndarray
    mixture: distill.Mixture


@functools.cache
def _fit_planted(covariance_type: str) -> Fit:
    """Fit the planted clusters once per covariance type for the whole module."""
    points, labels = _planted_clusters(0, covariance_type)
    mixture = distill.fit_mixture(
        points,
        jax.random.key(1),
        truncation=TRUNCATION,
        covariance_type=covariance_type,
        num_steps=NUM_STEPS,
    )
    return Fit(covariance_type, points, labels, mixture)


@pytest.fixture(params=["diag", "full"])
def fitted(request) -> Fit:
    return _fit_planted(request.param)


def test_fit_output_shapes_and_weights(fitted):
    mixture = fitted.mixture

    assert mixture.weights.shape == (TRUNCATION,)
    assert mixture.means.shape == (TRUNCATION, NUM_DIMS)
    assert mixture.covariances.shape == (TRUNCATION, NUM_DIMS, NUM_DIMS)
    assert mixture.elbo_trace.shape == (NUM_STEPS,)
    assert np.all(np.asarray(mixture.weights) >= 0)
    np.testing.assert_allclose(float(jnp.sum(mixture.weights)), 1.0, rtol=1e-5)
    for field, array in zip(distill.Mixture._fields, mixture):
        assert np.all(np.isfinite(np.asarray(array))), field


def test_fit_covariances_valid(fitted):
    covariances = np.asarray(fitted.mixture.covariances, dtype=np.float64)

    np.testing.assert_allclose(covariances, np.swapaxes(covariances, -1, -2))
    assert np.all(np.linalg.eigvalsh(covariances) > 0)
    if fitted.covariance_type == "diag":
        off_diagonal = ~np.eye(NUM_DIMS, dtype=bool)
        assert np.all(covariances[:, off_diagonal] == 0)


def test_fit_recovers_planted_clusters(fitted):
    predicted = np.asarray(distill.assign(fitted.mixture, fitted.points))

    assert adjusted_rand_score(fitted.labels, predicted) >= 0.95


def test_fit_prunes_unused_components(fitted):
    num_effective = int(np.sum(np.asarray(fitted.mixture.weights) > 0.01))

    # A MAP fit (AutoDelta) of the same model kept 17 of the 20 components on
    # the "diag" data in a trial run.
    assert NUM_CLUSTERS <= num_effective <= NUM_CLUSTERS + 1


def test_fit_elbo_improves(fitted):
    elbo = np.asarray(fitted.mixture.elbo_trace)
    window = NUM_STEPS // 10
    first, previous, last = (
        np.mean(elbo[:window]),
        np.mean(elbo[-2 * window : -window]),
        np.mean(elbo[-window:]),
    )

    assert last > first + 100.0
    # The trace is a one-sample Monte Carlo estimate, so allow a little noise.
    assert last >= previous - 5.0


def test_fit_same_key_identical(fitted):
    again = distill.fit_mixture(
        fitted.points,
        jax.random.key(1),
        truncation=TRUNCATION,
        covariance_type=fitted.covariance_type,
        num_steps=NUM_STEPS,
    )

    for field, first, second in zip(distill.Mixture._fields, fitted.mixture, again):
        np.testing.assert_array_equal(
            np.asarray(first), np.asarray(second), err_msg=field
        )


def test_fit_other_key_differs():
    fitted = _fit_planted("diag")

    other = distill.fit_mixture(
        fitted.points,
        jax.random.key(2),
        truncation=TRUNCATION,
        covariance_type=fitted.covariance_type,
        num_steps=NUM_STEPS,
    )

    assert not np.array_equal(
        np.asarray(fitted.mixture.elbo_trace), np.asarray(other.elbo_trace)
    )


def test_fit_reports_original_units():
    points, labels = _planted_clusters(0, "diag")
    # Shift and shrink the codes so that standardisation matters.
    offset = np.linspace(-50.0, 50.0, NUM_DIMS, dtype=np.float32)
    scale = np.float32(0.01)
    codes = points * scale + offset

    mixture = distill.fit_mixture(
        codes, jax.random.key(1), truncation=TRUNCATION, num_steps=NUM_STEPS
    )
    predicted = np.asarray(distill.assign(mixture, codes))
    weights = np.asarray(mixture.weights)

    assert adjusted_rand_score(labels, predicted) >= 0.95
    for cluster in range(NUM_CLUSTERS):
        members = codes[labels == cluster]
        component = np.bincount(predicted[labels == cluster]).argmax()
        assert weights[component] == pytest.approx(len(members) / len(codes), abs=0.02)
        mean_error = np.asarray(mixture.means[component]) - members.mean(axis=0)
        assert np.all(np.abs(mean_error) <= 0.1 * members.std(axis=0)), cluster
        np.testing.assert_allclose(
            np.diag(np.asarray(mixture.covariances[component])),
            members.var(axis=0),
            rtol=0.1,
        )


def test_fit_single_component():
    codes = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 3))

    mixture = distill.fit_mixture(codes, jax.random.key(0), truncation=1, num_steps=500)

    np.testing.assert_array_equal(np.asarray(mixture.weights), [1.0])
    np.testing.assert_allclose(np.asarray(mixture.means[0]), codes.mean(0), atol=0.3)
    np.testing.assert_allclose(
        np.diag(np.asarray(mixture.covariances[0])), codes.var(0), rtol=0.25
    )


def test_kmeans_plus_plus_seeds_every_cluster():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    points = np.repeat(centers, 50, axis=0) + rng.normal(0, 0.1, size=(200, 2))

    for seed in range(5):
        seeds = distill._kmeans_plus_plus(jax.random.key(seed), jnp.asarray(points), 4)
        clusters = np.asarray(seeds) // 50
        assert sorted(clusters.tolist()) == [0, 1, 2, 3]


def _tiny_mixture(covariance_type: str) -> tuple[distill.Mixture, np.ndarray]:
    """Build a 3-component mixture in 4 dimensions, far from the origin."""
    rng = np.random.default_rng(7)
    num_dims = 4
    weights = np.array([0.5, 0.3, 0.2], dtype=np.float32)
    means = rng.normal(20.0, 3.0, size=(3, num_dims)).astype(np.float32)
    if covariance_type == "diag":
        covariances = np.stack(
            [np.diag(rng.uniform(0.2, 2.0, num_dims)) for _ in range(3)]
        )
    else:
        factors = rng.normal(size=(3, num_dims, num_dims))
        covariances = factors @ np.swapaxes(factors, -1, -2) + 0.3 * np.eye(num_dims)
    mixture = distill.Mixture(
        weights=jnp.asarray(weights),
        means=jnp.asarray(means),
        covariances=jnp.asarray(covariances, dtype=jnp.float32),
        elbo_trace=jnp.zeros(1),
    )
    codes = rng.normal(20.0, 4.0, size=(7, num_dims)).astype(np.float32)
    return mixture, codes


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_log_likelihoods_match_scipy(covariance_type):
    mixture, codes = _tiny_mixture(covariance_type)
    expected = np.stack(
        [
            np.log(float(mixture.weights[k]))
            + stats.multivariate_normal.logpdf(
                codes.astype(np.float64),
                mean=np.asarray(mixture.means[k], dtype=np.float64),
                cov=np.asarray(mixture.covariances[k], dtype=np.float64),
            )
            for k in range(3)
        ],
        axis=1,
    )

    actual = np.asarray(distill.log_likelihoods(mixture, codes))

    assert actual.shape == (7, 3)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("covariance_type", ["diag", "full"])
def test_responsibilities_rows_sum_to_one(covariance_type):
    mixture, codes = _tiny_mixture(covariance_type)

    result = np.asarray(distill.responsibilities(mixture, codes))

    assert result.shape == (7, 3)
    assert np.all(result >= 0)
    np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        result.argmax(axis=1), np.asarray(distill.assign(mixture, codes))
    )


def test_responsibilities_on_fit_sum_to_one(fitted):
    result = np.asarray(distill.responsibilities(fitted.mixture, fitted.points))

    assert result.shape == (NUM_POINTS, TRUNCATION)
    np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-5)


def test_assign_returns_int32_indices():
    mixture, codes = _tiny_mixture("full")

    assignments = distill.assign(mixture, codes)

    assert assignments.dtype == jnp.int32
    assert assignments.shape == (7,)
    assert np.all((np.asarray(assignments) >= 0) & (np.asarray(assignments) < 3))


def _selection_mixture() -> distill.Mixture:
    weights = jnp.asarray([0.05, 0.4, 0.0, 0.3, 0.25])
    return distill.Mixture(
        weights=weights,
        means=jnp.zeros((5, 2)),
        covariances=jnp.broadcast_to(jnp.eye(2), (5, 2, 2)),
        elbo_trace=jnp.zeros(1),
    )


def test_select_regions_filters_and_sorts():
    mixture = _selection_mixture()
    # Sizes per component: 10, 3, 0, 6, 5.
    assignments = jnp.asarray([0] * 10 + [1] * 3 + [3] * 6 + [4] * 5)

    everything = distill.select_regions(mixture, assignments, min_weight=0, min_size=0)
    by_weight = distill.select_regions(
        mixture, assignments, min_weight=0.25, min_size=0
    )
    by_size = distill.select_regions(mixture, assignments, min_weight=0, min_size=5)
    both = distill.select_regions(mixture, assignments, min_weight=0.1, min_size=5)

    np.testing.assert_array_equal(everything, [1, 3, 4, 0, 2])
    np.testing.assert_array_equal(by_weight, [1, 3, 4])
    np.testing.assert_array_equal(by_size, [3, 4, 0])
    np.testing.assert_array_equal(both, [3, 4])


def test_select_regions_empty_result():
    mixture = _selection_mixture()
    assignments = jnp.asarray([1, 1, 3])

    result = distill.select_regions(mixture, assignments, min_weight=0.5, min_size=1)

    assert result.shape == (0,)


@pytest.mark.parametrize(
    ("assignments", "options", "message"),
    [
        (np.zeros((2, 2), np.int32), {}, "1-D integer array"),
        (np.zeros(3, np.float32), {}, "1-D integer array"),
        (np.array([0, 5]), {}, r"must lie in \[0, 5\)"),
        (np.array([0, -1]), {}, r"must lie in \[0, 5\)"),
        (np.array([0]), {"min_weight": -0.1}, "min_weight must be >= 0"),
        (np.array([0]), {"min_size": -1}, "min_size must be >= 0"),
    ],
)
def test_select_regions_rejects_bad_input(assignments, options, message):
    arguments = {"min_weight": 0.0, "min_size": 0} | options
    with pytest.raises(ValueError, match=message):
        distill.select_regions(_selection_mixture(), assignments, **arguments)


_GOOD_CODES = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)


def _codes_with(value: float) -> np.ndarray:
    codes = _GOOD_CODES.copy()
    codes[4, 1] = value
    return codes


@pytest.mark.parametrize(
    ("codes", "options", "message"),
    [
        (_GOOD_CODES[:, 0], {}, r"2-D array .* got shape \(10,\)"),
        (_GOOD_CODES[None], {}, r"2-D array .* got shape \(1, 10, 3\)"),
        (np.zeros((10, 0), np.float32), {}, "at least one latent dimension"),
        (_codes_with(np.nan), {}, "must be finite, but 1 of 10 rows"),
        (_codes_with(np.inf), {}, "must be finite, but 1 of 10 rows"),
        (_GOOD_CODES[:1], {}, "at least 2 codes to fit a mixture, got 1"),
        (_GOOD_CODES[:0], {}, "at least 2 codes to fit a mixture, got 0"),
        (_GOOD_CODES, {"truncation": 0}, "truncation must be >= 1, got 0"),
        (_GOOD_CODES, {"alpha": 0.0}, "alpha must be a finite number > 0, got 0.0"),
        (_GOOD_CODES, {"alpha": -1.0}, "alpha must be a finite number > 0"),
        (_GOOD_CODES, {"alpha": float("nan")}, "alpha must be a finite number > 0"),
        (_GOOD_CODES, {"num_steps": 0}, "num_steps must be >= 1, got 0"),
        (_GOOD_CODES, {"learning_rate": 0.0}, "learning_rate must be a finite"),
        (
            _GOOD_CODES,
            {"covariance_type": "spherical"},
            re.escape(
                "covariance_type must be one of ('diag', 'full'), got 'spherical'"
            ),
        ),
    ],
)
def test_fit_rejects_bad_input(codes, options, message):
    with pytest.raises(ValueError, match=message):
        distill.fit_mixture(codes, jax.random.key(0), **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"truncation": 2.5}, "truncation must be an int"),
        ({"truncation": True}, "truncation must be an int"),
        ({"num_steps": 10.0}, "num_steps must be an int"),
    ],
)
def test_fit_rejects_non_integer_counts(options, message):
    with pytest.raises(TypeError, match=message):
        distill.fit_mixture(_GOOD_CODES, jax.random.key(0), **options)


def test_log_likelihoods_rejects_wrong_dimension():
    mixture, codes = _tiny_mixture("diag")

    with pytest.raises(ValueError, match=r"shape \[num_codes, 4\] .* got \(7, 3\)"):
        distill.log_likelihoods(mixture, codes[:, :3])


def test_nonfinite_elbo_names_the_step():
    codes = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    with pytest.raises(
        FloatingPointError, match=r"ELBO became nan at SVI step \d+ of 50"
    ):
        distill.fit_mixture(
            codes, jax.random.key(0), truncation=3, num_steps=50, learning_rate=1e6
        )


_FIT_IN_SUBPROCESS = """
import sys
import jax
import numpy as np
from defuse_jax import distill
codes = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
mixture = distill.fit_mixture(codes, jax.random.key(1), truncation=4, num_steps=60)
sys.stdout.write(np.asarray(mixture.elbo_trace).tobytes().hex())
"""


def test_elbo_trace_ignores_hash_seed():
    traces = []
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", _FIT_IN_SUBPROCESS],
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "JAX_PLATFORMS": "cpu"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        traces.append(result.stdout)
    assert traces[0] == traces[1]
