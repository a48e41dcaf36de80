"""Correction: fine-tune the audited classifier on original data mixed with region samples.

The loss of one step is `(1 - lam) * CE(original batch) + lam * CE(extra batch)`. For
Defuse the extra batch is drawn fresh every step from the annotated regions,
N(mean, tau * covariance), decoded by the VAE and labelled with the region's label. The
baseline instead draws its extra batch from the decoded flips, each with its source
label. Both start from the audited classifier's parameters. `select_lambda` chooses
each method's lambda on validation figures, and `match_lambda` the baseline's lambda at
an equal fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from defuse_jax import training
from defuse_jax.classifier import ApplyFn, cross_entropy
from defuse_jax.vae import Generator

# (extra_data, key) -> (images [B, H, W, C], labels [B]).
ExtraSampler = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


def correction_loss(
    params: Any,
    apply_fn: ApplyFn,
    original_images: jax.Array,
    original_labels: jax.Array,
    extra_images: jax.Array,
    extra_labels: jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Return `(1 - lam) * CE(original) + lam * CE(extra)` and both cross-entropies.

    Args:
        params: Classifier params.
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        original_images: [B, H, W, C] batch of the original training data.
        original_labels: [B] its labels.
        extra_images: [E, H, W, C] region samples (or flips, for the baseline).
        extra_labels: [E] their annotated labels.
        lam: Weight of the extra batch, in [0, 1].
    """
    original_ce = cross_entropy(apply_fn(params, original_images), original_labels)
    extra_ce = cross_entropy(apply_fn(params, extra_images), extra_labels)
    loss = (1.0 - lam) * original_ce + lam * extra_ce
    return loss, {"original_ce": original_ce, "extra_ce": extra_ce}


class RegionSamplerData(NamedTuple):
    """Arrays the region sampler needs: generator params, region means [R, L],
    Cholesky factors of tau * covariance [R, L, L] and region labels [R]."""

    generator_params: Any
    means: jax.Array
    cholesky: jax.Array
    labels: jax.Array


def region_cholesky(covariances: np.ndarray, tau: float) -> jax.Array:
    """Cholesky factors [R, L, L] of tau * covariance, with a small jitter."""
    latent_dim = covariances.shape[-1]
    return jnp.linalg.cholesky(
        tau * jnp.asarray(covariances) + 1e-6 * jnp.eye(latent_dim)
    )


