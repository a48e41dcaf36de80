"""End-to-end tests of the experiments.run_defuse binary, run as a subprocess."""

import glob
import os

from binary import copy_workdir, read_report, run_binary, without_timings

STAGES = ("classifier", "vae", "identify", "distill", "regions", "correct", "report")


def test_binary_writes_every_output(finished_run):
    workdir, _ = finished_run
    report = read_report(workdir)

    for key in (
        "classifier_test_accuracy",
        "search",
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

    metric_files = glob.glob(os.path.join(workdir, "metrics", "*", "metrics.jsonl"))
    assert len(metric_files) == 1
    assert os.path.getsize(metric_files[0]) > 0
    # Finished stages leave no progress checkpoints behind.
    assert not os.path.exists(os.path.join(workdir, "progress"))


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
    result = run_binary(workdir, "--config.correct.lam=0.3", "--allow_config_change")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config.correct.lam: 0.1 -> 0.3" in result.stderr
    for reused in ("classifier params", "vae params"):
        assert f"Reusing {reused}" in result.stderr
    for reused in ("flips.npz", "mixture.npz", "regions.npz"):
        assert f"Reusing {os.path.join(workdir, reused)}" in result.stderr
    assert "Computing corrected params: their fingerprint changed" in result.stderr
    assert read_report(workdir)["correction"]["lam"] == 0.3


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
    for stale in (
        "mixture.npz",
        "regions.npz",
        "flips.png",
        "regions",
        "checkpoints/corrected",
        "checkpoints/baseline",
    ):
        assert not os.path.exists(os.path.join(workdir, stale)), stale
