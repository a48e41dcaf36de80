"""Tests of the experiments.lambda_sweep binary."""

import json
import os

import pytest
from binary import TEST_CONFIG, copy_workdir, run_module

from defuse_jax.configuration import InputError
from experiments import lambda_sweep

LAMS = (0.0, 1.0)


def test_sweep_corrects_each_lambda_from_the_same_run(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "base")
    out = tmp_path / "sweep"
    result = run_module(
        "experiments.lambda_sweep",
        f"--workdir={workdir}",
        f"--config={TEST_CONFIG}",
        f"--out={out}",
        "--lams=" + ",".join(str(lam) for lam in reversed(LAMS)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The base run is finished, so the sweep retrains neither model nor searches again.
    assert "classifier: training" not in result.stderr
    assert "vae: training" not in result.stderr

    with open(out / "lambda_sweep.json", encoding="utf-8") as file:
        results = json.load(file)
    base = json.loads((tmp_path / "base" / "report.json").read_text("utf-8"))
    assert results["before"]["test_accuracy"] == pytest.approx(
        base["correction"]["before"]["test_accuracy"]
    )
    assert [entry["lam"] for entry in results["lams"]] == list(LAMS)
    for entry in results["lams"]:
        lam_report = json.loads(
            (out / f"lam_{entry['lam']:g}" / "report.json").read_text("utf-8")
        )
        assert lam_report["correction"]["lam"] == entry["lam"]
        # Every lambda starts from the base run's classifier and regions.
        assert lam_report["correction"]["before"] == base["correction"]["before"]
        # A sweep draws no report, but report.json keeps the figures that need no
        # drawing: per-region statistics, the seed, the dataset and package versions.
        for key in ("seed", "dataset", "package_versions"):
            assert lam_report[key] == base[key], key
        assert [r["region"] for r in lam_report["regions"]] == [
            r["region"] for r in base["regions"]
        ]
        for drawn, plain in zip(base["regions"], lam_report["regions"]):
            for key in ("member_count", "weight", "source_label", "annotated_label"):
                assert plain[key] == drawn[key], key
        for name in ("defuse", "finetune_on_flips_baseline"):
            for metric in ("test_accuracy", "region_test_accuracy"):
                assert entry[name][metric] == lam_report["correction"][name][metric]
    # lambda = 1 trains on region samples only, lambda = 0 on original images only.
    by_lam = {entry["lam"]: entry for entry in results["lams"]}
    assert (
        by_lam[1.0]["defuse"]["region_test_accuracy"]
        > by_lam[0.0]["defuse"]["region_test_accuracy"]
    )
    assert os.path.getsize(out / "lambda_sweep.png") > 10_000


@pytest.mark.parametrize(
    "values, message",
    [
        (["0.1", "x"], "'x', which is not a number"),
        (["1.5"], "outside \\[0, 1\\]"),
        ([], "--lams is empty"),
        (["0.1", "0.10"], "repeats a value"),
    ],
)
def test_bad_lams_are_named(values, message):
    with pytest.raises(InputError, match=message):
        lambda_sweep.parse_lams(values)


def test_lams_are_sorted():
    assert lambda_sweep.parse_lams(["0.5", "0", "1"]) == [0.0, 0.5, 1.0]
