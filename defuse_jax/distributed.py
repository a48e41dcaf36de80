"""Identification across hosts with JAX's multi-process runtime.

Start one process per host (or per group of devices) and call
`jax.distributed.initialize` in each before any JAX computation, as JAX's multi-process
guide describes; on CPU-only hosts call `enable_cpu_collectives()` first. Then every
process calls `identify_across_processes` with the same arguments: each one searches a
contiguous block of the source images on its own devices, and the flips of all blocks
are gathered to every process with JAX collectives. Each image's noise depends only on
the key and its source index, so the merged flips equal those of a one-process search.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from defuse_jax import identify as identify_lib


def enable_cpu_collectives() -> None:
    """Let CPU devices of different processes run collectives (over Gloo).

    Call before `jax.distributed.initialize` when the processes have CPU devices only.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


def process_block(
    num_items: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """Return the contiguous block of `range(num_items)` that process `process_index` handles.

    Blocks differ in size by at most one and cover the range in process order.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is outside [0, {count}).")
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def gather_flips(flips: identify_lib.Flips) -> identify_lib.Flips:
    """Concatenate every process's flips, in process order, on every process."""
    counts = np.asarray(
        multihost_utils.process_allgather(np.asarray(flips.size, np.int64))
    ).reshape(-1)
    longest = max(int(counts.max()), 1)
    gathered = []
    for column in flips:
        padded = np.zeros((longest, *column.shape[1:]), column.dtype)
        padded[: len(column)] = column
        stacked = np.asarray(multihost_utils.process_allgather(padded))
        gathered.append(
            np.concatenate([stacked[p, :n] for p, n in enumerate(counts)], axis=0)
        )
    return identify_lib.Flips(*gathered)


def identify_across_processes(
    generator_params: Any,
    classifier_params: Any,
    images: Any,
    labels: np.ndarray,
    key: jax.Array,
    *,
    source_indices: np.ndarray | None = None,
    **search_options: Any,
) -> identify_lib.Flips:
    """Search this process's block of `images` and return the flips of all processes.

    Every process must call this with the same images, labels, key and options. Only
    the process's own block of `images` is read, so `images` may be a lazy reader or a
    memory map of a file every host can open.

    Args:
        generator_params: VAE params.
        classifier_params: Classifier params.
        images: [N, H, W, C] images, any array-like indexed by row arrays.
        labels: [N] their labels.
        key: Search key, the same in every process.
        source_indices: [N] row numbers recorded in the flips; defaults to arange(N).
        **search_options: Keyword arguments of `identify.identify` (generator,
            apply_fn, num_perturbations, max_flips_per_image, noise, batch_size, ...).
            Each process searches on its own devices.

    Returns:
        The Flips of all N images, the same on every process, equal to a one-process
        search of the same images.
    """
    num_images = len(labels)
    if source_indices is None:
        source_indices = np.arange(num_images, dtype=np.int32)
    block = process_block(num_images)
    rows = np.arange(num_images)[block]
    logging.info(
        "identify: process %d of %d searches images %d to %d of %d.",
        jax.process_index(),
        jax.process_count(),
        block.start,
        block.stop,
        num_images,
    )
    local = identify_lib.identify(
        generator_params,
        classifier_params,
        _RowsView(images, rows),
        np.asarray(labels)[rows],
        key,
        source_indices=np.asarray(source_indices)[rows],
        **search_options,
    )
    return gather_flips(local)


class _RowsView:
    """Rows `rows` of an array-like, read only when indexed."""

    def __init__(self, images: Any, rows: np.ndarray):
        self._images, self._rows = images, rows
        self.shape = (len(rows), *images.shape[1:])

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self._images[self._rows[index]])
