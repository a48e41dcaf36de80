"""Tests of the IDX image reader that the search reads one batch at a time."""

import gzip
import re

import jax
import numpy as np
import pytest
from toy_search import SEARCH_KEY, search_options

from defuse_jax import identify, idx_stream

SHAPE = (13, 3, 4)


def _pixels(seed=0):
    return np.random.default_rng(seed).integers(0, 256, SHAPE, dtype=np.uint8)


def _idx_bytes(array, dimensions=None):
    """An IDX file of unsigned bytes: magic 0, 0, 0x08, ndim, then big-endian sizes."""
    ndim = array.ndim if dimensions is None else dimensions
    header = bytes([0, 0, 0x08, ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def _write(path, content):
    path.write_bytes(content)
    return path


def test_rows_are_pixels_over_255(tmp_path):
    pixels = _pixels()
    images = idx_stream.open_idx_images(
        _write(tmp_path / "images-idx3-ubyte", _idx_bytes(pixels))
    )
    assert len(images) == 13
    assert images.shape == (13, 3, 4, 1)
    rows = np.array([0, 5, 12, 5])
    batch = images[rows]
    assert batch.dtype == np.float32
    assert batch.shape == (4, 3, 4, 1)
    np.testing.assert_allclose(
        batch[..., 0], pixels[rows].astype(np.float32) / 255, rtol=1e-6
    )
    np.testing.assert_allclose(images[np.arange(13)][..., 0].max(), pixels.max() / 255)


def test_gzip_file_is_decompressed_into_the_cache(tmp_path):
    pixels = _pixels(1)
    compressed = tmp_path / "images-idx3-ubyte.gz"
    with gzip.open(compressed, "wb") as stream:
        stream.write(_idx_bytes(pixels))
    cache = tmp_path / "cache"
    images = idx_stream.open_idx_images(compressed, cache_dir=str(cache))
    assert (cache / "images-idx3-ubyte").is_file()
    assert images.shape == (13, 3, 4, 1)
    np.testing.assert_allclose(
        images[np.arange(13)][..., 0], pixels.astype(np.float32) / 255, rtol=1e-6
    )


def test_truncated_file_raises_naming_the_path(tmp_path):
    path = _write(tmp_path / "cut-idx3-ubyte", _idx_bytes(_pixels())[:-5])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*truncated"):
        idx_stream.open_idx_images(path)


def test_label_file_raises_naming_the_path(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = _write(tmp_path / "labels-idx1-ubyte", _idx_bytes(labels))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not a label file"):
        idx_stream.open_idx_images(path)


def test_missing_file_raises_naming_the_path(tmp_path):
    path = tmp_path / "absent-idx3-ubyte"
    with pytest.raises(ValueError, match=re.escape(str(path)) + "' is missing"):
        idx_stream.open_idx_images(path)


def test_corrupt_gzip_raises_naming_the_path(tmp_path):
    path = _write(tmp_path / "images-idx3-ubyte.gz", b"not gzip data")
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not a valid gzip"):
        idx_stream.open_idx_images(path, cache_dir=str(tmp_path / "cache"))


def test_lazy_search_equals_in_memory_search(tmp_path):
    pixels = _pixels(2)
    images = idx_stream.open_idx_images(
        _write(tmp_path / "images-idx3-ubyte", _idx_bytes(pixels))
    )
    in_memory = images[np.arange(len(images))]
    # The toy classifier predicts 1 when the first pixel is positive, so noise of
    # scale 0.3 flips the images whose first pixel is small.
    labels = (in_memory[:, 0, 0, 0] > 0).astype(np.int32)
    options = search_options(scale=0.3, batch_size=4)
    key = jax.random.key(SEARCH_KEY)
    lazy = identify.identify(None, None, images, labels, key, **options)
    eager = identify.identify(None, None, in_memory, labels, key, **options)
    assert eager.size > 0
    for field in identify.Flips._fields:
        np.testing.assert_array_equal(getattr(lazy, field), getattr(eager, field))
