"""Stage outputs in the workdir, each stored with the fingerprint of what produced it.

A stage's outputs are reused only when their stored fingerprint equals the fingerprint
of the current config fields (and upstream stages) they depend on. Arrays are written to
a temporary file and renamed; params are saved with orbax, which also renames a finished
temporary folder.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import zipfile
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
from absl import logging

from defuse_jax import report, training
from defuse_jax.configuration import InputError

# Config sections that change how a run saves its work, never what it computes.
_UNCOMPARED_SECTIONS = ("checkpoint",)
# Config sections a rerun may change without --allow_config_change: who labels the
# regions, the search after correction, and the report. Changing them is the normal
# workflow (label the regions, then correct), and they only recompute later stages.
_FREE_SECTIONS = ("annotate", "search_again", "report")
# Report outputs, rewritten at the end of every run.
REPORT_OUTPUTS = (
    "report.json",
    "report.html",
    "flips.png",
    "flip_radius.png",
    "latent_map.png",
    "region_samples.npz",
    "regions",
)

_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpyro",
    "numpy",
    "orbax-checkpoint",
    "ml-collections",
    "scikit-learn",
    "tensorflow-datasets",
)


def package_versions() -> dict[str, str]:
    """Return the Python version and the installed versions of the packages a run uses."""
    versions = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(json.dumps(record, default=str))  # Tuples become lists.
    for section in _UNCOMPARED_SECTIONS:
        record.get("config", {}).pop(section, None)
    return _flatten(record)


def check_workdir(
    workdir: str, record: dict[str, Any], *, allow_change: bool
) -> list[str]:
    """Compare this run's inputs with those stored in `workdir/config.json`.

    Args:
        workdir: The run's folder; it may not exist yet.
        record: This run's config (as a dict) and the digests of its dataset and
            classifier, as `write_record` stores them.
        allow_change: Accept a workdir written by different inputs. Stages whose
            fingerprints changed are then recomputed and the old report is deleted.

    Returns:
        One line per differing field, such as "config.correct.lam: 0.1 -> 0.3"; empty
        for a new folder or the same inputs.

    Raises:
        InputError: The folder contains files but no readable config.json, or contains
            the outputs of different inputs and `allow_change` is False. Changes in
            the config sections `annotate`, `search_again` and `report` are allowed
            without `allow_change`. Nothing is written.
    """
    if not os.path.isdir(workdir) or not os.listdir(workdir):
        return []
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise InputError(
            f"--workdir={workdir!r} is not empty and has no config.json, so it is not "
            "the folder of a defuse_jax run; pass a new or empty folder."
        )
    try:
        with open(path, encoding="utf-8") as file:
            stored = json.load(file)
    except (OSError, ValueError) as error:
        stored, problem = None, str(error)
    else:
        problem = "" if isinstance(stored, dict) else "it is not a JSON object"
    if problem:
        if not allow_change:
            raise InputError(
                f"Cannot read {path}: {problem}. Pass --allow_config_change to "
                "overwrite it (stages whose fingerprints still match are reused), or "
                "pass a new --workdir."
            )
        return [f"config.json: unreadable ({problem})"]
    old, new = _comparable(stored), _comparable(record)
    changes = [
        f"{key}: {old.get(key, '(missing)')!r} -> {new.get(key, '(missing)')!r}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key)
    ]
    free = tuple(f"config.{section}." for section in _FREE_SECTIONS)
    refused = [line for line in changes if not line.startswith(free)]
    if refused and not allow_change:
        listed = "; ".join(refused[:5]) + (
            f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
        )
        raise InputError(
            f"--workdir={workdir!r} contains the outputs of a different run ({listed}). "
            "Pass --allow_config_change to recompute the stages that depend on the "
            "changed fields (the others are reused), or pass a new --workdir."
        )
    return changes


def write_record(workdir: str, record: dict[str, Any], changes: list[str]) -> None:
    """Store this run's inputs in `workdir/config.json`, after `check_workdir` allowed it.

    When the inputs changed, the old report outputs are deleted first, so no report of
    the old inputs remains while the new one is being computed.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"Cannot create --workdir={workdir!r}: {error}. Pass a folder path you can "
            "write to."
        ) from error
    if changes:
        logging.warning(
            "The inputs differ from those of the run in %s, so stages that depend on "
            "them are recomputed: %s",
            workdir,
            "; ".join(changes),
        )
        remove_stale(workdir, list(REPORT_OUTPUTS), "it reports the old inputs")
    report.write_json(os.path.join(workdir, "config.json"), record)


