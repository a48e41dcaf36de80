"""Killed runs resume to the same result, and equal runs write equal bytes.

The kill tests copy the uninterrupted run's workdir and delete the outputs of one stage
and every stage after it, so the binary reuses the earlier stages and computes that one
again. They SIGKILL the binary right after its first progress checkpoint in that stage,
run it again, and compare the outputs with the uninterrupted run.
"""

import os
import shutil

import numpy as np
from binary import (
    copy_workdir,
    kill_binary_at,
    read_report,
    run_binary,
    without_timings,
)

# Files that must be byte-identical between two runs with the same seed and config.
DETERMINISTIC_FILES = (
    "flips.npz",
    "radius.npz",
    "mixture.npz",
    "regions.npz",
    "flips_after.npz",
    "regions_after.npz",
    "flips.png",
    "flip_radius.png",
)
# Outputs of the stages after the VAE, in the order the pipeline writes them.
AFTER_VAE = (
    "flips.npz",
    "radius.npz",
    "mixture.npz",
    "regions.npz",
    "checkpoints/corrected",
    "checkpoints/corrected.json",
    "checkpoints/baseline",
    "checkpoints/baseline.json",
    "flips_after.npz",
    "mixture_after.npz",
    "regions_after.npz",
    "region_ids.json",
    "search_again",
    "flips.png",
    "flip_radius.png",
    "latent_map.png",
    "region_samples.npz",
    "regions",
    "report.json",
    "report.html",
)


def _copy_without(source, destination, removed):
    """Copy a finished workdir, then delete the outputs in `removed`."""
    workdir = copy_workdir(source, destination)
    for relative in removed:
        path = os.path.join(workdir, relative)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    return workdir


def _read_bytes(workdir, relative):
    with open(os.path.join(workdir, relative), "rb") as file:
        return file.read()


def _region_grids(workdir):
    return sorted(os.listdir(os.path.join(workdir, "regions")))


def _assert_same_outputs(workdir, reference):
    assert without_timings(read_report(workdir)) == without_timings(
        read_report(reference)
    )
    for relative in DETERMINISTIC_FILES:
        assert _read_bytes(workdir, relative) == _read_bytes(reference, relative), (
            relative
        )
    assert _region_grids(workdir) == _region_grids(reference)
    for grid in _region_grids(reference):
        relative = os.path.join("regions", grid)
        assert _read_bytes(workdir, relative) == _read_bytes(reference, relative), (
            relative
        )


def test_two_runs_write_identical_files(finished_run, tmp_path):
    reference, _ = finished_run
    workdir = str(tmp_path / "second")
    result = run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_outputs(workdir, reference)


def test_kill_during_vae_training_resumes_to_same_report(finished_run, tmp_path):
    reference, _ = finished_run
    removed = ("checkpoints/vae", "checkpoints/vae.json", *AFTER_VAE)
    workdir = _copy_without(reference, tmp_path / "killed_vae", removed)
    kill_binary_at(workdir, "vae: saved a checkpoint at step 10/")
    assert os.path.isdir(os.path.join(workdir, "progress", "vae"))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "vae.json"))

    result = run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reusing classifier params" in result.stderr
    assert "vae: restored the checkpoint at step" in result.stderr
    assert ", resuming at step" in result.stderr
    _assert_same_outputs(workdir, reference)
    assert not os.path.exists(os.path.join(workdir, "progress", "vae"))


def test_kill_during_identification_resumes_to_same_report(finished_run, tmp_path):
    reference, _ = finished_run
    workdir = _copy_without(reference, tmp_path / "killed_identify", AFTER_VAE)
    kill_binary_at(workdir, "identify: saved progress after 32 of 128 images")
    progress = os.path.join(workdir, "progress", "flips.npz")
    with np.load(progress) as stored:
        assert int(stored["num_done"]) in (32, 64, 96)
    assert not os.path.exists(os.path.join(workdir, "flips.npz"))

    result = run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reusing vae params" in result.stderr
    assert "identify: resuming after" in result.stderr
    _assert_same_outputs(workdir, reference)
    assert not os.path.exists(progress)
