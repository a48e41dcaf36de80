"""Identification: perturb latent codes of real images and keep the decoded misclassifications.

For each source image the search encodes it to its posterior mean, adds Q noise vectors,
decodes the Q codes and classifies the decoded images. A decoded image whose predicted
label differs from the source label is a flip. At most `max_flips_per_image` flips per
image are kept, those with the smallest noise norm, selected inside the jitted batch call.

Noise for source image i comes from `fold_in(key, i)`, so the flips do not depend on the
batch size or on how the images are split into batches.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import batching
from defuse_jax.classifier import ApplyFn
from defuse_jax.vae import Generator

NOISE_TYPES = ("gaussian", "beta")


class Flips(NamedTuple):
    """Decoded latent perturbations that the classifier labels differently from the source.

    codes: [M, L] float32 perturbed latent codes.
    source_index: [M] int32 row of the source image in the searched split.
    source_label: [M] int32 label of the source image.
    predicted_label: [M] int32 classifier prediction on the decoded code.
    noise_norm: [M] float32 Euclidean norm of the added noise.
    """

    codes: np.ndarray
    source_index: np.ndarray
    source_label: np.ndarray
    predicted_label: np.ndarray
    noise_norm: np.ndarray

    @property
    def size(self) -> int:
        return int(self.codes.shape[0])


def empty_flips(latent_dim: int) -> Flips:
    """Return a Flips record with no rows."""
    integers = np.zeros(0, np.int32)
    return Flips(
        np.zeros((0, latent_dim), np.float32),
        integers,
        integers,
        integers,
        np.zeros(0, np.float32),
    )


class NoiseConfig(NamedTuple):
    """Latent noise family.

    kind: "gaussian" draws N(0, scale^2) per dimension. "beta" draws Beta(a, a) per
        dimension, centred (minus 0.5) and rescaled so its standard deviation is `scale`;
        Beta(a, a) has variance 1 / (4 (2a + 1)).
    scale: Standard deviation per latent dimension.
    beta_a: The shape a of Beta(a, a); used only by "beta".
    """

    kind: str = "gaussian"
    scale: float = 1.0
    beta_a: float = 2.0


def sample_noise(
    key: jax.Array, shape: tuple[int, ...], noise: NoiseConfig
) -> jax.Array:
    """Draw zero-mean latent noise of the given shape and per-dimension std `noise.scale`."""
    if noise.kind == "gaussian":
        return noise.scale * jax.random.normal(key, shape)
    if noise.kind == "beta":
        draws = jax.random.beta(key, noise.beta_a, noise.beta_a, shape)
        beta_std = 1.0 / np.sqrt(4.0 * (2.0 * noise.beta_a + 1.0))
        return (draws - 0.5) * (noise.scale / beta_std)
    raise ValueError(f"Unknown noise kind {noise.kind!r}; use one of {NOISE_TYPES}.")


class BatchFlips(NamedTuple):
    """Per-image top-k flips of one batch: codes [B, k, L]; the rest [B, k]; valid marks real flips."""

    codes: jax.Array
    predicted_label: jax.Array
    noise_norm: jax.Array
    valid: jax.Array


def encode_means(
    generator: Generator,
    generator_params: Any,
    images: np.ndarray,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Encode images [N, H, W, C] to their posterior means [N, L] in fixed-shape batches."""
    return batching.map_batched(
        lambda batch: _encode_mean_batch(generator.encode, generator_params, batch),
        (images,),
        batch_size,
    )


@functools.partial(jax.jit, static_argnums=0)
def _encode_mean_batch(
    encode: Any, generator_params: Any, images: jax.Array
) -> jax.Array:
    return encode(generator_params, images)[0]


