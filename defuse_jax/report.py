"""Report outputs: image grids and plots as PNG files, and an atomic report.json."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def atomic_write_bytes(path: str, content: bytes) -> None:
    """Write `content` to a temporary file beside `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only; give it the permissions
        # a plain open() would, so others can read a shared workdir.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """Return the bytes of an uncompressed .npz archive of `arrays` that `np.load` reads.

    Unlike `np.savez`, which stamps each member with the current time, the members carry
    a fixed date, so equal arrays always give equal bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(
                    member, np.asanyarray(value), allow_pickle=False
                )
    return buffer.getvalue()


def json_text(value: Any) -> str:
    """Return `value` as indented JSON; numpy scalars and arrays become lists."""

    def convert(item):
        if isinstance(item, np.ndarray):
            return item.tolist()
        if isinstance(item, np.generic):
            return item.item()
        raise TypeError(f"Cannot write {type(item).__name__} to JSON.")

    return json.dumps(value, indent=2, sort_keys=False, default=convert)


def write_json(path: str, value: Any) -> None:
    """Write `value` as indented JSON, atomically; numpy scalars and arrays become lists."""
    atomic_write_bytes(path, (json_text(value) + "\n").encode())


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
    if count == 0:
        raise ValueError(f"save_image_grid got no images for {path!r}.")
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    height, width, channels = images.shape[1:]
    # One mosaic drawn on one axes: much faster than one matplotlib axes per tile.
    gap, caption = max(round(height * 0.08), 1), max(round(height * 0.2), 2)
    cell_height, cell_width = height + caption + gap, width + gap
    mosaic = np.ones((rows * cell_height, columns * cell_width, 3), np.float32)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * cell_height + caption, column * cell_width
        tile = np.clip(images[index], 0.0, 1.0)
        mosaic[top : top + height, left : left + width] = (
            np.repeat(tile, 3, axis=-1) if channels == 1 else tile[..., :3]
        )
    scale = 1.3 / width  # Inches per pixel, so a tile is about 1.3 inches wide.
    plt = _pyplot()
    figure = plt.figure(
        figsize=(mosaic.shape[1] * scale, mosaic.shape[0] * scale + 0.4)
    )
    axis = figure.add_axes(
        (0, 0, 1, mosaic.shape[0] * scale / (mosaic.shape[0] * scale + 0.4))
    )
    axis.imshow(mosaic, interpolation="nearest")
    axis.axis("off")
    for index in range(count):
        row, column = divmod(index, columns)
        axis.text(
            column * cell_width + width / 2,
            row * cell_height + caption - 1,
            titles[index],
            ha="center",
            va="bottom",
            fontsize=7,
            color=title_colors[index] if title_colors is not None else "black",
        )
    if title:
        figure.suptitle(title, fontsize=9, y=0.995)
    _save_figure(figure, path)


def save_radius_plot(
    path: str, flip_radius: Mapping[str, Any], class_names: Sequence[str]
) -> None:
    """Save per-class bars of the median flip radius and of the fraction with no flip.

    Args:
        path: Output PNG path; written atomically.
        flip_radius: The report's "flip_radius" entry: `identify.radius_summary`'s
            "scales" and "per_class" (with "median_radius" and "fraction_no_flip",
            None where undefined), plus "noise" and "num_perturbations".
        class_names: The classes, in the order of the bars.
    """
    scales = flip_radius["scales"]
    per_class = [flip_radius["per_class"][name] for name in class_names]
    positions = np.arange(len(class_names))
    plt = _pyplot()
    figure, (radius_axis, fraction_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(max(4.0, 0.45 * len(class_names) + 1.5), 4.5)
    )

    # Median radius on the log scale of the geometric grid. A class without a median
    # (no images, or half or more without a flip) gets a vertical note instead of a bar.
    medians = [
        np.nan if entry["median_radius"] is None else entry["median_radius"]
        for entry in per_class
    ]
    bottom = scales[0] / 1.5
    radius_axis.bar(positions, medians, color="tab:blue")
    radius_axis.set_yscale("log")
    radius_axis.set_ylim(bottom, scales[-1] * 1.5)
    radius_axis.set_yticks(scales, [f"{scale:.3g}" for scale in scales])
    radius_axis.minorticks_off()
    for position, entry in zip(positions, per_class, strict=True):
        if entry["images"] == 0:
            note = "no images"
        elif entry["median_radius"] is None:
            note = f"above {scales[-1]:.3g}"
        else:
            continue
        radius_axis.text(
            position,
            bottom * 1.1,
            note,
            ha="center",
            va="bottom",
            rotation=90,
            fontsize=7,
            color="dimgray",
        )
    radius_axis.set_ylabel("median radius")
    radius_axis.set_title(
        f"Minimal flip radius: {flip_radius['noise']} noise, "
        f"{flip_radius['num_perturbations']} perturbations per image",
        fontsize=9,
    )

    # Fraction of each class with no flip up to the largest scale.
    fractions = [entry["fraction_no_flip"] or 0.0 for entry in per_class]
    fraction_axis.bar(positions, fractions, color="tab:gray")
    fraction_axis.set_ylim(0.0, 1.0)
    fraction_axis.set_ylabel(
        f"fraction without a flip\nup to {scales[-1]:.3g}", fontsize=8
    )
    fraction_axis.set_xticks(positions, list(class_names))
    fraction_axis.set_xlabel("source class")
    figure.tight_layout()
    _save_figure(figure, path)


def save_latent_map(
    path: str,
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    flip_codes: np.ndarray,
    centres: np.ndarray,
    centre_ids: Sequence[int],
    class_names: Sequence[str],
) -> list[float]:
    """Save a 2-D PCA map of the latent space: training codes, flips and region centres.

    The PCA is fitted on the training codes. Training codes are small points coloured by
    class, flips are black crosses, and region centres are large markers labelled with
    their ids.

    Args:
        path: Output PNG path; written atomically.
        train_codes: [N, L] codes of training images, N >= 2.
        train_labels: [N] their class labels.
        flip_codes: [M, L] codes of flips; M may be 0.
        centres: [R, L] region means; R may be 0.
        centre_ids: R region ids, written next to the centres.
        class_names: Names of the classes, for the legend.

    Returns:
        The fraction of the training codes' variance that each of the 2 axes explains.
    """
    from sklearn.decomposition import PCA  # Imported on use, like matplotlib.

    train_codes = np.asarray(train_codes, np.float64)
    if len(train_codes) < 2 or train_codes.shape[1] < 2:
        raise ValueError(
            f"save_latent_map needs at least 2 training codes of at least 2 dimensions, "
            f"got shape {train_codes.shape}."
        )
    pca = PCA(n_components=2, random_state=0).fit(train_codes)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8.0, 6.5))
    train_points = pca.transform(train_codes)
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for label, name in enumerate(class_names):
        rows = np.asarray(train_labels) == label
        if rows.any():
            axis.scatter(
                *train_points[rows].T,
                s=6,
                alpha=0.5,
                color=colours(label % colours.N),
                linewidths=0,
                label=str(name),
            )
    if len(flip_codes):
        flip_points = pca.transform(np.asarray(flip_codes, np.float64))
        axis.scatter(
            *flip_points.T,
            s=8,
            marker="x",
            color="black",
            alpha=0.4,
            linewidths=0.6,
            label="flips",
        )
    if len(centres):
        centre_points = pca.transform(np.asarray(centres, np.float64))
        axis.scatter(
            *centre_points.T,
            s=120,
            marker="o",
            facecolors="gold",
            edgecolors="black",
            linewidths=1.2,
            label="region centres",
            zorder=3,
        )
        for (x, y), region_id in zip(centre_points, centre_ids, strict=True):
            axis.annotate(
                str(region_id),
                (x, y),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=9,
                fontweight="bold",
                zorder=4,
            )
    ratios = [float(value) for value in pca.explained_variance_ratio_]
    axis.set_xlabel(f"PC 1 ({ratios[0]:.0%} of variance)")
    axis.set_ylabel(f"PC 2 ({ratios[1]:.0%} of variance)")
    axis.set_title(
        f"Latent space, PCA of {len(train_codes)} training codes", fontsize=10
    )
    legend = axis.legend(fontsize=7, loc="best", ncol=2, framealpha=0.8)
    for handle in legend.legend_handles:
        handle.set_sizes([24])  # One marker size in the legend, whatever the plot's.
    figure.tight_layout()
    _save_figure(figure, path)
    return ratios


def _pyplot() -> Any:
    """Import matplotlib.pyplot with the file-only Agg backend.

    Imported on use: matplotlib takes about a second to import, and runs that stop on
    bad input never draw.
    """
    import matplotlib

    matplotlib.use("Agg")  # Files only; never open a window.
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: str) -> None:
    """Write `figure` as a PNG to a temporary file beside `path`, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".tmp-{os.path.basename(path)}")
    figure.savefig(temporary, format="png", dpi=100)
    _pyplot().close(figure)
    os.replace(temporary, path)
