"""Tests of the latent search and the minimal flip radius, on the toy model.

The toy classifier predicts class 1 exactly when the first code coordinate is positive,
so each test can compute the expected flips and radii by brute force in NumPy.
"""

import functools
import math

import chex
import jax
import numpy as np
import pytest
from toy_search import TOY, classify, search, search_options, toy_data

from defuse_jax import identify, noise


def test_zero_noise_gives_no_flips():
    images, labels = toy_data(10)
    flips = search(images, labels, scale=0.0)
    assert flips.size == 0
    assert flips.codes.shape == (0, 2)


def test_large_noise_gives_flips_with_other_label():
    images, labels = toy_data(10)
    flips = search(images, labels, scale=1.0)
    assert flips.size > 0
    np.testing.assert_array_equal(flips.predicted_label, 1 - flips.source_label)
    np.testing.assert_array_equal(flips.source_label, labels[flips.source_index])
    np.testing.assert_array_equal(
        flips.predicted_label, (flips.codes[:, 0] > 0).astype(int)
    )


def test_cap_keeps_smallest_noise_flips():
    images, labels = toy_data(9)
    q, k = 40, 3
    noise_config = identify.NoiseConfig("gaussian", 1.0, 2.0)
    flips = search(images, labels, scale=1.0, q=q, k=k)
    for index in range(len(images)):
        # Brute force: every perturbation of this image, with the same per-image key.
        draws = np.asarray(
            identify.sample_noise(
                jax.random.fold_in(jax.random.key(7), index), (q, 2), noise_config
            )
        )
        codes = images[index].reshape(2) + draws
        is_flip = (codes[:, 0] > 0).astype(int) != labels[index]
        norms = np.sort(np.linalg.norm(draws[is_flip], axis=1))[:k]
        found = flips.noise_norm[flips.source_index == index]
        np.testing.assert_allclose(found, norms, rtol=1e-5)
        assert len(found) == min(k, int(is_flip.sum()))


def test_flips_do_not_depend_on_batch_size():
    images, labels = toy_data(11)
    small = search(images, labels, scale=1.0, batch_size=3)
    large = search(images, labels, scale=1.0, batch_size=8)
    for field in identify.Flips._fields:
        np.testing.assert_array_equal(getattr(small, field), getattr(large, field))


@pytest.fixture
def fresh_compile_caches():
    """Empty the caches of jitted batch functions before and after the test.

    `identify` keeps its jitted functions across calls, so without this a test would
    reuse a function traced by an earlier test, and later tests the counted one.
    """
    identify.make_search_fn.cache_clear()
    identify._make_radius_fn.cache_clear()
    chex.clear_trace_counter()
    yield
    identify.make_search_fn.cache_clear()
    identify._make_radius_fn.cache_clear()


def _count_traces(function, traces):
    """Wrap `function` so that each trace appends the images' shape to `traces`."""

    @functools.wraps(function)
    def counted(*args, **kwargs):
        traces.append(args[2].shape)
        return function(*args, **kwargs)

    return counted


def test_search_traces_once_per_batch_shape(monkeypatch, fresh_compile_caches):
    traces = []
    counted = chex.assert_max_traces(_count_traces(identify.search_batch, traces), n=2)
    monkeypatch.setattr(identify, "search_batch", counted)
    images, labels = toy_data(10)  # Batches of 4, 4 and a padded 2.
    assert search(images, labels, batch_size=4).size > 0
    assert traces == [(4, 1, 1, 2)]
    # Another search with the same B and Q reuses the traced function.
    assert search(images[:7], labels[:7], batch_size=4).size > 0
    assert len(traces) == 1
    # Another Q traces once more.
    assert search(images, labels, batch_size=4, q=16).size > 0
    assert len(traces) == 2


def test_padding_rows_yield_no_flips():
    images, labels = toy_data(5)
    flips = search(images, labels, scale=3.0, batch_size=4)
    assert set(np.unique(flips.source_index)) <= set(range(5))


def _resume_options():
    return search_options(scale=1.0, q=16, k=2, batch_size=4)


def test_resumed_search_equals_uninterrupted_search():
    images, labels = toy_data(22)
    saved = []
    whole = identify.identify(
        None,
        None,
        images,
        labels,
        jax.random.key(3),
        on_progress=lambda done, flips: saved.append((done, flips)),
        progress_every=2,
        **_resume_options(),
    )
    # Every 2 batches of 4 images, stopping before the last batch: after 8 and 16.
    assert [done for done, _ in saved] == [8, 16]
    assert whole.size > 0
    for checkpoint in saved:
        resumed = identify.identify(
            None,
            None,
            images,
            labels,
            jax.random.key(3),
            resume=checkpoint,
            **_resume_options(),
        )
        chex.assert_trees_all_equal(resumed._asdict(), whole._asdict())