def read_fingerprint(path: str) -> str | None:
    """Return the fingerprint stored in a JSON file, or None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file).get("fingerprint")
    except (OSError, ValueError):
        return None


def remove_stale(
    workdir: str,
    relative_paths: list[str],
    reason: str = "the current config does not produce it",
) -> None:
    """Delete outputs of earlier runs that the current config does not produce.

    Without this, a run that stops early (no flips, no regions) would leave files from an
    older config next to its report, where they would read as current.
    """
    for relative in relative_paths:
        path = os.path.join(workdir, relative)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        logging.info("Removed %s: %s.", path, reason)


def progress_folder(workdir: str, name: str, stage_fingerprint: str) -> str:
    """Return `workdir/progress/name`, the folder for a stage's in-progress checkpoints.

    Progress saved under another fingerprint (an older config) is deleted first, so a
    stage only ever resumes from its own partial work.
    """
    path = os.path.join(workdir, "progress", name)
    meta_path = path + ".json"
    if read_fingerprint(meta_path) != stage_fingerprint:
        if os.path.exists(path):
            logging.info(
                "Discarding the progress in %s: its fingerprint differs.", path
            )
            shutil.rmtree(path)
        report.write_json(meta_path, {"fingerprint": stage_fingerprint})
    return path


def remove_progress(workdir: str, name: str) -> None:
    """Delete a stage's progress once its final outputs are written."""
    path = os.path.join(workdir, "progress", name)
    for leftover in (path, path + ".json", path + ".npz"):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
        elif os.path.exists(leftover):
            os.remove(leftover)


def load_arrays(path: str, stage_fingerprint: str) -> dict[str, np.ndarray] | None:
    """Return the arrays of an .npz file written by `save_arrays` with this fingerprint.

    Returns None when the file is missing, unreadable or has another fingerprint; an
    unreadable file is logged, so its stage is recomputed.
    """
    if not os.path.exists(path):
        return None
    try:
        # An open file object, because np.load leaks its own on a damaged archive.
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as stored:
            if str(stored["fingerprint"]) != stage_fingerprint:
                return None
            return {k: stored[k] for k in stored.files if k != "fingerprint"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logging.warning("Cannot read %s (%s); computing it again.", path, error)
        return None


def save_arrays(
    path: str, stage_fingerprint: str, arrays: dict[str, np.ndarray]
) -> None:
    """Write arrays and their fingerprint to an .npz file, atomically and reproducibly."""
    content = report.npz_bytes({"fingerprint": np.asarray(stage_fingerprint), **arrays})
    report.atomic_write_bytes(path, content)


def cached_params(
    workdir: str,
    name: str,
    stage_fingerprint: str,
    like: Any,
    compute: Callable[[str], Any],
) -> Any:
    """Restore params saved as `name` with this fingerprint, or compute and save them.

    Args:
        workdir: The run's folder.
        name: Checkpoint name under `workdir/checkpoints/`.
        stage_fingerprint: Fingerprint of everything the params depend on.
        like: A pytree with the structure, shapes and dtypes of the params.
        compute: `compute(progress_folder)` produces the params when they cannot be
            reused; it may keep checkpoints in `progress_folder` to resume from.
    """
    path = os.path.join(workdir, "checkpoints", name)
    meta_path = path + ".json"
    stored = read_fingerprint(meta_path)
    if stored == stage_fingerprint and os.path.isdir(path):
        logging.info(
            "Reusing %s params from %s (fingerprint %s).", name, path, stage_fingerprint
        )
        try:
            return training.restore_params(path, like)
        except Exception as error:  # noqa: BLE001 - orbax raises many types here.
            logging.warning(
                "Cannot restore %s (%s: %s); computing it again.",
                path,
                type(error).__name__,
                error,
            )
            stored = None
    logging.info(
        "Computing %s params: %s.",
        name,
        "no finished params are stored"
        if stored is None
        else f"their fingerprint changed from {stored} to {stage_fingerprint}",
    )
    # The fingerprint goes first, so a kill between the two writes below leaves params
    # without a fingerprint (recomputed next time), never params under a stale one.
    if os.path.exists(meta_path):
        os.remove(meta_path)
    params = compute(progress_folder(workdir, name, stage_fingerprint))
    training.save_params(path, params)
    report.write_json(meta_path, {"fingerprint": stage_fingerprint})
    remove_progress(workdir, name)
    return params


def cached_arrays(
    workdir: str,
    name: str,
    stage_fingerprint: str,
    compute: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load `workdir/name.npz` if it has this fingerprint, or compute and save it atomically."""
    path = os.path.join(workdir, f"{name}.npz")
    arrays = load_arrays(path, stage_fingerprint)
    if arrays is not None:
        logging.info("Reusing %s (fingerprint %s).", path, stage_fingerprint)
        return arrays
    logging.info(
        "Computing %s: %s.",
        path,
        "its fingerprint changed" if os.path.exists(path) else "it does not exist yet",
    )
    arrays = compute()
    save_arrays(path, stage_fingerprint, arrays)
    return arrays


def replace_folder(new: str, target: str) -> None:
    """Move folder `new` to `target`, replacing what was there; delete `new` if empty.

    Draw a folder of images into `new` first, then call this: a kill never leaves a
    half-drawn `target`, and files of an earlier run never sit next to new ones.
    """
    old = target + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(target):
        os.rename(target, old)
    if os.listdir(new):
        os.rename(new, target)
    else:
        os.rmdir(new)
    shutil.rmtree(old, ignore_errors=True)
