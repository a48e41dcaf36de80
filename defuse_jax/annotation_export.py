"""Export a finished workdir's regions for annotation, and check a filled file against it.

`export_regions` reads report.json and region_samples.npz, so no model runs, and writes
under `WORKDIR/annotation/` by default:

    region_RR/region_RR_sample_SS.png   the report's samples of region RR, 8-bit, every
                                        channel kept (grey stays one channel, RGB stays
                                        RGB; other channel counts get one grey PNG per
                                        channel, named ..._cK.png)
    manifest.csv, manifest.json         one row per region (`annotation_file` describes
                                        the columns)
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from defuse_jax import annotate, annotation_file, report
from defuse_jax.configuration import InputError

DEFAULT_FOLDER = "annotation"
_SAMPLE_FILE = re.compile(r"region_\d+_sample_\d+(_c\d+)?\.png")
_REGION_FOLDER = re.compile(r"region_\d+")


class ExportResult(NamedTuple):
    """Paths and counts of the files that `export_regions` wrote."""

    folder: str
    manifest_csv: str
    manifest_json: str
    run_id: str
    num_regions: int
    num_images: int


def load_report(workdir: str) -> dict[str, Any]:
    """Return a workdir's report.json, checking the fields an export needs."""
    path = os.path.join(workdir, "report.json")
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except FileNotFoundError:
        raise InputError(
            f"{path} not found; run `python -m experiments.run_defuse "
            f"--workdir={workdir}` to the end first, with the --config and overrides "
            "of its run (config.json in the workdir lists them)."
        ) from None
    except (OSError, ValueError) as error:
        raise InputError(
            f"Cannot read {path} ({error}); rerun `python -m experiments.run_defuse "
            f"--workdir={workdir}` with the same config to write it again."
        ) from error
    if isinstance(content, dict) and "run_id" not in content and "search" in content:
        # A current run that stopped before fitting regions (no or too few flips).
        raise InputError(
            f"{path} has no regions, so there is nothing to annotate; its notes say "
            f"why: {' '.join(content.get('notes') or []) or 'none recorded'}"
        )
    if not isinstance(content, dict) or "run_id" not in content:
        raise InputError(
            f"{path} has no run_id, so it was written by an older defuse_jax; rerun "
            f"`python -m experiments.run_defuse --workdir={workdir}` with the same "
            "config to write a current report."
        )
    if not content.get("regions"):
        raise InputError(
            f"{path} has no regions, so there is nothing to annotate; its notes say "
            "why."
        )
    return content


def _load_samples(workdir: str, run_id: str) -> dict[str, np.ndarray]:
    path = os.path.join(workdir, "region_samples.npz")
    rerun = (
        f"rerun `python -m experiments.run_defuse --workdir={workdir}` with the same "
        "config to write it again"
    )
    if not os.path.exists(path):
        raise InputError(f"{path} not found; {rerun}.")
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"Cannot read {path} ({error}); {rerun}.") from error
    if str(arrays.get("fingerprint")) != run_id:
        raise InputError(
            f"{path} has the samples of run {str(arrays.get('fingerprint'))!r}, but "
            f"report.json is of run {run_id!r}; {rerun}."
        )
    return arrays


