"""Tests for the Dirichlet-process mixture in defuse_jax.distill."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from defuse_jax import distill


def test_fit_single_component():
    codes = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 3))

    mixture = distill.fit_mixture(codes, jax.random.key(0), truncation=1)

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
        restart_elbos=jnp.zeros(1),
        source_probs=jnp.zeros((len(weights), 0)),
        predicted_probs=jnp.zeros((len(weights), 0)),
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
        restart_elbos=jnp.zeros(1),
        source_probs=jnp.zeros((len(weights), 0)),
        predicted_probs=jnp.zeros((len(weights), 0)),
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


def test_log_likelihoods_rejects_wrong_dimension():
    mixture, codes = _tiny_mixture("diag")

    with pytest.raises(ValueError, match=r"shape \[num_codes, 4\] .* got \(7, 3\)"):
        distill.log_likelihoods(mixture, codes[:, :3])


_FIT_IN_SUBPROCESS = """
import sys
import jax
import numpy as np
from defuse_jax import distill
codes = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
mixture = distill.fit_mixture(codes, jax.random.key(1), truncation=4, max_steps=60)
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
