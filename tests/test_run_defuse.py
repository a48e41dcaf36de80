"""End-to-end tests of the experiments.run_defuse binary, run as a subprocess."""

import glob
import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = "experiments/configs/mnist5k.py:test"
STAGES = ("classifier", "vae", "identify", "distill", "regions", "correct", "report")


def _run_binary(workdir, *flags, timeout=900):
    command = [
        sys.executable,
        "-m",
        "experiments.run_defuse",
        f"--workdir={workdir}",
        f"--config={TEST_CONFIG}",
        *flags,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _read_report(workdir):
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as file:
        return json.load(file)


def _without_timings(report):
    return {k: v for k, v in report.items() if k != "stage_seconds"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("defuse_test_run"))
    result = _run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_binary_writes_every_output(finished_run):
    workdir, _ = finished_run
    report = _read_report(workdir)

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


def test_binary_logs_each_stage(finished_run):
    _, result = finished_run
    for stage in STAGES:
        assert f"Stage {stage}: start" in result.stderr
        assert f"Stage {stage}: done in" in result.stderr


def test_rerun_reuses_outputs_and_matches(finished_run):
    workdir, _ = finished_run
    first = _read_report(workdir)

    result = _run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Reusing classifier params" in result.stderr
    assert "Reusing vae params" in result.stderr
    assert "flips.npz" in result.stderr
    assert "classifier: training" not in result.stderr

    second = _read_report(workdir)
    assert _without_timings(second) == _without_timings(first)


def test_no_flips_removes_stale_outputs(finished_run):
    # Runs last on the shared workdir because it replaces that run's outputs.
    workdir, _ = finished_run
    result = _run_binary(workdir, "--config.identify.noise_scale=0.0001")
    assert result.returncode == 0, result.stderr[-3000:]

    report = _read_report(workdir)
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


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--config.dataset.name=cifar11", ["cifar11", "mnist5k", "digits", "idx:DIR"]),
        ("--config.dataset.name=idx:/no/such/folder", ["/no/such/folder", "missing"]),
        ("--config.correct.lam=1.5", ["config.correct.lam=1.5", "[0, 1]"]),
        ("--config.correct.lam=-0.1", ["config.correct.lam=-0.1", "[0, 1]"]),
        ("--config.distill.truncation=0", ["config.distill.truncation=0", "[1, inf]"]),
        ("--config.correct.lam=nan", ["config.correct.lam=nan", "finite"]),
        (
            "--config.classifier.batch_size=5000",
            ["classifier.batch_size=5000", "at most 4000"],
        ),
        (
            "--config.identify.num_perturbations=0",
            ["config.identify.num_perturbations=0", "[1, inf]"],
        ),
    ],
)
def test_bad_input_exits_before_training(tmp_path, flag, expected):
    workdir = str(tmp_path / "workdir")
    result = _run_binary(workdir, flag, timeout=300)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ")
    for word in expected:
        assert word in last_line
    assert "Stage classifier" not in result.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