def _check_overwrite(paths: list[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            filled = annotation_file.filled_rows(path)
        except InputError as error:
            raise InputError(
                f"{path} exists and cannot be read ({error}), so it may contain "
                "annotations; pass --out=FOLDER to export elsewhere, or --overwrite "
                "to replace it."
            ) from error
        if filled:
            raise InputError(
                f"{path} already has labels or decisions ({', '.join(filled[:5])}"
                f"{', ...' if len(filled) > 5 else ''}); pass --out=FOLDER to export "
                "elsewhere, or --overwrite to replace them."
            )


def _remove_old_samples(folder: str) -> None:
    """Delete the sample PNGs of an earlier export, so no region of older runs remains."""
    for name in os.listdir(folder):
        region_folder = os.path.join(folder, name)
        if not (_REGION_FOLDER.fullmatch(name) and os.path.isdir(region_folder)):
            continue
        for file_name in os.listdir(region_folder):
            if _SAMPLE_FILE.fullmatch(file_name):
                os.remove(os.path.join(region_folder, file_name))
        if not os.listdir(region_folder):
            os.rmdir(region_folder)


def save_png(path_stem: str, image: np.ndarray) -> list[str]:
    """Save one uint8 image [H, W, C] as PNG; return the paths written.

    One channel becomes a greyscale PNG and three an RGB PNG. Other channel counts have
    no PNG mode with the same meaning, so each channel becomes its own greyscale PNG,
    `path_stem + "_cK.png"`.
    """
    from PIL import Image  # Pillow comes with matplotlib.

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"expected a uint8 image [H, W, C], got {image.dtype} {image.shape}"
        )
    channels = image.shape[-1]
    if channels in (1, 3):
        path = path_stem + ".png"
        Image.fromarray(image[..., 0] if channels == 1 else image).save(path)
        return [path]
    paths = []
    for channel in range(channels):
        path = f"{path_stem}_c{channel}.png"
        Image.fromarray(image[..., channel]).save(path)
        paths.append(path)
    return paths


def export_regions(
    workdir: str, out: str = "", *, overwrite: bool = False
) -> ExportResult:
    """Write the samples and manifest of a finished workdir's regions for annotation.

    Args:
        workdir: A workdir whose run finished (report.json and region_samples.npz).
        out: Output folder; defaults to `WORKDIR/annotation`.
        overwrite: Replace a manifest there that already has labels or decisions.

    Returns:
        The paths written and their counts.

    Raises:
        InputError: The workdir lacks a current report or samples, or `out` contains a
            filled manifest and `overwrite` is False. Nothing is written then.
    """
    content = load_report(workdir)
    run_id = str(content["run_id"])
    class_names = [str(name) for name in content["dataset"]["class_names"]]
    samples = _load_samples(workdir, run_id)
    folder = out or os.path.join(workdir, DEFAULT_FOLDER)
    manifest_csv = os.path.join(folder, "manifest.csv")
    manifest_json = os.path.join(folder, "manifest.json")
    if not overwrite:
        _check_overwrite([manifest_csv, manifest_json])
    os.makedirs(folder, exist_ok=True)
    _remove_old_samples(folder)

    rows = []
    num_images = 0
    for record in content["regions"]:
        region = int(record["region"])
        images = samples["images"][samples["region_id"] == region]
        if not len(images):
            raise InputError(
                f"{workdir}/region_samples.npz has no samples of region {region}; "
                f"rerun `python -m experiments.run_defuse --workdir={workdir}` with "
                "the same config to write them again."
            )
        name = f"region_{region:02d}"
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for index, image in enumerate(images):
            stem = os.path.join(folder, name, f"{name}_sample_{index:02d}")
            num_images += len(save_png(stem, image))
        rows.append(
            {
                "run_id": run_id,
                "region": region,
                "suggested_label": class_names[record["source_label"]],
                "source_label": class_names[record["source_label"]],
                "predicted_label": class_names[record["predicted_label"]],
                "member_count": int(record["member_count"]),
                "samples": name,
                "label": "",
                "decision": "",
            }
        )

    text = io.StringIO()
    writer = csv.DictWriter(
        text, fieldnames=annotation_file.MANIFEST_COLUMNS, lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    report.atomic_write_bytes(manifest_csv, text.getvalue().encode())
    report.write_json(
        manifest_json,
        {
            "run_id": run_id,
            "workdir": os.path.abspath(workdir),
            "class_names": class_names,
            "decisions": list(annotate.FILE_DECISIONS),
            "regions": rows,
        },
    )
    logging.info(
        "Wrote %d sample PNGs of %d regions and %s (and manifest.json) for run %s.",
        num_images,
        len(rows),
        manifest_csv,
        run_id,
    )
    return ExportResult(
        folder=folder,
        manifest_csv=manifest_csv,
        manifest_json=manifest_json,
        run_id=run_id,
        num_regions=len(rows),
        num_images=num_images,
    )


def check_file(
    workdir: str, path: str
) -> tuple[dict[str, Any], annotate.FileDecisions]:
    """Check a filled annotation file against a finished workdir's regions.

    Returns:
        The workdir's report.json and the file's decisions, in the order of its
        "regions".

    Raises:
        InputError: As `read_file_decisions`, or the workdir has no current report.
    """
    content = load_report(workdir)
    region_ids = np.asarray([int(r["region"]) for r in content["regions"]], np.int32)
    decisions = annotation_file.read_file_decisions(
        path,
        tuple(content["dataset"]["class_names"]),
        str(content["run_id"]),
        region_ids,
        workdir=workdir,
    )
    return content, decisions