def test_resume_from_any_count_equals_uninterrupted():
    images, labels = toy_data(22)
    key = jax.random.key(3)
    whole = identify.identify(None, None, images, labels, key, **_resume_options())
    assert whole.size > 0
    # The flips of the first num_done images, as a search stopped there has them.
    # Batches hold 4 images: resume at the start, inside a batch, and at the end.
    checkpoints = [(0, identify.empty_flips(2))]
    for num_done in (5, 13):
        done = identify.identify(
            None, None, images[:num_done], labels[:num_done], key, **_resume_options()
        )
        assert done.size > 0
        checkpoints.append((num_done, done))
    checkpoints.append((22, whole))
    for checkpoint in checkpoints:
        resumed = identify.identify(
            None,
            None,
            images,
            labels,
            key,
            resume=checkpoint,
            **_resume_options(),
        )
        chex.assert_trees_all_equal(resumed._asdict(), whole._asdict())


@pytest.mark.parametrize("num_done", [-1, 9])
def test_resume_outside_the_images_raises(num_done):
    images, labels = toy_data(8)
    with pytest.raises(ValueError, match=f"resume starts at image {num_done}, outside"):
        identify.identify(
            None,
            None,
            images,
            labels,
            jax.random.key(3),
            resume=(num_done, identify.empty_flips(2)),
            **_resume_options(),
        )


def _radius_data():
    """Toy images: the first 4 never flip, the others flip at small or large noise."""
    images, labels = toy_data(14, seed=1, low=0.05, high=1.5)
    never = np.array([6.0, -6.0, 8.0, -7.0], np.float32)
    images[:4, 0, 0, 0] = never
    labels[:4] = (never > 0).astype(np.int32)
    return images, labels


def _brute_force_radius(images, labels, key, scales, noise_config, q):
    """Each image's first scale with a flip, from the same per-image unit draws."""
    radius = np.full(len(images), np.inf, np.float32)
    # Jitted once, because eager Beta sampling takes about a second per call.
    draw = jax.jit(noise.unit_noise, static_argnums=(1, 2))
    for index in range(len(images)):
        unit = draw(
            jax.random.fold_in(key, index), (q, images[index].size), noise_config
        )
        for scale in scales:
            draws = np.asarray(noise.scale_noise(unit, scale, noise_config.kind))
            codes = images[index].reshape(-1) + draws
            if np.any((codes[:, 0] > 0).astype(int) != labels[index]):
                radius[index] = scale
                break
    return radius


@pytest.mark.parametrize("kind", ["gaussian", "beta", "sparse"])
def test_minimal_radius_matches_brute_force(kind):
    images, labels = _radius_data()
    key = jax.random.key(11)
    scales = identify.radius_scales(0.05, 1.0, 6)
    noise_config = identify.NoiseConfig(kind, 1.0, 2.0)
    q = 8
    radius = identify.minimal_radius(
        None,
        None,
        images,
        labels,
        key,
        generator=TOY,
        apply_fn=classify,
        num_perturbations=q,
        scales=scales,
        noise=noise_config,
        batch_size=4,  # Batches of 4, 4, 4 and a padded 2.
    )
    expected = _brute_force_radius(images, labels, key, scales, noise_config, q)
    assert radius.dtype == np.float32
    np.testing.assert_array_equal(radius, expected)
    # The first 4 images never flip, and some others flip before the largest scale.
    assert np.all(np.isinf(radius[:4]))
    assert np.any(radius[4:] < scales[-1])


def test_minimal_radius_uses_source_indices_for_noise():
    images, labels = _radius_data()
    key = jax.random.key(11)
    scales = identify.radius_scales(0.05, 1.0, 6)
    options = {
        "generator": TOY,
        "apply_fn": classify,
        "num_perturbations": 8,
        "scales": scales,
        "noise": identify.NoiseConfig("gaussian", 1.0, 2.0),
    }
    whole = identify.minimal_radius(None, None, images, labels, key, **options)
    rows = np.array([3, 5, 9, 12], np.int32)
    part = identify.minimal_radius(
        None,
        None,
        images[rows],
        labels[rows],
        key,
        source_indices=rows,
        batch_size=3,
        **options,
    )
    np.testing.assert_array_equal(part, whole[rows])


