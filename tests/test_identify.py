"""Tests of the latent search, on a toy generator and classifier with known results.

The toy generator encodes a [1, 1, 2] image to its two pixel values and decodes a code
back to pixels. The toy classifier predicts class 1 exactly when the first pixel is
positive, so a flip happens exactly when the noise moves the first code coordinate
across 0.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import identify
from defuse_jax.vae import Generator


def _encode(params, images):
    codes = images.reshape(images.shape[0], -1)
    return codes, jnp.zeros_like(codes)


def _decode(params, codes):
    return codes.reshape(codes.shape[0], 1, 1, -1)


def _classify(params, images):
    first = images.reshape(images.shape[0], -1)[:, 0]
    return jnp.stack([jnp.zeros_like(first), first], axis=-1)


TOY = Generator(encode=_encode, decode=_decode)


def _toy_data(count):
    rng = np.random.default_rng(0)
    first = rng.choice([-1.0, 1.0], count) * rng.uniform(0.2, 1.0, count)
    images = np.stack([first, rng.normal(size=count)], axis=-1).reshape(count, 1, 1, 2)
    return images.astype(np.float32), (first > 0).astype(np.int32)


def _search(images, labels, *, scale, q=32, k=3, batch_size=4, kind="gaussian"):
    return identify.identify(
        None,
        None,
        images,
        labels,
        jax.random.key(7),
        generator=TOY,
        apply_fn=_classify,
        num_perturbations=q,
        max_flips_per_image=k,
        noise=identify.NoiseConfig(kind, scale, 2.0),
        batch_size=batch_size,
    )


def test_zero_noise_gives_no_flips():
    images, labels = _toy_data(10)
    flips = _search(images, labels, scale=0.0)
    assert flips.size == 0
    assert flips.codes.shape == (0, 2)


def test_large_noise_gives_flips_with_other_label():
    images, labels = _toy_data(10)
    flips = _search(images, labels, scale=1.0)
    assert flips.size > 0
    np.testing.assert_array_equal(flips.predicted_label, 1 - flips.source_label)
    np.testing.assert_array_equal(flips.source_label, labels[flips.source_index])
    np.testing.assert_array_equal(
        flips.predicted_label, (flips.codes[:, 0] > 0).astype(int)
    )


def test_cap_keeps_smallest_noise_flips():
    images, labels = _toy_data(9)
    q, k = 40, 3
    noise_config = identify.NoiseConfig("gaussian", 1.0, 2.0)
    flips = _search(images, labels, scale=1.0, q=q, k=k)
    for index in range(len(images)):
        # Brute force: every perturbation of this image, with the same per-image key.
        noise = np.asarray(
            identify.sample_noise(
                jax.random.fold_in(jax.random.key(7), index), (q, 2), noise_config
            )
        )
        codes = images[index].reshape(2) + noise
        is_flip = (codes[:, 0] > 0).astype(int) != labels[index]
        norms = np.sort(np.linalg.norm(noise[is_flip], axis=1))[:k]
        found = flips.noise_norm[flips.source_index == index]
        np.testing.assert_allclose(found, norms, rtol=1e-5)
        assert len(found) == min(k, int(is_flip.sum()))


def test_flips_do_not_depend_on_batch_size():
    images, labels = _toy_data(11)
    small = _search(images, labels, scale=1.0, batch_size=3)
    large = _search(images, labels, scale=1.0, batch_size=8)
    for field in identify.Flips._fields:
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field))


def test_search_compiles_once_for_padded_batches(monkeypatch):
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(identify.search_batch, n=1)
    monkeypatch.setattr(identify, "search_batch", counted)
    images, labels = _toy_data(10)  # Batches of 4, 4 and a padded 2.
    flips = _search(images, labels, scale=1.0, batch_size=4)
    assert flips.size > 0


def test_padding_rows_yield_no_flips():
    images, labels = _toy_data(5)
    flips = _search(images, labels, scale=3.0, batch_size=4)
    assert set(np.unique(flips.source_index)) <= set(range(5))


@pytest.mark.parametrize("kind", ["gaussian", "beta"])
def test_noise_is_centred_with_requested_std(kind):
    noise = identify.sample_noise(
        jax.random.key(0), (200_000,), identify.NoiseConfig(kind, 0.7, 3.0)
    )
    assert abs(float(jnp.mean(noise))) < 0.01
    assert float(jnp.std(noise)) == pytest.approx(0.7, rel=0.02)


def test_unknown_noise_kind_raises():
    with pytest.raises(ValueError, match="Unknown noise kind 'laplace'"):
        identify.sample_noise(jax.random.key(0), (3,), identify.NoiseConfig("laplace"))


def test_resumed_search_equals_uninterrupted_search():
    images, labels = _toy_data(22)
    kwargs = {
        "generator": TOY,
        "apply_fn": _classify,
        "num_perturbations": 16,
        "max_flips_per_image": 2,
        "noise": identify.NoiseConfig("gaussian", 1.0, 2.0),
        "batch_size": 4,
    }
    saved = []
    whole = identify.identify(
        None,
        None,
        images,
        labels,
        jax.random.key(3),
        on_progress=lambda done, flips: saved.append((done, flips)),
        progress_every=2,
        **kwargs,
    )
    # Every 2 batches of 4 images, stopping before the last batch: after 8 and 16.
    assert [done for done, _ in saved] == [8, 16]
    assert whole.size > 0
    for checkpoint in saved:
        resumed = identify.identify(
            None, None, images, labels, jax.random.key(3), resume=checkpoint, **kwargs
        )
        chex.assert_trees_all_equal(resumed._asdict(), whole._asdict())


def test_resume_off_a_batch_boundary_raises():
    images, labels = _toy_data(8)
    with pytest.raises(ValueError, match="not a batch boundary"):
        identify.identify(
            None,
            None,
            images,
            labels,
            jax.random.key(3),
            generator=TOY,
            apply_fn=_classify,
            num_perturbations=4,
            max_flips_per_image=1,
            noise=identify.NoiseConfig("gaussian", 1.0, 2.0),
            batch_size=4,
            resume=(3, identify.empty_flips(2)),
        )
