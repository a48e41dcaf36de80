"""Stage outputs in the workdir, each stored with the fingerprint of what produced it.

A stage's outputs are reused only when their stored fingerprint equals the fingerprint
of the current config fields (and upstream stages) they depend on. Arrays are written to
a temporary file and renamed; params are saved with orbax, which also renames a finished
temporary folder.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np
from absl import logging

from defuse_jax import report, training

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


def read_fingerprint(path: str) -> str | None:
    """Return the fingerprint stored in a JSON file, or None when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file).get("fingerprint")
    except (OSError, ValueError):
        return None


def remove_stale(workdir: str, relative_paths: list[str]) -> None:
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
        logging.info("Removed %s: the current config does not produce it.", path)


def cached_params(
    workdir: str,
    name: str,
    stage_fingerprint: str,
    like: Any,
    compute: Callable[[], Any],
) -> Any:
    """Restore params saved as `name` with this fingerprint, or compute and save them.

    Args:
        workdir: The run's folder.
        name: Checkpoint name under `workdir/checkpoints/`.
        stage_fingerprint: Fingerprint of everything the params depend on.
        like: A pytree with the structure, shapes and dtypes of the params.
        compute: Produces the params when they cannot be reused.
    """
    path = os.path.join(workdir, "checkpoints", name)
    meta_path = path + ".json"
    if read_fingerprint(meta_path) == stage_fingerprint and os.path.isdir(path):
        logging.info(
            "Reusing %s params from %s (fingerprint %s).", name, path, stage_fingerprint
        )
        return training.restore_params(path, like)
    if os.path.exists(meta_path):
        logging.info("Recomputing %s: its fingerprint changed.", name)
    params = compute()
    training.save_params(path, params)
    report.write_json(meta_path, {"fingerprint": stage_fingerprint})
    return params


def cached_arrays(
    workdir: str,
    name: str,
    stage_fingerprint: str,
    compute: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load `workdir/name.npz` if it has this fingerprint, or compute and save it atomically."""
    path = os.path.join(workdir, f"{name}.npz")
    if os.path.exists(path):
        with np.load(path) as stored:
            if str(stored["fingerprint"]) == stage_fingerprint:
                logging.info("Reusing %s (fingerprint %s).", path, stage_fingerprint)
                return {k: stored[k] for k in stored.files if k != "fingerprint"}
        logging.info("Recomputing %s: its fingerprint changed.", path)
    arrays = compute()
    buffer = io.BytesIO()
    np.savez(buffer, fingerprint=np.asarray(stage_fingerprint), **arrays)
    report.atomic_write_bytes(path, buffer.getvalue())
    return arrays
