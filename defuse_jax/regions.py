"""Misclassification regions: sampling from mixture components and per-region statistics.

A region is a kept mixture component, a Gaussian N(mean, covariance) in latent space.
New members are drawn from N(mean, tau * covariance) and decoded; tau < 1 concentrates
samples near the centre of the region.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import batching
from defuse_jax.classifier import ApplyFn
from defuse_jax.identify import Flips
from defuse_jax.vae import Generator


class Regions(NamedTuple):
    """Kept mixture components with per-region statistics; every field has R rows.

    component: [R] index of the mixture component.
    weight: [R] mixture weight.
    mean: [R, L] latent mean.
    covariance: [R, L, L] latent covariance.
    member_count: [R] flips hard-assigned to the component.
    source_label: [R] majority source label of the members.
    source_purity: [R] fraction of members with the majority source label.
    predicted_label: [R] majority predicted label of the members.
    predicted_purity: [R] fraction of members with the majority predicted label.
    sample_error_rate: [R] fraction of fresh decoded samples whose prediction differs
        from `source_label`.
    """

    component: np.ndarray
    weight: np.ndarray
    mean: np.ndarray
    covariance: np.ndarray
    member_count: np.ndarray
    source_label: np.ndarray
    source_purity: np.ndarray
    predicted_label: np.ndarray
    predicted_purity: np.ndarray
    sample_error_rate: np.ndarray

    @property
    def size(self) -> int:
        return int(self.component.shape[0])


def sample_codes(
    key: jax.Array,
    means: jax.Array,
    covariances: jax.Array,
    *,
    tau: float,
    num_samples: int,
) -> jax.Array:
    """Draw `num_samples` codes from N(mean, tau * covariance) for each region.

    Args:
        key: PRNG key.
        means: [R, L] region means.
        covariances: [R, L, L] region covariances.
        tau: Covariance multiplier, > 0.
        num_samples: Samples per region.

    Returns:
        Codes [R, num_samples, L].
    """
    latent_dim = means.shape[-1]
    jitter = 1e-6 * jnp.eye(latent_dim)
    cholesky = jnp.linalg.cholesky(tau * covariances + jitter)  # [R, L, L]
    normal = jax.random.normal(key, (means.shape[0], num_samples, latent_dim))
    return means[:, None, :] + jnp.einsum("rij,rnj->rni", cholesky, normal)


def decode_and_classify(
    generator: Generator,
    generator_params: Any,
    apply_fn: ApplyFn,
    classifier_params: Any,
    codes: np.ndarray,
    *,
    batch_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode codes [N, L] and classify them in fixed-shape batches.

    Returns:
        Decoded images [N, H, W, C] and predicted labels [N] int32, as numpy arrays.
    """
    return batching.map_batched(
        lambda batch: _decode_and_classify_batch(
            generator.decode, apply_fn, generator_params, classifier_params, batch
        ),
        (np.asarray(codes),),
        batch_size,
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_and_classify_batch(
    decode: Any,
    apply_fn: ApplyFn,
    generator_params: Any,
    classifier_params: Any,
    codes: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    images = decode(generator_params, codes)
    predicted = jnp.argmax(apply_fn(classifier_params, images), axis=-1)
    return images, predicted.astype(jnp.int32)


def decode_codes(
    generator: Generator,
    generator_params: Any,
    codes: np.ndarray,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Decode codes [N, L] to images [N, H, W, C] in fixed-shape batches."""
    decode = jax.jit(generator.decode)
    return batching.map_batched(
        lambda batch: decode(generator_params, batch), (np.asarray(codes),), batch_size
    )


def _majority(values: np.ndarray, num_classes: int) -> tuple[int, float]:
    counts = np.bincount(values, minlength=num_classes)
    label = int(np.argmax(counts))
    return label, float(counts[label] / max(len(values), 1))


def build_regions(
    key: jax.Array,
    *,
    weights: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    selected: np.ndarray,
    assignments: np.ndarray,
    flips: Flips,
    num_classes: int,
    generator: Generator,
    generator_params: Any,
    apply_fn: ApplyFn,
    classifier_params: Any,
    tau: float,
    num_samples: int,
) -> Regions:
    """Compute the statistics of the selected mixture components.

    Args:
        key: Key for the fresh samples that measure each region's error rate.
        weights: [K] mixture weights.
        means: [K, L] component means.
        covariances: [K, L, L] component covariances.
        selected: [R] indices of the kept components.
        assignments: [M] component of each flip.
        flips: The flips the mixture was fit to.
        num_classes: Number of classifier classes.
        generator: encode/decode functions.
        generator_params: VAE params.
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        classifier_params: Classifier params.
        tau: Covariance multiplier for fresh samples.
        num_samples: Fresh samples per region for the error rate.

    Returns:
        Regions in the order of `selected`.
    """
    selected = np.asarray(selected, np.int64)
    rows = []
    for component in selected:
        members = assignments == component
        source_label, source_purity = _majority(
            flips.source_label[members], num_classes
        )
        predicted_label, predicted_purity = _majority(
            flips.predicted_label[members], num_classes
        )
        rows.append(
            (
                int(members.sum()),
                source_label,
                source_purity,
                predicted_label,
                predicted_purity,
            )
        )
    columns = list(zip(*rows)) if rows else [[] for _ in range(5)]
    region_means = np.asarray(means)[selected]
    region_covariances = np.asarray(covariances)[selected]
    source_labels = np.asarray(columns[1], np.int32)

    error_rates = np.zeros(len(selected), np.float32)
    if len(selected):
        codes = sample_codes(
            key,
            jnp.asarray(region_means),
            jnp.asarray(region_covariances),
            tau=tau,
            num_samples=num_samples,
        )
        _, predicted = decode_and_classify(
            generator,
            generator_params,
            apply_fn,
            classifier_params,
            np.asarray(codes).reshape(-1, region_means.shape[-1]),
        )
        predicted = predicted.reshape(len(selected), num_samples)
        error_rates = np.mean(predicted != source_labels[:, None], axis=1).astype(
            np.float32
        )

    regions = Regions(
        component=selected.astype(np.int32),
        weight=np.asarray(weights)[selected].astype(np.float32),
        mean=region_means.astype(np.float32),
        covariance=region_covariances.astype(np.float32),
        member_count=np.asarray(columns[0], np.int32),
        source_label=source_labels,
        source_purity=np.asarray(columns[2], np.float32),
        predicted_label=np.asarray(columns[3], np.int32),
        predicted_purity=np.asarray(columns[4], np.float32),
        sample_error_rate=error_rates,
    )
    for r in range(regions.size):
        logging.info(
            "region %d (component %d): weight %.3f, %d members, %d -> %d, "
            "sample error rate %.2f.",
            r,
            regions.component[r],
            regions.weight[r],
            regions.member_count[r],
            regions.source_label[r],
            regions.predicted_label[r],
            regions.sample_error_rate[r],
        )
    return regions
