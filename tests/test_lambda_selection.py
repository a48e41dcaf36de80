"""Lambda chosen on the validation split: the record, the params used and reuse."""

import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

from defuse_jax import configuration, correct, data, pipeline
from experiments.configs import mnist5k

GRID = (0.05, 0.5)


def _config(max_drop=0.005):
    config = mnist5k.get_config("test")
    config.dataset.validation_size = 200
    config.correct.lam_grid = GRID
    config.correct.max_validation_drop = max_drop
    config.search_again.enabled = False
    return config


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lambda_selection") / "run")
    report = pipeline.run(_config(), workdir, draw_report=False)
    assert "correction" in report, report.get("notes")
    return workdir, report


def test_each_method_records_the_lambda_the_rule_picks(selected_run):
    _, report = selected_run
    correction = report["correction"]
    selection = correction["lambda_selection"]
    assert selection["grid"] == list(GRID)
    assert selection["validation_size"] == 200
    for name, lam_key in (("defuse", "lam"), ("baseline", "baseline_lam")):
        candidates = selection[name]["candidates"]
        assert [row["lam"] for row in candidates] == list(GRID)
        index = correct.select_lambda(
            GRID,
            [row["validation_accuracy"] for row in candidates],
            [row["validation_region_accuracy"] for row in candidates],
            reference_accuracy=selection["before"]["validation_accuracy"],
            max_drop=selection["max_validation_drop"],
        )
        assert selection[name]["lam"] == correction[lam_key] == GRID[index]


def test_baseline_matched_to_defuse_fix(selected_run):
    _, report = selected_run
    correction = report["correction"]
    selection = correction["lambda_selection"]
    defuse = selection["defuse"]
    target = next(
        row["validation_region_accuracy"]
        for row in defuse["candidates"]
        if row["lam"] == defuse["lam"]
    )
    candidates = selection["baseline"]["candidates"]
    index = correct.match_lambda(
        GRID,
        [row["validation_accuracy"] for row in candidates],
        [row["validation_region_accuracy"] for row in candidates],
        target_region_accuracy=target,
    )
    matched = selection["baseline_matched"]
    assert matched["target_region_accuracy"] == target
    assert matched["lam"] == correction["baseline_matched_lam"] == GRID[index]
    assert matched["reaches_target"] == (
        candidates[index]["validation_region_accuracy"] >= target
    )
    # Scored like the other classifiers, on the same test images and region samples.
    figures = correction["finetune_on_flips_matched"]
    assert set(figures) == set(correction["defuse"])
    assert 0.0 <= figures["test_accuracy"] <= 1.0
    if matched["lam"] == correction["baseline_lam"]:
        assert figures == correction["finetune_on_flips_baseline"]


def test_final_params_are_the_chosen_candidates(selected_run):
    workdir, report = selected_run
    selection = report["correction"]["lambda_selection"]
    checkpoints = os.path.join(workdir, "checkpoints")

    def restore(*parts):
        return ocp.StandardCheckpointer().restore(os.path.join(checkpoints, *parts))

    for name, final in (("defuse", "corrected"), ("baseline", "baseline")):
        chosen = selection[name]["lam"]
        final_params = restore(final)
        for lam in GRID:
            candidate = restore("lambda_candidates", f"{name}_{lam:g}")
            same = jax.tree.all(jax.tree.map(np.array_equal, final_params, candidate))
            assert same == (lam == chosen), (name, lam, chosen)


def test_changing_the_drop_reuses_every_candidate(selected_run, tmp_path, caplog):
    workdir, report = selected_run
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    # Orbax restores reset absl's verbosity to what it was before them, which would
    # end caplog's INFO level; so set absl's own verbosity for the run.
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="absl"):
            again = pipeline.run(
                _config(max_drop=1.0), copy, allow_config_change=True, draw_report=False
            )
    finally:
        absl_logging.set_verbosity(verbosity)
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if m.startswith("Computing lambda_candidates")]
    reused = [m for m in messages if m.startswith("Reusing lambda_candidates")]
    assert len(reused) == 2 * len(GRID)
    # With no limit on the drop, each method takes its best region accuracy.
    for name in ("defuse", "baseline"):
        rows = again["correction"]["lambda_selection"][name]["candidates"]
        best = max(row["validation_region_accuracy"] for row in rows)
        chosen = again["correction"]["lambda_selection"][name]["lam"]
        assert (
            next(r for r in rows if r["lam"] == chosen)["validation_region_accuracy"]
            == best
        )
    assert report["correction"]["before"] == again["correction"]["before"]


def test_pipeline_rejects_dataset_without_validation(tmp_path):
    dataset = data.load_dataset("mnist5k")
    with pytest.raises(configuration.InputError, match="has none.*lam_grid=\\(\\)"):
        pipeline.run(_config(), str(tmp_path / "run"), dataset=dataset)
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
