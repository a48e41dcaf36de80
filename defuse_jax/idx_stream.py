"""IDX image files read one batch at a time, for searches over datasets of any size.

`open_idx_images(path)` maps an MNIST-format IDX image file into memory without reading
it. Indexing the result with a row array reads only those rows and returns float32
[rows, H, W, 1] images in [0, 1], which is what `identify.identify` reads per batch. A
gzip-compressed file (name ending in .gz) is first decompressed, in 1 MiB pieces, into
a plain file in `cache_dir`.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import shutil
import tempfile
import zlib
from typing import Any

import numpy as np

from defuse_jax import data

_CHUNK_BYTES = 1 << 20


class IdxImages:
    """Rows of an IDX image file as float32 [N, H, W, 1] in [0, 1], read on indexing."""

    def __init__(self, path: pathlib.Path, header_length: int, shape: tuple[int, ...]):
        self.path = path
        self._pixels = np.memmap(
            path, np.uint8, mode="r", offset=header_length, shape=shape
        )
        self.shape = (*shape, 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        pixels = np.asarray(self._pixels[rows])
        return (pixels[..., np.newaxis] / np.float32(255.0)).astype(np.float32)


def open_idx_images(path: str | os.PathLike, cache_dir: str | None = None) -> IdxImages:
    """Map the IDX image file `path` (3 dimensions, unsigned bytes) for batch reads.

    Args:
        path: An IDX image file such as train-images-idx3-ubyte, optionally .gz.
        cache_dir: Where a .gz file is decompressed; defaults to a new temporary folder.
            A plain file already there and newer than the .gz file is reused.

    Raises:
        ValueError: the file is missing, not a valid IDX image file, or truncated.
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"IDX image file {str(path)!r} is missing; pass the path of a file such "
            "as train-images-idx3-ubyte or train-images-idx3-ubyte.gz."
        )
    if path.suffix == ".gz":
        path = _decompress(path, cache_dir)
    with open(path, "rb") as stream:
        header = stream.read(16)
    if len(header) < 16 and header[:2] == b"\x00\x00" and header[3:4] == b"\x03":
        raise ValueError(
            f"IDX file {str(path)!r} is {len(header)} bytes long, shorter than the "
            "16-byte header of an IDX image file: the file is truncated."
        )
    if len(header) < 4 or header[:2] != b"\x00\x00" or header[3] != 3:
        raise ValueError(
            f"IDX file {str(path)!r} does not start with the header of a 3-dimensional "
            f"IDX image file (got bytes {header[:4].hex()!r}); pass an image file, "
            "not a label file."
        )
    if header[2] != data.IDX_UNSIGNED_BYTE:
        raise ValueError(
            f"IDX file {str(path)!r} has type code 0x{header[2]:02X}; only unsigned "
            f"bytes (0x{data.IDX_UNSIGNED_BYTE:02X}) are supported."
        )
    shape = tuple(int(size) for size in np.frombuffer(header, ">u4", 3, offset=4))
    expected = 16 + int(np.prod(shape))
    if path.stat().st_size != expected:
        raise ValueError(
            f"IDX file {str(path)!r} is {path.stat().st_size} bytes but its header "
            f"sizes {shape} need {expected}: the file is truncated or corrupt."
        )
    return IdxImages(path, 16, shape)


def _decompress(path: pathlib.Path, cache_dir: str | None) -> pathlib.Path:
    """Decompress `path` into `cache_dir` in bounded memory and return the plain file."""
    folder = pathlib.Path(cache_dir or tempfile.mkdtemp(prefix="defuse_idx_"))
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name.removesuffix(".gz")
    if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    partial = target.with_name(target.name + ".partial")
    try:
        with gzip.open(path, "rb") as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, _CHUNK_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        partial.unlink(missing_ok=True)
        raise ValueError(
            f"IDX file {str(path)!r} is not a valid gzip file ({error}); replace it, "
            "or remove the .gz suffix if it is not compressed."
        ) from error
    os.replace(partial, target)
    return target