def search_batch(
    generator_params: Any,
    classifier_params: Any,
    images: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    mask: jax.Array,
    key: jax.Array,
    *,
    generator: Generator,
    apply_fn: ApplyFn,
    num_perturbations: int,
    max_flips_per_image: int,
    noise: NoiseConfig,
) -> BatchFlips:
    """Search one fixed-shape batch of B images with Q perturbations each.

    Args:
        generator_params: VAE params.
        classifier_params: Classifier params.
        images: [B, H, W, C] source images.
        labels: [B] source labels.
        indices: [B] row of each image in the searched split; seeds its noise.
        mask: [B] bool, False on padding rows (they yield no flips).
        key: Search key; image i uses `fold_in(key, indices[i])`.
        generator: encode/decode functions.
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        num_perturbations: Q.
        max_flips_per_image: k, the number of smallest-noise flips kept per image.
        noise: Noise family and scale.

    Returns:
        BatchFlips with k slots per image, sorted by noise norm; unused slots have
        valid False.
    """
    means, _ = generator.encode(generator_params, images)
    batch_size, latent_dim = means.shape

    def perturb_one(mean, index):
        image_noise = sample_noise(
            jax.random.fold_in(key, index), (num_perturbations, latent_dim), noise
        )
        return mean[None, :] + image_noise, jnp.linalg.norm(image_noise, axis=-1)

    codes, norms = jax.vmap(perturb_one)(means, indices)  # [B, Q, L], [B, Q]
    decoded = generator.decode(generator_params, codes.reshape(-1, latent_dim))
    predicted = jnp.argmax(apply_fn(classifier_params, decoded), axis=-1)
    predicted = predicted.reshape(batch_size, num_perturbations).astype(jnp.int32)

    is_flip = (predicted != labels[:, None]) & mask[:, None]
    score = jnp.where(is_flip, norms, jnp.inf)
    keep = min(max_flips_per_image, num_perturbations)
    neg_score, order = jax.lax.top_k(-score, keep)  # smallest norms first
    take = functools.partial(jnp.take_along_axis, indices=order, axis=1)
    return BatchFlips(
        codes=jnp.take_along_axis(codes, order[:, :, None], axis=1),
        predicted_label=take(predicted),
        noise_norm=take(norms),
        valid=jnp.isfinite(neg_score),
    )


def make_search_fn(
    generator: Generator,
    apply_fn: ApplyFn,
    *,
    num_perturbations: int,
    max_flips_per_image: int,
    noise: NoiseConfig,
) -> Callable[..., BatchFlips]:
    """Return `search_batch` jitted once with its static settings bound."""
    return jax.jit(
        functools.partial(
            search_batch,
            generator=generator,
            apply_fn=apply_fn,
            num_perturbations=num_perturbations,
            max_flips_per_image=max_flips_per_image,
            noise=noise,
        )
    )


