"""End-to-end tests of the experiments.run_defuse binary, run as a subprocess."""

import glob
import json
import os

import numpy as np
import pytest
from binary import copy_workdir, read_report, run_binary, without_timings

STAGES = (
    "classifier",
    "vae",
    "identify",
    "radius",
    "distill",
    "regions",
    "correct",
    "search_again",
    "report",
)


def test_binary_writes_every_output(finished_run):
    workdir, _ = finished_run
    report = read_report(workdir)

    for key in (
        "classifier_test_accuracy",
        "search",
        "flip_radius",
        "distill",
        "regions",
        "annotation",
        "correction",
        "config",
        "seed",
        "package_versions",
        "stage_seconds",
    ):
        assert key in report
    for stage in STAGES:
        assert stage in report["stage_seconds"]

    assert report["search"]["searched_images"] == 128
    assert report["search"]["note"].startswith("Only source images")
    assert os.path.getsize(os.path.join(workdir, "flips.png")) > 1000
    assert report["regions"], "the test config should find at least one region"
    for region in report["regions"]:
        assert os.path.getsize(os.path.join(workdir, region["grid"])) > 1000

    for name in ("before", "defuse", "finetune_on_flips_baseline"):
        assert 0.0 <= report["correction"][name]["test_accuracy"] <= 1.0
        assert 0.0 <= report["correction"][name]["region_test_accuracy"] <= 1.0

    _check_flip_radius(workdir, report)
    _check_search_again(workdir, report)

    metric_files = glob.glob(os.path.join(workdir, "metrics", "*", "metrics.jsonl"))
    assert len(metric_files) == 1
    assert os.path.getsize(metric_files[0]) > 0
    # Finished stages leave no progress checkpoints behind.
    assert not os.path.exists(os.path.join(workdir, "progress"))


def _check_flip_radius(workdir, report):
    """The radius of the test config's first 64 source images, in all three outputs."""
    flip_radius = report["flip_radius"]
    assert flip_radius["noise"] == "gaussian"
    assert flip_radius["num_perturbations"] == 4
    scales = flip_radius["scales"]
    assert len(scales) == 4
    assert scales[0] == pytest.approx(0.05)
    assert scales[-1] == pytest.approx(2.0)
    per_class = flip_radius["per_class"]
    assert list(per_class) == [str(digit) for digit in range(10)]
    assert sum(entry["images"] for entry in per_class.values()) == 64
    assert flip_radius["all"]["images"] == 64
    for entry in per_class.values():
        if entry["images"]:
            assert 0.0 <= entry["fraction_no_flip"] <= 1.0
        if entry["median_radius"] is not None:
            assert scales[0] <= entry["median_radius"] <= scales[-1]

    with np.load(os.path.join(workdir, "radius.npz")) as stored:
        radius, source_index = stored["radius"], stored["source_index"]
    assert radius.shape == source_index.shape == (64,)
    # The radius stage searches the identify stage's first 64 sources, in order.
    assert np.all(np.diff(source_index) > 0)
    on_grid = np.isin(radius, np.float32(scales)) | np.isinf(radius)
    assert on_grid.all()
    assert np.mean(np.isinf(radius)) == pytest.approx(
        flip_radius["all"]["fraction_no_flip"]
    )
    assert os.path.getsize(os.path.join(workdir, "flip_radius.png")) > 1000


def _check_search_again(workdir, report):
    """Every region gets a status after the second search, and ids are never reused."""
    ids = [region["region"] for region in report["regions"]]
    assert len(set(ids)) == len(ids)
    again = report["search_again"]
    assert again["searched_images"] == 128
    assert [record["region"] for record in again["regions"]] == ids
    corrected = {
        int(region)
        for region in report["correction"]["defuse"]["region_test_accuracy_per_region"]
    }
    for record in again["regions"]:
        if record["region"] in corrected:
            assert record["status"] in ("closed", "persisting")
            accuracy = report["correction"]["defuse"][
                "region_test_accuracy_per_region"
            ][str(record["region"])]
            assert record["error_rate_after"] == pytest.approx(1.0 - accuracy)
        else:
            assert record["status"] == "not_corrected"
        if record["status"] == "closed":
            assert record["matched_region"] is None
            assert record["error_rate_after"] <= again["max_closed_error_rate"]
    assert again["closed"] + again["persisting"] == len(corrected)
    # New regions take ids that no region before correction had.
    for region in again["new_regions"]:
        assert region["region"] not in ids
        assert os.path.getsize(os.path.join(workdir, region["grid"])) > 1000
    with open(os.path.join(workdir, "region_ids.json"), encoding="utf-8") as file:
        stored = {entry["id"] for entry in json.load(file)["regions"]}
    assert set(ids) <= stored


def test_binary_logs_each_stage(finished_run):
    _, result = finished_run
    for stage in STAGES:
        assert f"Stage {stage}: start" in result.stderr
        assert f"Stage {stage}: done in" in result.stderr
    assert "vae: saved a checkpoint at step 10/" in result.stderr
    assert "identify: saved progress after 32 of 128 images" in result.stderr


def test_rerun_reuses_outputs_and_matches(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "rerun")
    first = read_report(workdir)

    result = run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reusing classifier params" in result.stderr
    assert "Reusing vae params" in result.stderr
    assert "flips.npz" in result.stderr
    assert "classifier: training" not in result.stderr

    second = read_report(workdir)
    assert without_timings(second) == without_timings(first)


def test_config_change_recomputes_only_later_stages(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "changed")
    result = run_binary(
        workdir,
        "--config.correct.lam=0.3",
        "--config.radius.steps=3",
        "--allow_config_change",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config.correct.lam: 0.1 -> 0.3" in result.stderr
    assert "config.radius.steps: 4 -> 3" in result.stderr
    for reused in ("classifier params", "vae params"):
        assert f"Reusing {reused}" in result.stderr
    # The radius settings reach no stage but their own.
    for reused in ("flips.npz", "mixture.npz", "regions.npz"):
        assert f"Reusing {os.path.join(workdir, reused)}" in result.stderr
    radius_path = os.path.join(workdir, "radius.npz")
    assert f"Computing {radius_path}: its fingerprint changed" in result.stderr
    assert "Computing corrected params: their fingerprint changed" in result.stderr
    report = read_report(workdir)
    assert report["correction"]["lam"] == 0.3
    assert len(report["flip_radius"]["scales"]) == 3


def test_no_flips_removes_stale_outputs(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "no_flips")
    result = run_binary(
        workdir, "--config.identify.noise_scale=0.0001", "--allow_config_change"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    report = read_report(workdir)
    assert report["search"]["num_flips"] == 0
    assert "fewer than the 2 needed" in report["notes"][0]
    assert report["regions"] == []
    assert "correction" not in report
    assert "search_again" not in report
    # No flips does not mean no radius: it is still searched and reported.
    assert "flip_radius" in report
    assert os.path.exists(os.path.join(workdir, "flip_radius.png"))
    for stale in (
        "mixture.npz",
        "regions.npz",
        "flips.png",
        "regions",
        "checkpoints/corrected",
        "checkpoints/baseline",
        "flips_after.npz",
        "regions_after.npz",
        "search_again",
    ):
        assert not os.path.exists(os.path.join(workdir, stale)), stale
