"""Tests of the latent noise families, the reference Beta noise and check_noise."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import identify, noise

# 50,000 draws per dimension: at std 0.7 the standard error of a mean is 0.003 and that
# of a std is 0.3%, so the tolerances below are at least 3 standard errors wide.
_ROWS, _DIMS = 50_000, 4


# Jitted, because eager Beta sampling runs its rejection loop op by op, for seconds.
_sample = jax.jit(noise.sample_noise, static_argnums=(1, 2))


def _draws(kind, scale, beta_a=3.0, key=0):
    config = noise.NoiseConfig(kind, scale, beta_a)
    return np.asarray(_sample(jax.random.key(key), (_ROWS, _DIMS), config))


@pytest.mark.parametrize("kind", ["gaussian", "beta"])
def test_dense_noise_has_zero_mean_and_scale_std(kind):
    draws = _draws(kind, 0.7)
    assert draws.shape == (_ROWS, _DIMS)
    np.testing.assert_allclose(draws.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(draws.std(axis=0), 0.7, rtol=0.02)


def test_beta_noise_is_bounded():
    # Beta(3, 3) lies in [0, 1], so centred and scaled it lies within 0.5 / beta_std.
    draws = _draws("beta", 0.7)
    bound = 0.7 * 0.5 / noise.beta_std(3.0)
    assert np.abs(draws).max() <= bound + 1e-5


def test_sparse_noise_has_one_coordinate_per_row():
    draws = _draws("sparse", 0.7)
    nonzero = draws != 0
    np.testing.assert_array_equal(nonzero.sum(axis=1), 1)
    values = draws[nonzero]
    assert abs(values.mean()) < 0.01
    assert values.std() == pytest.approx(0.7, rel=0.02)
    # Each coordinate is chosen with probability 1 / 4, so each dimension has mean 0
    # and std 0.7 / sqrt(4).
    np.testing.assert_allclose(nonzero.mean(axis=0), 1 / _DIMS, atol=0.01)
    np.testing.assert_allclose(draws.mean(axis=0), 0.0, atol=0.01)
    np.testing.assert_allclose(draws.std(axis=0), 0.7 / 2, rtol=0.03)


def test_uncentred_beta_noise_is_shifted_by_half():
    draws = _draws("beta_uncentred", 0.7)
    np.testing.assert_allclose(draws.mean(axis=0), 0.5, atol=0.01)
    np.testing.assert_allclose(draws.std(axis=0), 0.7, rtol=0.02)


def test_uncentred_beta_noise_matches_reference_beta():
    reference_a = noise.REFERENCE_BETA_A
    assert reference_a == 50.0
    scale = noise.beta_std(reference_a)
    assert scale == pytest.approx(1 / math.sqrt(404))
    draws = _draws("beta_uncentred", scale, reference_a, key=1)
    raw_beta = jax.jit(
        lambda key: jax.random.beta(key, reference_a, reference_a, (_ROWS, _DIMS))
    )
    raw = np.asarray(raw_beta(jax.random.key(2)))
    # Each mean has a standard error of 0.05 / sqrt(50,000), their difference 0.0003.
    np.testing.assert_allclose(draws.mean(axis=0), raw.mean(axis=0), atol=0.0015)
    np.testing.assert_allclose(draws.std(axis=0), raw.std(axis=0), rtol=0.02)
    # With the same key they are the same draws, up to float32 rounding.
    np.testing.assert_allclose(draws, raw_beta(jax.random.key(1)), atol=1e-6)


@pytest.mark.parametrize("kind", noise.NOISE_TYPES)
def test_scale_noise_is_linear_in_scale(kind):
    unit = jax.random.normal(jax.random.key(3), (100, 3))
    offset = 0.5 if kind == "beta_uncentred" else 0.0
    for scale in (0.0, 0.3, 2.0):
        np.testing.assert_allclose(
            noise.scale_noise(unit, scale, kind), unit * scale + offset, rtol=1e-6
        )


def test_search_norms_are_euclidean():
    vectors = jnp.asarray([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 2.0]])
    np.testing.assert_allclose(
        identify._norm_in_order(vectors), [5.0, 0.0, np.sqrt(5.0)], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (noise.NoiseConfig("laplace", 1.0, 2.0), "Unknown noise kind 'laplace'"),
        (noise.NoiseConfig("gaussian", -0.5, 2.0), "noise scale -0.5 is invalid"),
        (noise.NoiseConfig("gaussian", math.nan, 2.0), "noise scale nan is invalid"),
        (noise.NoiseConfig("sparse", math.inf, 2.0), "noise scale inf is invalid"),
        (noise.NoiseConfig("beta", 1.0, 0.0), "beta_a 0.0 is invalid for 'beta'"),
        (
            noise.NoiseConfig("beta_uncentred", 1.0, -2.0),
            "beta_a -2.0 is invalid for 'beta_uncentred'",
        ),
        (noise.NoiseConfig("beta", 1.0, math.nan), "beta_a nan is invalid"),
    ],
)
def test_check_noise_rejects_bad_fields(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        noise.check_noise(config)


def test_unknown_kind_raises_when_sampling():
    with pytest.raises(ValueError, match="Unknown noise kind 'laplace'"):
        noise.sample_noise(jax.random.key(0), (3,), noise.NoiseConfig("laplace"))
