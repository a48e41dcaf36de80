"""Tests of the CNN classifier's train step and evaluation."""

import chex
import jax
import numpy as np

from defuse_jax import classifier, models, training


def _separable_data(count=96):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, count).astype(np.int32)
    images = rng.uniform(0, 0.2, (count, 8, 8, 1)).astype(np.float32)
    images[labels == 1, :4] += 0.7  # Class 1 has a bright top half.
    return images, labels


def test_train_step_compiles_once_and_learns():
    chex.clear_trace_counter()
    images, labels = _separable_data()
    model = models.CNN(num_classes=2, features=(4, 8), hidden_dim=16)
    apply_fn = classifier.make_apply_fn(model)
    state = classifier.create_state(
        model,
        apply_fn,
        jax.random.key(0),
        (8, 8, 1),
        learning_rate=1e-2,
        decay_steps=60,
    )
    step = jax.jit(chex.assert_max_traces(classifier._train_step, n=1))
    state = training.train_loop(
        state,
        step,
        (images, labels),
        key=jax.random.key(1),
        num_steps=60,
        batch_size=32,
        name="classifier_test",
        log_every=30,
    )
    assert classifier.accuracy(apply_fn, state.params, images, labels) == 1.0


def test_predict_handles_partial_batch():
    images, _ = _separable_data(10)
    model = models.CNN(num_classes=3, features=(4,), hidden_dim=8)
    apply_fn = classifier.make_apply_fn(model)
    params = model.init(jax.random.key(0), images[:1])["params"]
    expected = np.argmax(np.asarray(apply_fn(params, images)), axis=-1)
    predicted = classifier.predict(apply_fn, params, images, batch_size=4)
    np.testing.assert_array_equal(predicted, expected)
    assert predicted.dtype == np.int32
