"""Classifier training and evaluation for any `apply_fn(params, images) -> logits`.

The contract: images are float32 NHWC in [0, 1] and logits are [N, num_classes].
Preprocessing belongs inside `apply_fn`, so training, identification and correction
always see the same inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from defuse_jax import batching, models

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean softmax cross-entropy of integer labels, optionally weighted per example.

    Args:
        logits: [N, num_classes].
        labels: [N] int.
        weights: Optional [N] non-negative weights (for example a padding mask).

    Returns:
        Scalar; with weights, sum(weights * CE) / max(sum(weights), 1).
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if weights is None:
        return jnp.mean(losses)
    weights = weights.astype(losses.dtype)
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1.0)


def make_apply_fn(model: models.CNN) -> ApplyFn:
    """Wrap a Flax module as the `apply_fn(params, images) -> logits` contract."""

    def apply_fn(params: Any, images: jax.Array) -> jax.Array:
        return model.apply({"params": params}, images)

    return apply_fn


def create_state(
    model: models.CNN,
    apply_fn: ApplyFn,
    key: jax.Array,
    image_shape: tuple[int, int, int],
    *,
    learning_rate: float,
    weight_decay: float = 0.0,
    decay_steps: int | None = None,
) -> train_state.TrainState:
    """Initialise the CNN and an AdamW optimiser; `state.apply_fn` is `apply_fn`.

    With `decay_steps`, the learning rate follows a cosine decay to 0 over that many steps.
    """
    params = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
    schedule = (
        learning_rate
        if decay_steps is None
        else optax.cosine_decay_schedule(learning_rate, decay_steps)
    )
    return train_state.TrainState.create(
        apply_fn=apply_fn,
        params=params,
        tx=optax.adamw(schedule, weight_decay=weight_decay),
    )


def _train_step(
    state: train_state.TrainState, batch: tuple[jax.Array, ...], key: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """Take one optimiser step on the cross-entropy of `(images [B, ...], labels [B])`.

    `key` is unused by the deterministic CNN and kept for the common step signature.
    """
    del key
    images, labels = batch

    def loss_fn(params):
        logits = state.apply_fn(params, images)
        return cross_entropy(logits, labels), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}


train_step = jax.jit(_train_step)


def predict(
    apply_fn: ApplyFn, params: Any, images: np.ndarray, *, batch_size: int = 500
) -> np.ndarray:
    """Return predicted labels [N] int32, computed in fixed-shape batches."""
    return batching.map_batched(
        lambda x: _predict_batch(apply_fn, params, x), (images,), batch_size
    )


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply_fn: ApplyFn, params: Any, images: jax.Array) -> jax.Array:
    return jnp.argmax(apply_fn(params, images), axis=-1).astype(jnp.int32)


def accuracy(
    apply_fn: ApplyFn,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 500,
) -> float:
    """Return the fraction of `images` whose predicted label equals `labels`."""
    if len(images) == 0:
        return float("nan")
    return float(
        np.mean(predict(apply_fn, params, images, batch_size=batch_size) == labels)
    )
