"""Identification: perturb latent codes of real images and keep the decoded misclassifications.

For each source image the search encodes it to its posterior mean, adds Q noise vectors,
decodes the Q codes and classifies the decoded images. A decoded image whose predicted
label differs from the source label is a flip. At most `max_flips_per_image` flips per
image are kept, those with the smallest noise norm, selected inside the jitted batch call.

The search runs as one jitted call per batch of B images x Q perturbations, on a
`jax.sharding.Mesh` over the given devices with the batch split on its "data" axis. The
images may be any array-like indexed by row (a NumPy array, a `np.memmap`, a lazy
reader): the search reads one batch at a time, so host memory grows only with the kept
flips and device memory with the batch.

Noise for source image i comes from `fold_in(key, i)`, so the flips depend neither on
the batch size, nor on the number of devices, nor on where a resumed search restarts,
up to the float rounding of the models (see `identify`'s `mesh` argument).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, PartitionSpec

from defuse_jax import batching
from defuse_jax.classifier import ApplyFn
from defuse_jax.noise import (
    NOISE_TYPES,
    NoiseConfig,
    check_noise,
    sample_noise,
    scale_noise,
    unit_noise,
)
from defuse_jax.vae import Generator

__all__ = [
    "NOISE_TYPES",
    "Flips",
    "NoiseConfig",
    "identify",
    "minimal_radius",
    "sample_noise",
]

DATA_AXIS = "data"

# Decoded images per inner step on CPU (see `_predict`); accelerators decode a whole
# batch at once.
CPU_SAMPLES_PER_STEP = 512


def resolve_samples_per_step(samples_per_step: int | str | None) -> int | None:
    """Turn "auto" into 512 on CPU and None (whole batch) elsewhere; check the rest."""
    if samples_per_step == "auto":
        return CPU_SAMPLES_PER_STEP if jax.default_backend() == "cpu" else None
    if samples_per_step is None:
        return None
    if (
        isinstance(samples_per_step, bool)
        or not isinstance(samples_per_step, int | np.integer)
        or samples_per_step < 1
    ):
        raise ValueError(
            f'samples_per_step must be a positive integer, None or "auto", got '
            f"{samples_per_step!r}."
        )
    return int(samples_per_step)


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


class BatchFlips(NamedTuple):
    """Per-image top-k flips of one batch: codes [B, k, L]; the rest [B, k]; valid marks real flips."""

    codes: jax.Array
    predicted_label: jax.Array
    noise_norm: jax.Array
    valid: jax.Array


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """Build a one-axis mesh named "data" over `devices` (default: this process's devices)."""
    devices = jax.local_devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh got no devices; pass at least one jax.Device.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


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


def _unit_draws(
    key: jax.Array, indices: jax.Array, shape: tuple[int, int], noise: NoiseConfig
) -> jax.Array:
    """Unit-scale noise [B, Q, L] with image i's draws from `fold_in(key, indices[i])`."""
    return jax.vmap(lambda i: unit_noise(jax.random.fold_in(key, i), shape, noise))(
        indices
    )


def perturbations_per_step(
    num_images: int, num_perturbations: int, samples_per_step: int | None
) -> int:
    """Return how many of the Q perturbations of every image one inner step decodes.

    The largest divisor of Q whose steps hold at most `samples_per_step` decoded
    images (at least 1 perturbation per step); all Q when `samples_per_step` is None.
    """
    if samples_per_step is None:
        return num_perturbations
    fits = max(samples_per_step // max(num_images, 1), 1)
    return max(
        d
        for d in range(1, num_perturbations + 1)
        if num_perturbations % d == 0 and d <= fits
    )


def _predict(
    generator: Generator,
    apply_fn: ApplyFn,
    generator_params: Any,
    classifier_params: Any,
    codes: jax.Array,
    samples_per_step: int | None,
) -> jax.Array:
    """Classifier labels [B, Q] of the decoded codes [B, Q, L].

    The Q perturbations are decoded and classified in groups (`lax.map`), each group
    holding at most `samples_per_step` images: on CPU, steps of a few hundred images
    stay in cache and run about 1.4x faster than one step of B x Q.
    """
    batch_size, num_perturbations, latent_dim = codes.shape
    group = perturbations_per_step(batch_size, num_perturbations, samples_per_step)

    def classify(group_codes: jax.Array) -> jax.Array:  # [group, B, L] -> [group, B]
        decoded = generator.decode(
            generator_params, group_codes.reshape(-1, latent_dim)
        )
        predicted = jnp.argmax(apply_fn(classifier_params, decoded), axis=-1)
        return predicted.reshape(group, batch_size).astype(jnp.int32)

    by_group = jnp.swapaxes(codes, 0, 1).reshape(
        num_perturbations // group, group, batch_size, latent_dim
    )
    predicted = jax.lax.map(classify, by_group)  # [Q / group, group, B]
    return predicted.reshape(num_perturbations, batch_size).T


def _norm_in_order(vectors: jax.Array) -> jax.Array:
    """Euclidean norm over the last axis, summed in index order.

    A reduction (`jnp.linalg.norm`) may sum in a different order for a different batch
    shape, which changes the last bit between a sharded and a one-device search. Adding
    the squares one coordinate at a time keeps every norm the same for any batch split.
    """
    squares = vectors * vectors
    total = squares[..., 0]
    for column in range(1, vectors.shape[-1]):
        total = total + squares[..., column]
    return jnp.sqrt(total)


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
    samples_per_step: int | None = None,
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
        samples_per_step: At most this many decoded images per inner step (see
            `_predict`); None decodes all B x Q at once.

    Returns:
        BatchFlips with k slots per image, sorted by noise norm; unused slots have
        valid False.
    """
    means, _ = generator.encode(generator_params, images)
    unit = _unit_draws(key, indices, (num_perturbations, means.shape[1]), noise)
    image_noise = scale_noise(unit, noise.scale, noise.kind)
    codes = means[:, None, :] + image_noise  # [B, Q, L]
    norms = _norm_in_order(image_noise)
    predicted = _predict(
        generator,
        apply_fn,
        generator_params,
        classifier_params,
        codes,
        samples_per_step,
    )
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


def radius_batch(
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
    scales: tuple[float, ...],
    noise: NoiseConfig,
    samples_per_step: int | None = None,
) -> jax.Array:
    """Index [B] of the smallest scale in `scales` at which each image has a flip.

    Every scale perturbs an image along the same Q unit draws (from
    `fold_in(key, indices[i])`), scaled. The scales run one after another inside the
    call (`lax.map`), so device memory contains one B x Q batch of decoded images at a time.
    Images with no flip at any scale, and padding rows, get `len(scales)`.
    """
    means, _ = generator.encode(generator_params, images)
    unit = _unit_draws(key, indices, (num_perturbations, means.shape[1]), noise)

    def flips_at(scale: jax.Array) -> jax.Array:
        codes = means[:, None, :] + scale_noise(unit, scale, noise.kind)
        predicted = _predict(
            generator,
            apply_fn,
            generator_params,
            classifier_params,
            codes,
            samples_per_step,
        )
        return jnp.any(predicted != labels[:, None], axis=1) & mask

    hits = jax.lax.map(flips_at, jnp.asarray(scales, jnp.float32))  # [S, B]
    first = jnp.argmax(hits, axis=0).astype(jnp.int32)
    return jnp.where(jnp.any(hits, axis=0), first, len(scales))


def _jit_on_mesh(batch_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """Jit a batch function of (params, params, 4 row arrays, key) on `mesh`.

    Under `shard_map` every device runs `batch_fn` on its own rows of the batch with
    the params and key replicated. The search needs no communication between devices.
    """
    rows, replicated = PartitionSpec(DATA_AXIS), PartitionSpec()
    return jax.jit(
        jax.shard_map(
            batch_fn,
            mesh=mesh,
            in_specs=(replicated, replicated, rows, rows, rows, rows, replicated),
            out_specs=rows,
        )
    )


@functools.lru_cache(maxsize=32)
def make_search_fn(
    generator: Generator,
    apply_fn: ApplyFn,
    *,
    num_perturbations: int,
    max_flips_per_image: int,
    noise: NoiseConfig,
    mesh: Mesh | None = None,
    samples_per_step: int | str | None = "auto",
) -> Callable[..., BatchFlips]:
    """Return `search_batch` with its static settings bound, jitted on `mesh`.

    Cached: searches with the same settings share one compilation per batch shape.
    """
    bound = functools.partial(
        search_batch,
        generator=generator,
        apply_fn=apply_fn,
        num_perturbations=num_perturbations,
        max_flips_per_image=max_flips_per_image,
        noise=noise,
        samples_per_step=resolve_samples_per_step(samples_per_step),
    )
    return _jit_on_mesh(bound, data_mesh() if mesh is None else mesh)


def _mesh_batch_size(batch_size: int, mesh: Mesh, what: str) -> int:
    """Round `batch_size` up to a multiple of the mesh size, saying so when it changes."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    rounded = -(-batch_size // mesh.size) * mesh.size
    if rounded != batch_size:
        logging.info(
            "%s: batch size %d rounded up to %d, a multiple of the %d devices.",
            what,
            batch_size,
            rounded,
            mesh.size,
        )
    return rounded


def _check_search_inputs(
    what: str,
    images: Any,
    labels: np.ndarray,
    source_indices: np.ndarray | None,
    num_perturbations: int,
) -> np.ndarray:
    """Validate the shared inputs and return the source indices as int32."""
    num_images = len(images)
    if len(labels) != num_images:
        raise ValueError(
            f"{what} got {num_images} images but {len(labels)} labels; pass one label "
            "per image."
        )
    if (
        isinstance(num_perturbations, bool)
        or not isinstance(num_perturbations, int | np.integer)
        or num_perturbations < 1
    ):
        raise ValueError(
            f"num_perturbations must be a positive integer, got {num_perturbations!r}."
        )
    if source_indices is None:
        return np.arange(num_images, dtype=np.int32)
    source_indices = np.asarray(source_indices)
    if source_indices.shape != (num_images,):
        raise ValueError(
            f"source_indices has shape {source_indices.shape}; pass one index per "
            f"image, shape ({num_images},)."
        )
    return source_indices.astype(np.int32)


def _batches(
    images: Any,
    labels: np.ndarray,
    source_indices: np.ndarray,
    batch_size: int,
    start: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]]:
    """Yield (rows, mask, (images, labels, indices, mask)) batches from image `start` on.

    Only one batch of images is read at a time, so `images` may be a memory map or a
    lazy reader. Padding rows repeat row `start`.
    """
    for offsets, mask in batching.padded_index_batches(
        len(source_indices) - start, batch_size
    ):
        rows = offsets + start
        batch_images = np.asarray(images[rows], dtype=np.float32)
        yield (
            rows,
            mask,
            (batch_images, labels[rows].astype(np.int32), source_indices[rows], mask),
        )


class _Progress:
    """Logs images per second and time left at most every `every_seconds` seconds."""

    def __init__(
        self, what: str, total: int, done: int, per_image: int, every_seconds: float
    ):
        self.what, self.total, self.per_image = what, total, per_image
        self.every_seconds = every_seconds
        self.first_done = self.done = done
        self.start = self.last = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last > self.every_seconds and self.done < self.total:
            rate = (self.done - self.first_done) / (now - self.start)
            logging.info(
                "%s: %d/%d images, %.0f images/s (%.0f samples/s), %.0f s left.",
                self.what,
                self.done,
                self.total,
                rate,
                rate * self.per_image,
                (self.total - self.done) / rate,
            )
            self.last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def identify(
    generator_params: Any,
    classifier_params: Any,
    images: Any,
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
    mesh: Mesh | None = None,
    samples_per_step: int | str | None = "auto",
    log_every_seconds: float = 15.0,
    resume: tuple[int, Flips] | None = None,
    on_progress: Callable[[int, Flips], None] | None = None,
    progress_every: int = 0,
) -> Flips:
    """Stream the search over `images` in fixed-shape batches and collect the flips.

    Every given image is searched: pass only images the classifier labels correctly
    (the pipeline does), or a misclassified source yields "flips" that merely repeat
    the classifier's existing error.

    Args:
        generator_params: VAE params.
        classifier_params: Classifier params.
        images: [N, H, W, C] images in [0, 1], any array-like indexed by row arrays.
        labels: [N] their labels.
        key: Search key.
        generator: encode/decode functions.
        apply_fn: Classifier `apply_fn(params, images) -> logits`.
        num_perturbations: Q, perturbations per image.
        max_flips_per_image: Flips kept per image, smallest noise norm first.
        noise: Noise family and scale.
        batch_size: Source images per jitted call, rounded up to a multiple of the
            number of devices.
        source_indices: [N] row numbers recorded in `Flips.source_index` (and used to
            seed each image's noise); defaults to arange(N).
        mesh: Devices to search on, the batch split on the "data" axis; defaults to all
            of this process's devices. The noise and the flip selection do not
            depend on the mesh. The decoded images can differ by float rounding,
            because XLA may sum a convolution in another order for another
            per-device batch. With the default models the flips are bit for bit
            the same on 1 and 4 devices (tests/test_sharding.py).
        samples_per_step: Decoded images per inner step of a jitted call: "auto" is
            512 on CPU (cache-sized steps) and the whole batch on accelerators.
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
    source_indices = _check_search_inputs(
        "identify", images, labels, source_indices, num_perturbations
    )
    check_noise(noise)
    num_images = len(source_indices)
    mesh = data_mesh() if mesh is None else mesh
    batch_size = _mesh_batch_size(batch_size, mesh, "identify")
    search_fn = make_search_fn(
        generator,
        apply_fn,
        num_perturbations=num_perturbations,
        max_flips_per_image=max_flips_per_image,
        noise=noise,
        mesh=mesh,
        samples_per_step=samples_per_step,
    )
    logging.info(
        "identify: searching %d images x %d perturbations (batch %d on %d devices, "
        "noise %s scale %.3g).",
        num_images,
        num_perturbations,
        batch_size,
        mesh.size,
        noise.kind,
        noise.scale,
    )
    parts: list[tuple[np.ndarray, ...]] = []
    done = 0
    if resume is not None:
        done, previous = resume
        if not 0 <= done <= num_images:
            raise ValueError(
                f"resume starts at image {done}, outside the {num_images} images of "
                "this search; resume only from an on_progress call of the same search."
            )
        parts.append(tuple(previous))
        logging.info(
            "identify: resuming after %d of %d images (%d flips so far).",
            done,
            num_images,
            previous.size,
        )
    progress = _Progress(
        "identify", num_images, done, num_perturbations, log_every_seconds
    )
    for batch_index, (rows, mask, batch) in enumerate(
        _batches(images, labels, source_indices, batch_size, done)
    ):
        result = jax.device_get(
            search_fn(generator_params, classifier_params, *batch, key)
        )
        valid = result.valid
        image_slot = rows[np.nonzero(valid)[0]]
        parts.append(
            (
                result.codes[valid],
                source_indices[image_slot],
                labels[image_slot].astype(np.int32),
                result.predicted_label[valid],
                result.noise_norm[valid],
            )
        )
        progress.advance(int(mask.sum()))
        if (
            on_progress is not None
            and progress_every
            and (batch_index + 1) % progress_every == 0
            and progress.done < num_images
        ):
            on_progress(progress.done, _concatenate(parts))
    elapsed = progress.elapsed()
    if not parts:
        return empty_flips(_latent_dim(generator, generator_params, images))
    flips = _concatenate(parts)
    logging.info(
        "identify: %d flips from %d of %d images in %.1f s (%.0f samples/s).",
        flips.size,
        len(np.unique(flips.source_index)),
        num_images,
        elapsed,
        (num_images - progress.first_done) * num_perturbations / max(elapsed, 1e-9),
    )
    return flips


def _latent_dim(generator: Generator, generator_params: Any, images: Any) -> int:
    example = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
    return jax.eval_shape(generator.encode, generator_params, example)[0].shape[1]


def _concatenate(parts: list[tuple[np.ndarray, ...]]) -> Flips:
    return Flips(*(np.concatenate(column) for column in zip(*parts, strict=True)))


@functools.lru_cache(maxsize=32)
def _make_radius_fn(
    generator: Generator,
    apply_fn: ApplyFn,
    *,
    num_perturbations: int,
    scales: tuple[float, ...],
    noise: NoiseConfig,
    mesh: Mesh,
    samples_per_step: int | None,
) -> Callable[..., jax.Array]:
    """Return `radius_batch` with its static settings bound, jitted on `mesh`."""
    bound = functools.partial(
        radius_batch,
        generator=generator,
        apply_fn=apply_fn,
        num_perturbations=num_perturbations,
        scales=scales,
        noise=noise,
        samples_per_step=samples_per_step,
    )
    return _jit_on_mesh(bound, mesh)


def radius_scales(smallest: float, largest: float, steps: int) -> np.ndarray:
    """Return the geometric grid of `steps` noise scales from `smallest` to `largest`."""
    if not (0 < smallest <= largest and math.isfinite(largest)):
        raise ValueError(
            f"radius scales need 0 < smallest <= largest < inf, got smallest={smallest} "
            f"and largest={largest}."
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"radius steps must be a positive integer, got {steps!r}.")
    return np.geomspace(smallest, largest, steps).astype(np.float32)


def minimal_radius(
    generator_params: Any,
    classifier_params: Any,
    images: Any,
    labels: np.ndarray,
    key: jax.Array,
    *,
    generator: Generator,
    apply_fn: ApplyFn,
    num_perturbations: int,
    scales: np.ndarray,
    noise: NoiseConfig,
    batch_size: int = 64,
    source_indices: np.ndarray | None = None,
    mesh: Mesh | None = None,
    samples_per_step: int | str | None = "auto",
    log_every_seconds: float = 15.0,
) -> np.ndarray:
    """Per image, the smallest noise scale on the grid `scales` at which a flip appears.

    Each image gets Q unit draws of `noise`'s family (its `scale` is ignored), tried at
    every scale of the grid in increasing order, in the same batched, sharded and
    streamed way as `identify`. With "beta_uncentred" noise every scale also shifts
    the code by +0.5 per dimension, so the radius then measures that shift as much as
    a distance.

    Returns:
        [N] float32 radius per image: the first scale with a flip, or inf when no
        perturbation flips the image up to the largest scale.
    """
    source_indices = _check_search_inputs(
        "minimal_radius", images, labels, source_indices, num_perturbations
    )
    scales = np.asarray(scales, np.float32)
    if scales.ndim != 1 or not scales.size or np.any(np.diff(scales) <= 0):
        raise ValueError(
            f"scales must be a 1-D increasing grid such as radius_scales(0.05, 2, 8), "
            f"got {scales!r}."
        )
    check_noise(noise._replace(scale=float(scales[-1])))
    mesh = data_mesh() if mesh is None else mesh
    batch_size = _mesh_batch_size(batch_size, mesh, "radius")
    radius_fn = _make_radius_fn(
        generator,
        apply_fn,
        num_perturbations=num_perturbations,
        scales=tuple(float(s) for s in scales),
        noise=noise,
        mesh=mesh,
        samples_per_step=resolve_samples_per_step(samples_per_step),
    )
    num_images = len(source_indices)
    logging.info(
        "radius: %d images x %d perturbations at %d scales from %.3g to %.3g.",
        num_images,
        num_perturbations,
        len(scales),
        scales[0],
        scales[-1],
    )
    progress = _Progress(
        "radius", num_images, 0, num_perturbations * len(scales), log_every_seconds
    )
    found = np.zeros(num_images, np.int32)
    for rows, mask, batch in _batches(images, labels, source_indices, batch_size, 0):
        first = np.asarray(radius_fn(generator_params, classifier_params, *batch, key))
        found[rows[mask]] = first[mask]
        progress.advance(int(mask.sum()))
    with_inf = np.append(scales, np.float32(np.inf))
    return with_inf[found]


def radius_summary(
    radius: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    scales: np.ndarray,
) -> dict[str, Any]:
    """Per-class median radius and fraction of images with no flip up to the largest scale.

    A median is None when half or more of the class has no flip on the grid.
    """

    def summarise(values: np.ndarray) -> dict[str, Any]:
        if not values.size:
            return {"images": 0, "median_radius": None, "fraction_no_flip": None}
        median = float(np.median(values))
        return {
            "images": int(values.size),
            "median_radius": median if math.isfinite(median) else None,
            "fraction_no_flip": float(np.mean(~np.isfinite(values))),
        }

    return {
        "scales": [float(s) for s in scales],
        "all": summarise(radius),
        "per_class": {
            name: summarise(radius[labels == label])
            for label, name in enumerate(class_names)
        },
    }
