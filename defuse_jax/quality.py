"""Novelty and realism of misclassification regions, measured in the VAE's latent space.

Novelty measures whether a region shows errors the training set already contains. It is the
distance from the region's samples to the nearest latent code of a training image that
the classifier misclassifies, in units of the typical nearest-neighbour distance among
training codes. A ratio near 0 puts the region on top of known training errors, and a
ratio well above 1 puts it farther from every known error than training codes usually
are from each other.

Realism measures whether decoded region samples look like images the VAE has learned. It is
the reconstruction error of the samples, x -> decode(encode_mean(x)), measured as the
mean squared error per pixel on the [0, 1] scale, divided by the same error on real test
images. The pixel error is independent of the VAE's likelihood (Bernoulli or Gaussian),
so runs with either likelihood compare. Decoded samples lie on the decoder's image
manifold, so they usually reconstruct better than real images and the ratio is usually
below 1; a ratio well above 1 marks samples that the VAE cannot reproduce.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from defuse_jax import batching, identify
from defuse_jax import regions as regions_lib
from defuse_jax.vae import Generator


def nearest_distances(
    queries: np.ndarray,
    references: np.ndarray,
    *,
    query_indices: np.ndarray | None = None,
    query_block: int = 256,
    reference_block: int = 1024,
) -> np.ndarray:
    """Return the Euclidean distance from each query to its nearest reference.

    The search runs over blocks of `query_block` x `reference_block` pairs, so memory is
    bounded by one block, and every block has the same shape, so it compiles once.

    Args:
        queries: [N, L] points.
        references: [M, L] points, M >= 1.
        query_indices: Optional [N] row of each query in `references`, for queries
            drawn from the references themselves: the pair of a query with its own row
            is skipped, so each query gets the distance to its nearest other point.
        query_block: Queries per block.
        reference_block: References per block.

    Returns:
        [N] float32 distances; inf for a query whose only reference is itself.
    """
    queries = np.asarray(queries, np.float32)
    references = np.asarray(references, np.float32)
    if queries.ndim != 2 or references.ndim != 2:
        raise ValueError(
            f"nearest_distances needs 2-D arrays, got queries of shape {queries.shape} "
            f"and references of shape {references.shape}."
        )
    if queries.shape[1] != references.shape[1]:
        raise ValueError(
            f"queries have {queries.shape[1]} dimensions but references have "
            f"{references.shape[1]}; pass codes of one latent space."
        )
    if len(references) == 0:
        raise ValueError("nearest_distances got no references; pass at least one.")
    if query_indices is None:
        query_indices = np.full(len(queries), -1, np.int32)
    query_indices = np.asarray(query_indices, np.int32)
    if query_indices.shape != (len(queries),):
        raise ValueError(
            f"query_indices has shape {query_indices.shape}; pass one row index per "
            f"query, shape ({len(queries)},)."
        )
    if len(queries) == 0:
        return np.zeros(0, np.float32)

    # Pad the references to whole blocks. The mask drops the padded rows.
    reference_block = min(reference_block, len(references))
    num_blocks = -(-len(references) // reference_block)
    padded = np.zeros((num_blocks * reference_block, references.shape[1]), np.float32)
    padded[: len(references)] = references
    valid = np.arange(len(padded)) < len(references)
    blocks = jnp.asarray(padded.reshape(num_blocks, reference_block, -1))
    block_valid = jnp.asarray(valid.reshape(num_blocks, reference_block))

    squared = batching.map_batched(
        lambda batch, rows: _nearest_squared_block(batch, rows, blocks, block_valid),
        (queries, query_indices),
        min(query_block, len(queries)),
    )
    return np.sqrt(squared).astype(np.float32)


@jax.jit
def _nearest_squared_block(
    queries: jax.Array,
    query_indices: jax.Array,
    blocks: jax.Array,
    block_valid: jax.Array,
) -> jax.Array:
    """Minimum squared distance [B] from queries [B, L] to references [K, R, L]."""
    reference_block = blocks.shape[1]

    def step(best, block):
        references, valid, index = block
        # Differences, not |q|^2 + |r|^2 - 2 q.r: a query equal to a reference then gets
        # exactly 0, where the expanded form leaves rounding error.
        squared = jnp.sum(
            jnp.square(queries[:, None, :] - references[None, :, :]), axis=-1
        )
        reference_rows = index * reference_block + jnp.arange(reference_block)
        keep = valid[None, :] & (query_indices[:, None] != reference_rows[None, :])
        squared = jnp.where(keep, squared, jnp.inf)
        return jnp.minimum(best, jnp.min(squared, axis=1)), None

    start = jnp.full(queries.shape[0], jnp.inf, jnp.float32)
    rows = jnp.arange(blocks.shape[0])
    best, _ = jax.lax.scan(step, start, (blocks, block_valid, rows))
    return best


def typical_nearest_distance(codes: np.ndarray, *, max_queries: int = 2000) -> float:
    """Return the median distance from a training code to its nearest other training code.

    Args:
        codes: [N, L] training codes, N >= 2.
        max_queries: The median is taken over at most this many evenly spaced codes,
            each searched against all N codes, so beyond it the cost grows as N, not
            N^2.

    Returns:
        The median nearest-neighbour distance.
    """
    codes = np.asarray(codes, np.float32)
    if len(codes) < 2:
        raise ValueError(
            f"typical_nearest_distance needs at least 2 codes, got {len(codes)}."
        )
    rows = np.unique(np.linspace(0, len(codes) - 1, min(max_queries, len(codes))))
    rows = rows.astype(np.int32)
    distances = nearest_distances(codes[rows], codes, query_indices=rows)
    return float(np.median(distances))


def region_novelty(
    sample_codes: np.ndarray,
    misclassified_codes: np.ndarray,
    typical_distance: float | None,
) -> dict[str, Any]:
    """Return how far one region's samples lie from the nearest misclassified training code.

    Args:
        sample_codes: [S, L] latent codes sampled from the region.
        misclassified_codes: [K, L] codes of the training images the classifier
            misclassifies; K may be 0.
        typical_distance: `typical_nearest_distance` of the training codes, or None
            when it is undefined.

    Returns:
        "median_distance": median over samples of the distance to the nearest
        misclassified code; "ratio": that median divided by `typical_distance`. Both
        are None when there is no misclassified training image (K = 0), the ratio is
        None when the typical distance is None or not positive, and "note" then gives
        the reason.
    """
    if len(misclassified_codes) == 0:
        return {
            "median_distance": None,
            "ratio": None,
            "note": "The classifier misclassifies no training image.",
        }
    distances = nearest_distances(sample_codes, misclassified_codes)
    median = float(np.median(distances))
    if typical_distance is None or not typical_distance > 0:
        return {
            "median_distance": median,
            "ratio": None,
            "note": (
                f"The typical training nearest-neighbour distance is {typical_distance}; "
                "the ratio needs a positive one."
            ),
        }
    return {"median_distance": median, "ratio": median / typical_distance}


def reconstruction_errors(
    generator: Generator,
    generator_params: Any,
    images: np.ndarray,
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Return the mean squared error per pixel of x -> decode(encode_mean(x)).

    Args:
        generator: The VAE.
        generator_params: Its parameters.
        images: [N, H, W, C] float32 in [0, 1].
        batch_size: Images per jitted call.

    Returns:
        [N] float32 errors, on the [0, 1] pixel scale.
    """
    codes = identify.encode_means(
        generator, generator_params, images, batch_size=batch_size
    )
    reconstructed = regions_lib.decode_codes(
        generator, generator_params, codes, batch_size=batch_size
    )
    difference = np.asarray(reconstructed, np.float32) - np.asarray(images, np.float32)
    return np.mean(np.square(difference).reshape(len(images), -1), axis=1)


def region_realism(
    sample_errors: np.ndarray, reference_median_error: float | None
) -> dict[str, Any]:
    """Compare the reconstruction errors of one region's samples with real images.

    Args:
        sample_errors: [S] `reconstruction_errors` of the region's decoded samples.
        reference_median_error: Median `reconstruction_errors` of real test images,
            or None when there are none.

    Returns:
        "median_error": median of `sample_errors`; "ratio": that median divided by
        `reference_median_error`, None (with a "note") when the reference is None or
        not positive.
    """
    median = float(np.median(sample_errors))
    if reference_median_error is None or not reference_median_error > 0:
        return {
            "median_error": median,
            "ratio": None,
            "note": (
                f"The median reconstruction error of test images is "
                f"{reference_median_error}; the ratio needs a positive one."
            ),
        }
    return {"median_error": median, "ratio": median / reference_median_error}
