"""Command-line helpers shared by the experiment binaries, with no flags of their own."""

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

import jax
import ml_collections
from absl import app, logging

from defuse_jax.configuration import InputError

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


def start_binary(argv: list[str]) -> None:
    """Reject positional arguments, then log the JAX backend and its devices."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.info(
        "JAX backend %s with devices %s.", jax.default_backend(), jax.devices()
    )


def check_out_folder(out: str) -> None:
    """Raise InputError when --out names an existing file."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"--out={out!r} is a file; pass a folder instead.")


@contextlib.contextmanager
def exit_on_known_errors() -> Iterator[None]:
    """Turn bad input, divergence, out-of-memory errors and Ctrl-C into one line."""
    try:
        yield
    except KeyboardInterrupt:
        # Stages save their outputs and progress as they go, so a rerun resumes.
        print(
            "interrupted: finished stages and saved progress are kept; rerun the same "
            "command to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except InputError as error:
        # One line on stderr and exit status 1, before anything is written.
        raise SystemExit(f"error: {error}") from None
    except FloatingPointError as error:
        # Training diverged; the message names the step and the checkpoint kept.
        raise SystemExit(f"error: {error}") from None
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        first_line = str(error).splitlines()[0].rstrip(".")
        raise SystemExit(
            f"error: the accelerator or host ran out of memory ({first_line}). Lower "
            "the batch sizes: classifier.batch_size, vae.batch_size, "
            "identify.batch_size, correct.batch_size or correct.extra_batch_size. "
            "Finished stages and saved progress are kept, so a rerun resumes."
        ) from None


def split_variant(entry: str, variant: str) -> tuple[str, str]:
    """Split a config entry of the form NAME:VARIANT; its suffix overrides `variant`.

    Returns (NAME, VARIANT), or (entry, variant) when the entry has no suffix.
    """
    name, separator, suffix = entry.rpartition(":")
    if separator and name:
        return name, suffix
    return entry, variant


def config_path(dataset: str) -> str:
    """Return the config file of a --datasets entry, or raise InputError."""
    path = (
        dataset
        if dataset.endswith(".py")
        else os.path.join(CONFIG_DIR, f"{dataset}.py")
    )
    if not os.path.isfile(path):
        known = sorted(
            name.removesuffix(".py")
            for name in os.listdir(CONFIG_DIR)
            if name.endswith(".py") and not name.startswith("_")
        )
        raise InputError(
            f"Config {dataset!r} not found: {path} does not exist; pass one of "
            f"{', '.join(known)} or the path of a config file."
        )
    return path


def load_config(path: str, variant: str) -> ml_collections.ConfigDict:
    """Call get_config(variant) of the config file at `path`."""
    spec = importlib.util.spec_from_file_location("defuse_table_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.get_config(variant)
    except ValueError as error:
        raise InputError(f"config {path}: {error}") from None


def parse_seeds(values: list[str]) -> list[int]:
    """Parse --seeds: distinct non-negative ints."""
    try:
        seeds = [int(value) for value in values]
    except ValueError:
        raise InputError(
            f"--seeds={','.join(values)} contains a value that is not an int; pass "
            "seeds such as --seeds=0,1,2."
        ) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise InputError(
            f"--seeds={','.join(values)}: pass one or more distinct non-negative ints."
        )
    return seeds
