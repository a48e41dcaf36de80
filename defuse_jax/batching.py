"""Fixed-shape batching: padded index batches and batched application of jitted functions.

Jitted functions in defuse_jax only ever see batches of one shape. The last partial batch
is padded with copies of index 0 and a mask marks the real rows, so nothing recompiles
when a dataset size is not a multiple of the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np


def padded_index_batches(
    num_examples: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices [B], mask [B]) covering range(num_examples) in order.

    Args:
        num_examples: Number of rows to cover.
        batch_size: Fixed batch size B.

    Yields:
        Indices int32 [B], padded with 0 past the end, and a bool mask [B] that is True
        on real rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    for start in range(0, num_examples, batch_size):
        stop = min(start + batch_size, num_examples)
        indices = np.zeros(batch_size, np.int32)
        indices[: stop - start] = np.arange(start, stop)
        mask = np.zeros(batch_size, bool)
        mask[: stop - start] = True
        yield indices, mask


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
    """Return the shuffled order of one epoch, derived from `fold_in(key, epoch)`."""
    return np.asarray(
        jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    )


def map_batched(
    fn: Callable[..., Any], arrays: tuple[np.ndarray, ...], batch_size: int
) -> Any:
    """Apply `fn` to fixed-size row batches of `arrays` and concatenate the outputs.

    `fn` takes one batch of each array (rows padded to `batch_size`) and returns a
    pytree of arrays whose leading axis is the batch. Padded rows are dropped from the
    result.

    Args:
        fn: Usually a jitted function; it is traced once for the batch shape.
        arrays: Arrays with a common leading size N.
        batch_size: Fixed batch size.

    Returns:
        The pytree of `fn`'s outputs concatenated along axis 0 over N rows, as numpy.
    """
    num_examples = len(arrays[0])
    outputs = []
    for indices, mask in padded_index_batches(num_examples, batch_size):
        result = fn(*(array[indices] for array in arrays))
        count = int(mask.sum())
        outputs.append(jax.tree.map(lambda leaf, n=count: np.asarray(leaf)[:n], result))
    if not outputs:
        raise ValueError("map_batched got no rows; pass at least one example.")
    return jax.tree.map(lambda *leaves: np.concatenate(leaves, axis=0), *outputs)
