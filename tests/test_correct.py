"""Tests of the lambda-mixed correction loss and fine-tuning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import classifier, correct, models


def _linear_apply(params, images):
    return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]


def _batch(key, count, classes=3):
    images = jax.random.uniform(key, (count, 2, 2, 1))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (count,), 0, classes)
    return images, labels


PARAMS = {"w": jnp.arange(12.0).reshape(4, 3) / 10, "b": jnp.array([0.1, -0.2, 0.3])}


def test_lambda_zero_equals_plain_cross_entropy():
    images, labels = _batch(jax.random.key(0), 8)
    extra_images, extra_labels = _batch(jax.random.key(1), 5)
    loss, _ = correct.correction_loss(
        PARAMS, _linear_apply, images, labels, extra_images, extra_labels, 0.0
    )
    plain = classifier.cross_entropy(_linear_apply(PARAMS, images), labels)
    np.testing.assert_allclose(loss, plain, rtol=1e-6)


def test_lambda_one_equals_extra_cross_entropy():
    images, labels = _batch(jax.random.key(0), 8)
    extra_images, extra_labels = _batch(jax.random.key(1), 5)
    loss, _ = correct.correction_loss(
        PARAMS, _linear_apply, images, labels, extra_images, extra_labels, 1.0
    )
    extra = classifier.cross_entropy(_linear_apply(PARAMS, extra_images), extra_labels)
    np.testing.assert_allclose(loss, extra, rtol=1e-6)


def test_loss_is_linear_in_lambda():
    images, labels = _batch(jax.random.key(0), 8)
    extra_images, extra_labels = _batch(jax.random.key(1), 5)
    losses = [
        float(
            correct.correction_loss(
                PARAMS, _linear_apply, images, labels, extra_images, extra_labels, lam
            )[0]
        )
        for lam in (0.0, 0.3, 1.0)
    ]
    assert losses[1] == pytest.approx(0.7 * losses[0] + 0.3 * losses[2], rel=1e-6)


def test_cross_entropy_weights_ignore_padding():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    labels = jnp.array([0, 1, 1])
    masked = classifier.cross_entropy(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(
        masked, classifier.cross_entropy(logits[:2], labels[:2]), rtol=1e-6
    )


def test_fine_tune_learns_extra_labels():
    # Original data: class 1 where pixel 0 exceeds 0.5, else class 0. Extra pool: a small
    # patch of inputs that the starting model gets wrong, annotated with label 2.
    model = models.CNN(num_classes=3, features=(4,), hidden_dim=8)
    apply_fn = classifier.make_apply_fn(model)
    rng = np.random.default_rng(0)
    train_images = rng.uniform(0, 1, (256, 2, 2, 1)).astype(np.float32)
    train_labels = (train_images[:, 0, 0, 0] > 0.5).astype(np.int32)
    state = classifier.create_state(
        model, apply_fn, jax.random.key(0), (2, 2, 1), learning_rate=1e-2
    )
    extra_images = (
        jnp.full((16, 2, 2, 1), 0.95) - jnp.linspace(0, 0.05, 16)[:, None, None, None]
    )
    extra_labels = jnp.full((16,), 2, jnp.int32)

    before = classifier.accuracy(
        apply_fn, state.params, np.asarray(extra_images), np.asarray(extra_labels)
    )
    params = correct.fine_tune(
        apply_fn,
        state.params,
        train_images,
        train_labels,
        sampler=correct.make_pool_sampler(16),
        extra_data=(extra_images, extra_labels),
        key=jax.random.key(1),
        lam=0.5,
        num_steps=150,
        batch_size=32,
        learning_rate=1e-2,
        name="fine_tune_test",
    )

    after = classifier.accuracy(
        apply_fn, params, np.asarray(extra_images), np.asarray(extra_labels)
    )
    assert before < 0.5
    assert after == 1.0


def test_region_sampler_draws_from_region_gaussians():
    means = jnp.array([[5.0, 0.0], [-5.0, 0.0]])
    covariances = jnp.stack([jnp.eye(2) * 0.01, jnp.eye(2) * 0.04])
    data = correct.RegionSamplerData(
        generator_params=None,
        means=means,
        cholesky=correct.region_cholesky(np.asarray(covariances), tau=1.0),
        labels=jnp.array([3, 7]),
    )

    class _IdentityGenerator:
        @staticmethod
        def decode(params, codes):
            return codes

    sampler = correct.make_region_sampler(_IdentityGenerator, 4096)
    codes, labels = sampler(data, jax.random.key(0))
    first = np.asarray(codes[labels == 3])
    second = np.asarray(codes[labels == 7])
    np.testing.assert_allclose(first.mean(0), [5.0, 0.0], atol=0.02)
    np.testing.assert_allclose(second.std(0), [0.2, 0.2], rtol=0.1)
    assert 0.4 < len(first) / 4096 < 0.6


def test_select_lambda_best_within_drop():
    index = correct.select_lambda(
        [0.05, 0.1, 0.2, 0.5],
        [0.960, 0.958, 0.956, 0.940],
        [0.60, 0.75, 0.85, 0.95],
        reference_accuracy=0.960,
        max_drop=0.005,
    )
    # 0.5 has the best region accuracy but drops 2 points; 0.2 drops 0.4.
    assert index == 2


def test_select_lambda_exact_drop_is_within():
    index = correct.select_lambda(
        [0.1, 0.2], [0.95, 0.945], [0.5, 0.9], reference_accuracy=0.95, max_drop=0.005
    )
    assert index == 1


def test_select_lambda_tie_takes_smaller():
    index = correct.select_lambda(
        [0.5, 0.1, 0.2],
        [0.95, 0.95, 0.95],
        [0.9, 0.9, 0.8],
        reference_accuracy=0.95,
        max_drop=0.0,
    )
    assert index == 1


def test_select_lambda_none_within_drop():
    index = correct.select_lambda(
        [0.05, 0.2, 0.5],
        [0.90, 0.92, 0.91],
        [0.5, 0.6, 0.9],
        reference_accuracy=0.96,
        max_drop=0.005,
    )
    assert index == 1


def test_select_lambda_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        correct.select_lambda(
            [0.1, 0.2], [0.9], [0.5, 0.6], reference_accuracy=0.9, max_drop=0
        )
    with pytest.raises(ValueError, match="at least one"):
        correct.select_lambda([], [], [], reference_accuracy=0.9, max_drop=0)


def test_match_lambda_cheapest_reaching_target():
    index = correct.match_lambda(
        [0.05, 0.1, 0.2, 0.5],
        [0.960, 0.950, 0.955, 0.940],
        [0.60, 0.85, 0.90, 0.95],
        target_region_accuracy=0.85,
    )
    # 0.1, 0.2 and 0.5 reach 0.85, and 0.2 keeps the most validation accuracy.
    assert index == 2


def test_match_lambda_exact_target_and_tie():
    index = correct.match_lambda(
        [0.5, 0.2, 0.1], [0.95, 0.95, 0.95], [0.9, 0.9, 0.8], target_region_accuracy=0.9
    )
    assert index == 1


def test_match_lambda_closest_when_none_reaches():
    index = correct.match_lambda(
        [0.05, 0.2, 0.5],
        [0.96, 0.95, 0.93],
        [0.50, 0.62, 0.61],
        target_region_accuracy=0.9,
    )
    # Nothing reaches 0.9, so 0.2 comes closest, though 0.05 keeps more accuracy.
    assert index == 1


def test_match_lambda_bad_inputs():
    with pytest.raises(ValueError, match="one length"):
        correct.match_lambda([0.1, 0.2], [0.9, 0.9], [0.5], target_region_accuracy=0.5)
    with pytest.raises(ValueError, match="at least one"):
        correct.match_lambda([], [], [], target_region_accuracy=0.5)
