"""Report outputs: labelled image grids as PNG files and an atomically written report.json."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only; never open a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def atomic_write_bytes(path: str, content: bytes) -> None:
    """Write `content` to a temporary file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json(path: str, value: Any) -> None:
    """Write `value` as indented JSON, atomically; numpy scalars and arrays become lists."""

    def convert(item):
        if isinstance(item, np.ndarray):
            return item.tolist()
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"Cannot write {type(item).__name__} to JSON.")

    text = json.dumps(value, indent=2, sort_keys=False, default=convert)
    atomic_write_bytes(path, (text + "\n").encode())


def save_image_grid(
    path: str,
    images: np.ndarray,
    titles: Sequence[str],
    *,
    title: str = "",
    columns: int = 8,
    title_colors: Sequence[str] | None = None,
) -> None:
    """Save images [N, H, W, C] in [0, 1] as one PNG grid with a caption per tile.

    Args:
        path: Output PNG path; written atomically.
        images: Images to show; one channel is drawn in grey, three as RGB.
        titles: One caption per image.
        title: Figure title.
        columns: Tiles per row.
        title_colors: Optional colour per caption (for example red for a wrong label).
    """
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows + 0.5), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        image = np.clip(images[index], 0.0, 1.0)
        if image.shape[-1] == 1:
            axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
        else:
            axis.imshow(image)
        color = title_colors[index] if title_colors is not None else "black"
        axis.set_title(titles[index], fontsize=8, color=color)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.path.basename(path)}")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