def test_radius_traces_once_per_batch_shape(monkeypatch, fresh_compile_caches):
    traces = []
    counted = chex.assert_max_traces(_count_traces(identify.radius_batch, traces), n=2)
    monkeypatch.setattr(identify, "radius_batch", counted)
    images, labels = _radius_data()  # Batches of 4, 4, 4 and a padded 2.

    def radius(count, q):
        return identify.minimal_radius(
            None,
            None,
            images[:count],
            labels[:count],
            jax.random.key(11),
            generator=TOY,
            apply_fn=classify,
            num_perturbations=q,
            scales=identify.radius_scales(0.05, 1.0, 6),
            noise=identify.NoiseConfig("gaussian", 1.0, 2.0),
            batch_size=4,
        )

    assert np.isfinite(radius(14, 8)).sum() > 0
    assert traces == [(4, 1, 1, 2)]
    assert np.isfinite(radius(9, 8)).sum() > 0
    assert len(traces) == 1
    assert np.isfinite(radius(14, 4)).sum() > 0
    assert len(traces) == 2


def test_radius_scales_are_geometric():
    scales = identify.radius_scales(0.05, 2.0, 8)
    assert scales.dtype == np.float32
    assert scales.shape == (8,)
    assert scales[0] == pytest.approx(0.05)
    assert scales[-1] == pytest.approx(2.0)
    ratios = scales[1:] / scales[:-1]
    np.testing.assert_allclose(ratios, (2.0 / 0.05) ** (1 / 7), rtol=1e-5)


def test_radius_scales_with_one_step_is_smallest():
    np.testing.assert_array_equal(
        identify.radius_scales(0.3, 0.3, 1), np.float32([0.3])
    )


@pytest.mark.parametrize(
    ("smallest", "largest", "steps", "message"),
    [
        (0.0, 1.0, 4, "0 < smallest <= largest"),
        (-0.1, 1.0, 4, "0 < smallest <= largest"),
        (0.5, 0.1, 4, "smallest=0.5 and largest=0.1"),
        (0.1, math.inf, 4, "largest=inf"),
        (0.1, 1.0, 0, "positive integer, got 0"),
        (0.1, 1.0, 2.5, "positive integer, got 2.5"),
        (0.1, 1.0, True, "positive integer, got True"),
    ],
)
def test_radius_scales_rejects_bad_grids(smallest, largest, steps, message):
    with pytest.raises(ValueError, match=message):
        identify.radius_scales(smallest, largest, steps)


@pytest.mark.parametrize(
    "scales", [np.float32([0.5, 0.2]), np.float32([]), np.float32([[0.1, 0.2]])]
)
def test_minimal_radius_rejects_bad_scales(scales):
    images, labels = toy_data(3)
    with pytest.raises(ValueError, match="1-D increasing grid"):
        identify.minimal_radius(
            None,
            None,
            images,
            labels,
            jax.random.key(0),
            generator=TOY,
            apply_fn=classify,
            num_perturbations=4,
            scales=scales,
            noise=identify.NoiseConfig("gaussian", 1.0, 2.0),
        )


def test_radius_summary_per_class():
    inf = np.inf
    radius = np.float32([0.1, 0.2, inf, 0.4, inf, inf, inf, inf, 0.3, 0.5, inf])
    labels = np.int32([0, 0, 0, 1, 1, 1, 2, 2, 4, 4, 4])
    scales = np.float32([0.1, 0.2, 0.3, 0.4, 0.5])
    summary = identify.radius_summary(radius, labels, ["a", "b", "c", "d", "e"], scales)

    assert summary["scales"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert list(summary["per_class"]) == ["a", "b", "c", "d", "e"]
    per_class = summary["per_class"]
    # One of three has no flip: the median is finite.
    assert per_class["a"]["images"] == 3
    assert per_class["a"]["median_radius"] == pytest.approx(0.2)
    assert per_class["a"]["fraction_no_flip"] == pytest.approx(1 / 3)
    # Two of three have no flip: the median is above the grid.
    assert per_class["b"]["images"] == 3
    assert per_class["b"]["median_radius"] is None
    assert per_class["b"]["fraction_no_flip"] == pytest.approx(2 / 3)
    assert per_class["c"]["images"] == 2
    assert per_class["c"]["median_radius"] is None
    assert per_class["c"]["fraction_no_flip"] == 1.0
    # A class with no images has no numbers.
    assert per_class["d"] == {
        "images": 0,
        "median_radius": None,
        "fraction_no_flip": None,
    }
    assert per_class["e"]["median_radius"] == pytest.approx(0.5)
    # Over all 11 images 6 have no flip.
    assert summary["all"]["images"] == 11
    assert summary["all"]["median_radius"] is None
    assert summary["all"]["fraction_no_flip"] == pytest.approx(6 / 11)
