"""Tests of region novelty and realism (defuse_jax.quality) on data with known results."""

import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import quality
from defuse_jax.vae import Generator


def _brute_force(queries, references, query_indices=None):
    distances = np.sqrt(
        np.sum(np.square(queries[:, None, :] - references[None, :, :]), axis=-1)
    )
    if query_indices is not None:
        distances[np.arange(len(queries)), query_indices] = np.inf
    return distances.min(axis=1)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(23, 4)).astype(np.float32)
    references = rng.normal(size=(17, 4)).astype(np.float32)
    # Blocks that divide neither size, so both paddings are exercised.
    got = quality.nearest_distances(
        queries, references, query_block=7, reference_block=5
    )
    np.testing.assert_allclose(got, _brute_force(queries, references), rtol=1e-5)


def test_nearest_distances_skip_own_row():
    points = np.array([[0.0], [1.0], [3.0], [6.0]], np.float32)
    got = quality.nearest_distances(
        points, points, query_indices=np.arange(4), reference_block=3
    )
    np.testing.assert_allclose(got, [1.0, 1.0, 2.0, 3.0])


def test_nearest_distances_exact_zero_on_reference():
    rng = np.random.default_rng(1)
    references = rng.normal(size=(50, 10)).astype(np.float32) * 100.0
    got = quality.nearest_distances(references[[3, 17, 42]], references)
    # Differences, not the expanded square, so a query on a reference is exactly 0.
    assert np.all(got == 0.0)


def test_nearest_distances_compile_once_per_block_shape():
    rng = np.random.default_rng(2)
    references = rng.normal(size=(9, 3)).astype(np.float32)
    quality.nearest_distances(
        rng.normal(size=(4, 3)), references, query_block=4, reference_block=4
    )
    before = quality._nearest_squared_block._cache_size()
    for count in (5, 11, 13):
        quality.nearest_distances(
            rng.normal(size=(count, 3)), references, query_block=4, reference_block=4
        )
    assert quality._nearest_squared_block._cache_size() == before


def test_nearest_distances_reject_bad_shapes():
    with pytest.raises(ValueError, match="3 dimensions but references have 2"):
        quality.nearest_distances(np.zeros((2, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="no references"):
        quality.nearest_distances(np.zeros((2, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"query_indices has shape \(3,\)"):
        quality.nearest_distances(
            np.zeros((2, 3)), np.zeros((4, 3)), query_indices=np.arange(3)
        )


def test_typical_nearest_distance_on_grid():
    # A 2-D grid with spacing 0.5: every point's nearest neighbour is 0.5 away.
    axis = np.arange(20) * 0.5
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    assert quality.typical_nearest_distance(grid) == pytest.approx(0.5)
    # Fewer queries than points estimate the same median here.
    assert quality.typical_nearest_distance(grid, max_queries=37) == pytest.approx(0.5)


def test_typical_nearest_distance_needs_two_codes():
    with pytest.raises(ValueError, match="at least 2 codes, got 1"):
        quality.typical_nearest_distance(np.zeros((1, 3)))


def test_novelty_zero_on_misclassified_codes():
    rng = np.random.default_rng(3)
    misclassified = rng.normal(size=(30, 10)).astype(np.float32)
    samples = misclassified[rng.integers(0, 30, size=16)]
    novelty = quality.region_novelty(samples, misclassified, typical_distance=0.7)
    assert novelty["median_distance"] == 0.0
    assert novelty["ratio"] == 0.0


def test_novelty_ratio_of_known_offset():
    # The misclassified codes lie far apart, and each sample sits 0.3 from one of them
    # along an axis, so the nearest misclassified code is 0.3 away.
    misclassified = np.eye(5, dtype=np.float32) * 100.0
    offset = np.zeros((5, 5), np.float32)
    offset[:, 0] = 0.3
    novelty = quality.region_novelty(
        misclassified + offset, misclassified, typical_distance=0.1
    )
    assert novelty["median_distance"] == pytest.approx(0.3, rel=1e-5)
    assert novelty["ratio"] == pytest.approx(3.0, rel=1e-5)


def test_novelty_without_misclassified_images():
    novelty = quality.region_novelty(
        np.zeros((4, 2)), np.zeros((0, 2)), typical_distance=1.0
    )
    assert novelty["median_distance"] is None
    assert novelty["ratio"] is None
    assert "misclassifies no training image" in novelty["note"]


def test_novelty_without_typical_distance():
    novelty = quality.region_novelty(
        np.ones((4, 2)), np.zeros((1, 2)), typical_distance=None
    )
    assert novelty["median_distance"] == pytest.approx(np.sqrt(2.0))
    assert novelty["ratio"] is None
    assert "note" in novelty


def _flat_generator(decoded_value=None):
    """A generator whose codes are the flattened pixels of 2 x 2 x 1 images.

    Decoding returns the code unchanged, or `decoded_value` everywhere when given.
    """

    def encode(params, images):
        codes = images.reshape(images.shape[0], -1)
        return codes, jnp.zeros_like(codes)

    def decode(params, codes):
        images = codes.reshape(codes.shape[0], 2, 2, 1)
        if decoded_value is None:
            return images
        return jnp.full_like(images, decoded_value)

    return Generator(encode=encode, decode=decode)


def test_reconstruction_errors_of_exact_autoencoder():
    images = np.random.default_rng(4).uniform(size=(5, 2, 2, 1)).astype(np.float32)
    errors = quality.reconstruction_errors(_flat_generator(), {}, images, batch_size=2)
    np.testing.assert_allclose(errors, np.zeros(5), atol=1e-7)


def test_reconstruction_errors_are_mean_squared_per_pixel():
    images = np.zeros((3, 2, 2, 1), np.float32)
    images[1] = 1.0
    images[2, 0, 0, 0] = 1.0
    errors = quality.reconstruction_errors(
        _flat_generator(decoded_value=0.5), {}, images, batch_size=2
    )
    np.testing.assert_allclose(errors, [0.25, 0.25, 0.25], rtol=1e-6)
    errors = quality.reconstruction_errors(
        _flat_generator(decoded_value=0.0), {}, images, batch_size=2
    )
    np.testing.assert_allclose(errors, [0.0, 1.0, 0.25], rtol=1e-6)


def test_realism_ratio_against_reference():
    realism = quality.region_realism(np.array([0.01, 0.02, 0.09]), 0.04)
    assert realism["median_error"] == pytest.approx(0.02)
    assert realism["ratio"] == pytest.approx(0.5)


def test_realism_without_reference():
    realism = quality.region_realism(np.array([0.01, 0.03]), None)
    assert realism["median_error"] == pytest.approx(0.02)
    assert realism["ratio"] is None
    assert "needs a positive one" in realism["note"]