def identify(
    generator_params: Any,
    classifier_params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    *,
    generator: Generator,
    apply_fn: ApplyFn,
    num_perturbations: int,
    max_flips_per_image: int,
    noise: NoiseConfig,
    batch_size: int = 64,
    source_indices: np.ndarray | None = None,
    log_every_seconds: float = 15.0,
    resume: tuple[int, Flips] | None = None,
    on_progress: Callable[[int, Flips], None] | None = None,
    progress_every: int = 0,
) -> Flips:
    """Stream the search over `images` in fixed-shape batches and collect the flips.

    Host memory grows only with the kept flips; device memory is bounded by one batch
    of B x Q decoded images. Every given image is searched: pass only images the
    classifier labels correctly (the pipeline does), or a misclassified source yields
    "flips" that merely repeat the classifier's existing error.

    Args:
        generator_params: VAE params.
        classifier_params: Classifier params.
        images: [N, H, W, C] images to search.
        labels: [N] their labels.
        key: Search key.
        generator: encode/decode functions.
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        num_perturbations: Q, perturbations per image.
        max_flips_per_image: Flips kept per image, smallest noise norm first.
        noise: Noise family and scale.
        batch_size: Source images per jitted call.
        source_indices: [N] row numbers recorded in `Flips.source_index` (and used to
            seed each image's noise); defaults to arange(N).
        log_every_seconds: Seconds between progress log lines.
        resume: `(num_done, flips)` from an earlier `on_progress` call of this same
            search: the first `num_done` images are skipped and `flips` are kept. Each
            image's noise depends only on the key and its source index, so the result
            equals that of an uninterrupted search.
        on_progress: Called as `on_progress(num_done, flips_so_far)` every
            `progress_every` batches, for example to save a checkpoint.
        progress_every: Batches between `on_progress` calls; 0 never calls it.

    Returns:
        The Flips of all images, ordered by source index, then noise norm.
    """
    num_images = len(images)
    if len(labels) != num_images:
        raise ValueError(
            f"identify got {num_images} images but {len(labels)} labels; pass one label "
            "per image."
        )
    if source_indices is None:
        source_indices = np.arange(num_images, dtype=np.int32)
    search_fn = make_search_fn(
        generator,
        apply_fn,
        num_perturbations=num_perturbations,
        max_flips_per_image=max_flips_per_image,
        noise=noise,
    )
    logging.info(
        "identify: searching %d images x %d perturbations (batch %d, noise %s scale %.3g).",
        num_images,
        num_perturbations,
        batch_size,
        noise.kind,
        noise.scale,
    )
    parts: list[tuple[np.ndarray, ...]] = []
    done = 0
    if resume is not None:
        done, previous = resume
        if done % batch_size or not 0 <= done <= num_images:
            raise ValueError(
                f"resume starts at image {done}, which is not a batch boundary of "
                f"{num_images} images in batches of {batch_size}; resume only from an "
                "on_progress call of the same search."
            )
        parts.append(tuple(previous))
        logging.info(
            "identify: resuming after %d of %d images (%d flips so far).",
            done,
            num_images,
            previous.size,
        )
    first_done = done
    start = last_log = time.perf_counter()
    for batch_index, (rows, mask) in enumerate(
        batching.padded_index_batches(num_images, batch_size)
    ):
        if batch_index * batch_size < first_done:
            continue
        result = search_fn(
            generator_params,
            classifier_params,
            images[rows],
            labels[rows],
            source_indices[rows].astype(np.int32),
            mask,
            key,
        )
        valid = np.asarray(result.valid)
        image_slot = np.nonzero(valid)[0]
        parts.append(
            (
                np.asarray(result.codes)[valid],
                source_indices[rows][image_slot].astype(np.int32),
                labels[rows][image_slot].astype(np.int32),
                np.asarray(result.predicted_label)[valid],
                np.asarray(result.noise_norm)[valid],
            )
        )
        done += int(mask.sum())
        if (
            on_progress is not None
            and progress_every
            and (batch_index + 1) % progress_every == 0
            and done < num_images
        ):
            on_progress(done, _concatenate(parts))
        now = time.perf_counter()
        if now - last_log > log_every_seconds:
            rate = (done - first_done) / (now - start)
            logging.info(
                "identify: %d/%d images, %.0f images/s (%.0f samples/s), %.0f s left.",
                done,
                num_images,
                rate,
                rate * num_perturbations,
                (num_images - done) / rate,
            )
            last_log = now
    elapsed = time.perf_counter() - start
    if not parts:
        example = jnp.zeros((1, *images.shape[1:]), jnp.float32)
        latent_dim = jax.eval_shape(generator.encode, generator_params, example)[
            0
        ].shape[1]
        return empty_flips(latent_dim)
    flips = _concatenate(parts)
    logging.info(
        "identify: %d flips from %d of %d images in %.1f s (%.0f samples/s).",
        flips.size,
        len(np.unique(flips.source_index)),
        num_images,
        elapsed,
        (num_images - first_done) * num_perturbations / max(elapsed, 1e-9),
    )
    return flips


def _concatenate(parts: list[tuple[np.ndarray, ...]]) -> Flips:
    return Flips(*(np.concatenate(column) for column in zip(*parts)))