def make_region_sampler(generator: Generator, batch_size: int) -> ExtraSampler:
    """Return a sampler that draws a batch of decoded region samples, regions uniformly."""

    def sample(data: RegionSamplerData, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        region_key, normal_key = jax.random.split(key)
        region = jax.random.randint(region_key, (batch_size,), 0, data.means.shape[0])
        normal = jax.random.normal(normal_key, (batch_size, data.means.shape[1]))
        codes = data.means[region] + jnp.einsum(
            "bij,bj->bi", data.cholesky[region], normal
        )
        return generator.decode(data.generator_params, codes), data.labels[region]

    return sample


def make_pool_sampler(batch_size: int) -> ExtraSampler:
    """Return a sampler that draws a batch uniformly from fixed (images, labels) arrays."""

    def sample(
        data: tuple[jax.Array, jax.Array], key: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        images, labels = data
        rows = jax.random.randint(key, (batch_size,), 0, images.shape[0])
        return images[rows], labels[rows]

    return sample


def _fine_tune_step(
    state: train_state.TrainState,
    batch: tuple[jax.Array, ...],
    key: jax.Array,
    extra_data: Any,
    *,
    sampler: ExtraSampler,
    lam: float,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    images, labels = batch
    extra_images, extra_labels = sampler(extra_data, key)
    extra_images = jax.lax.stop_gradient(extra_images)

    def loss_fn(params):
        return correction_loss(
            params, state.apply_fn, images, labels, extra_images, extra_labels, lam
        )

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, **metrics}


def fine_tune(
    apply_fn: ApplyFn,
    classifier_params: Any,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    *,
    sampler: ExtraSampler,
    extra_data: Any,
    key: jax.Array,
    lam: float,
    num_steps: int,
    batch_size: int,
    learning_rate: float,
    name: str,
    writer: training.MetricWriter | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
) -> Any:
    """Fine-tune from `classifier_params` with the lambda-mixed loss; return new params.

    Args:
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        classifier_params: Starting params (the audited classifier's).
        train_images: [N, H, W, C] original training images.
        train_labels: [N] their labels.
        sampler: Draws the extra batch from `extra_data` and a key.
        extra_data: Arrays passed to `sampler` (passed as jit arguments, not constants).
        key: Key of the fine-tuning run.
        lam: Weight of the extra batch, in [0, 1].
        num_steps: Optimiser steps.
        batch_size: Original examples per step.
        learning_rate: Initial Adam learning rate; it follows a cosine decay to 0.
        name: Name for logs and metrics.
        writer: Metric writer.
        checkpoint_dir: Folder for progress checkpoints to resume from, or None.
        checkpoint_every: Steps between progress checkpoints; 0 saves none.
    """
    schedule = optax.cosine_decay_schedule(learning_rate, num_steps)
    state = train_state.TrainState.create(
        apply_fn=apply_fn, params=classifier_params, tx=optax.adam(schedule)
    )
    step = jax.jit(functools.partial(_fine_tune_step, sampler=sampler, lam=lam))
    state = training.train_loop(
        state,
        lambda s, b, k: step(s, b, k, extra_data),
        (train_images, train_labels),
        key=key,
        num_steps=num_steps,
        batch_size=batch_size,
        name=name,
        writer=writer,
        log_every=max(num_steps // 4, 1),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
    )
    return state.params


def _candidate_arrays(
    caller: str, lams: Any, accuracy: Any, region_accuracy: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the candidates' figures as float64 arrays, checked for one length."""
    arrays = tuple(
        np.asarray(values, dtype=np.float64)
        for values in (lams, accuracy, region_accuracy)
    )
    shapes = [array.shape for array in arrays]
    if not (arrays[0].ndim == 1 and shapes[0] == shapes[1] == shapes[2]):
        raise ValueError(
            f"{caller} needs three 1-D arrays of one length; got shapes "
            f"{shapes[0]}, {shapes[1]} and {shapes[2]}."
        )
    if arrays[0].size == 0:
        raise ValueError(f"{caller} needs at least one candidate lambda.")
    return arrays


def select_lambda(
    lams: Any,
    validation_accuracy: Any,
    validation_region_accuracy: Any,
    *,
    reference_accuracy: float,
    max_drop: float,
) -> int:
    """Index of the lambda to use, chosen on validation figures only.

    Among the lambdas whose validation accuracy is at least `reference_accuracy -
    max_drop`, take the one with the highest validation region accuracy, and the
    smallest lambda on a tie. When no lambda stays within `max_drop`, take the one
    with the highest validation accuracy: correction should then harm the least.

    Args:
        lams: [G] candidate lambdas.
        validation_accuracy: [G] validation accuracy after correction with each.
        validation_region_accuracy: [G] accuracy on held-out validation samples of
            the corrected regions after correction with each.
        reference_accuracy: Validation accuracy of the audited classifier.
        max_drop: Largest drop in validation accuracy allowed, as a fraction.
    """
    lams, accuracy, region_accuracy = _candidate_arrays(
        "select_lambda", lams, validation_accuracy, validation_region_accuracy
    )
    # A small tolerance, so that a drop of exactly max_drop counts as within it.
    eligible = accuracy >= reference_accuracy - max_drop - 1e-9
    if not eligible.any():
        candidates = np.flatnonzero(accuracy == accuracy.max())
    else:
        best = region_accuracy[eligible].max()
        candidates = np.flatnonzero(eligible & (region_accuracy == best))
    return int(candidates[np.argmin(lams[candidates])])


def match_lambda(
    lams: Any,
    validation_accuracy: Any,
    validation_region_accuracy: Any,
    *,
    target_region_accuracy: float,
) -> int:
    """Return the index of the cheapest lambda that reaches a target fix on validation.

    This gives a second method the lambda at which it fixes the regions as well as
    the first one does, so that the two can be compared on what the fix costs. Among
    the lambdas whose validation region accuracy reaches `target_region_accuracy`,
    take the one with the highest validation accuracy, and the smallest lambda on a
    tie. When none reaches it, take the one with the highest validation region
    accuracy (the smallest lambda on a tie): the closest the method gets.

    Args:
        lams: [G] candidate lambdas.
        validation_accuracy: [G] validation accuracy after correction with each.
        validation_region_accuracy: [G] validation region accuracy with each.
        target_region_accuracy: The validation region accuracy to reach, such as
            the one Defuse reached with its chosen lambda.
    """
    lams, accuracy, region_accuracy = _candidate_arrays(
        "match_lambda", lams, validation_accuracy, validation_region_accuracy
    )
    reaches = region_accuracy >= target_region_accuracy - 1e-9
    if reaches.any():
        best = accuracy[reaches].max()
        candidates = np.flatnonzero(reaches & (accuracy == best))
    else:
        candidates = np.flatnonzero(region_accuracy == region_accuracy.max())
    return int(candidates[np.argmin(lams[candidates])])
