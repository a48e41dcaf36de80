"""Tests of the experiments.run_table binary and its table."""

import json
import math
import os

import pytest
from binary import copy_workdir, run_module

from defuse_jax import configuration
from defuse_jax.configuration import InputError
from experiments import cli, table_lib


def _row(dataset, seed, **figures):
    row = {
        "dataset": dataset,
        "seed": seed,
        "classifier_test_accuracy": 0.9,
        "num_flips": 100.0,
        "searched_images": 400.0,
        "flips_per_image": 0.25,
        "regions": 5.0,
        "regions_corrected": 4.0,
        "lam": 0.05,
        "baseline_lam": 0.05,
        "region_before": 0.4,
        "region_defuse": 0.8,
        "region_baseline": 0.5,
        "test_before": 0.9,
        "test_defuse": 0.905,
        "test_baseline": 0.9,
    }
    row.update(figures)
    return row


def test_table_mean_and_sample_std():
    rows = [
        _row("a", 0, region_defuse=0.7, num_flips=90.0, baseline_lam=0.2),
        _row("a", 1, region_defuse=0.9, num_flips=110.0, lam=0.1, baseline_lam=0.5),
        _row("b", 0),
    ]
    text = table_lib.markdown_table(rows)
    # Sample std of 70 and 90 is 14.1; of 90 and 110 it is 14.
    assert (
        "| a | 2 | 90.0 ± 0.0 | 100 ± 14 | 0.250 ± 0.000 | 5.0 ± 0.0 (4.0 ± 0.0) |"
        in text
    )
    assert "| 40.0 ± 0.0 → 80.0 ± 14.1 |" in text
    assert "| b | 1 | 90.0 | 100 | 0.250 | 5 (4) | 40.0 → 80.0 | 40.0 → 50.0 |" in text
    # The lambdas each method used, over the seeds of a dataset.
    assert "| 0.05, 0.1 / 0.2, 0.5 |" in text
    assert "| 0.05 / 0.05 |" in text
    assert text.count("| dataset | seeds |") == 1
    assert text.count("| dataset | seed |") == 1
    assert text.count("| a | 0 |") == 1
    assert text.count("| a | 1 |") == 1


def test_claim_check_failing_parts():
    passing = table_lib.check_claim([_row("a", 0), _row("a", 1)])
    assert passing.count("(holds") == 3
    assert "Defuse is above in 2 of 2 seeds" in passing
    fails = table_lib.check_claim(
        [_row("a", 0, region_defuse=0.6, test_defuse=0.88, test_baseline=0.89)]
    )
    assert "region test accuracy +20.0 points (fails" in fails
    assert "test accuracy -2.0 points (fails" in fails
    assert "baseline's -1.0 points (fails" in fails


def test_matched_baseline_table_and_claim():
    matched = {"matched_lam": 0.5, "region_matched": 0.6, "test_matched": 0.89}
    rows = [
        _row("a", 0, test_baseline=0.91, matched_reaches_target=False, **matched),
        _row("a", 1, test_baseline=0.91, matched_reaches_target=True, **matched),
    ]
    text = table_lib.markdown_table(rows)
    assert "finetune on flips at Defuse's fix (%)" in text
    assert "| a | 2 | 40.0 ± 0.0 → 80.0 ± 0.0 | 40.0 ± 0.0 → 60.0 ± 0.0 |" in text
    assert "| 0.05 / 0.5 | 1 of 2 |" in text
    assert "| a | 1 | 40.0 → 80.0 | 40.0 → 60.0 | 90.0 → 90.5 | 90.0 → 89.0 |" in text
    # The claim compares at an equal fix, and still states the other comparison.
    claim = table_lib.check_claim(rows)
    assert "the baseline's at Defuse's fix +1.5 points (holds" in claim
    assert (
        "at its own lambda (the same validation drop allowed): test accuracy -0.5"
        in claim
    )
    # Without matched figures the table has no second part.
    assert "at Defuse's fix" not in table_lib.markdown_table([_row("a", 0)])


def test_row_figures_without_correction():
    report = {
        "classifier_test_accuracy": 0.95,
        "search": {"num_flips": 30, "searched_images": 120},
        "distill": {"num_regions": 3},
        "annotation": {"accepted": 0},
    }
    row = table_lib.row_figures(report)
    assert row["flips_per_image"] == pytest.approx(0.25)
    assert row["regions"] == 3
    assert row["regions_corrected"] == 0
    assert math.isnan(row["region_defuse"])
    assert math.isnan(row["lam"])
    text = table_lib.markdown_table([{"dataset": "x", "seed": 0, **row}])
    assert "| x | 0 | 95.0 | 30 | 0.250 | 3 (0) | n/a → n/a |" in text
    assert "- x: no run corrected a region" in text


def test_bad_seeds_and_config_names():
    with pytest.raises(InputError, match="not an int"):
        cli.parse_seeds(["0", "one"])
    with pytest.raises(InputError, match="distinct"):
        cli.parse_seeds(["1", "1"])
    with pytest.raises(InputError, match="mnist5k"):
        cli.config_path("no_such_dataset")
    with pytest.raises(InputError, match="Unknown config variant"):
        cli.load_config(cli.config_path("digits"), "huge")


def test_config_variant_suffix():
    assert cli.split_variant("mnist5k:test", "") == ("mnist5k", "test")
    path = "experiments/configs/mnist5k.py"
    assert cli.split_variant(f"{path}:test", "") == (path, "test")
    assert cli.split_variant("mnist5k", "test") == ("mnist5k", "test")
    assert cli.split_variant("mnist5k:", "test") == ("mnist5k", "")


def test_interrupt_exits_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with cli.exit_on_known_errors():
            raise KeyboardInterrupt
    assert exit_info.value.code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_load_configs_names_and_clashes():
    with pytest.raises(InputError, match="--datasets is empty"):
        table_lib.load_configs([], "")
    with pytest.raises(InputError, match="would share the workdirs OUT/mnist5k"):
        table_lib.load_configs(["mnist5k", "experiments/configs/mnist5k.py:test"], "")
    configs = table_lib.load_configs(["mnist5k:test", "digits"], "")
    assert list(configs) == ["mnist5k", "digits"]
    test_variant = cli.load_config(cli.config_path("mnist5k"), "test")
    assert configs["mnist5k"].to_dict() == test_variant.to_dict()
    full = cli.load_config(cli.config_path("digits"), "")
    assert configs["digits"].to_dict() == full.to_dict()


def test_binary_reuses_finished_run(finished_run, tmp_path):
    source, _ = finished_run
    out = tmp_path / "table"
    copy_workdir(source, out / "mnist5k" / "seed_0")
    result = run_module(
        "experiments.run_table",
        f"--out={out}",
        "--datasets=mnist5k",
        "--seeds=0",
        "--variant=test",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classifier: training" not in result.stderr
    assert "vae: training" not in result.stderr

    with open(os.path.join(source, "report.json"), encoding="utf-8") as file:
        report = json.load(file)
    with open(out / "table.json", encoding="utf-8") as file:
        (row,) = json.load(file)["runs"]
    correction = report["correction"]
    assert row["classifier_test_accuracy"] == report["classifier_test_accuracy"]
    assert row["num_flips"] == report["search"]["num_flips"]
    assert row["test_defuse"] == correction["defuse"]["test_accuracy"]
    assert (
        row["region_baseline"]
        == (correction["finetune_on_flips_baseline"]["region_test_accuracy"])
    )
    table = (out / "table.md").read_text("utf-8")
    assert result.stdout == table
    expected = f"| mnist5k | 0 | {100 * report['classifier_test_accuracy']:.1f} |"
    assert expected in table


def test_binary_unknown_dataset(tmp_path):
    result = run_module(
        "experiments.run_table",
        f"--out={tmp_path}",
        "--datasets=imagenet",
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Config 'imagenet'")
    assert not (tmp_path / "table.md").exists()


@pytest.mark.parametrize("name", ["mnist5k", "digits", "fashion_mnist"])
@pytest.mark.parametrize("variant", ["", "test"])
def test_dataset_configs_validate(name, variant):
    config = cli.load_config(cli.config_path(name), variant)
    configuration.validate_config(config)
    assert config.dataset.name == name


def _selection(defuse_lam, baseline_lam):
    def candidates(accuracies):
        return [
            {
                "lam": lam,
                "validation_accuracy": acc,
                "validation_region_accuracy": 0.5 + lam,
            }
            for lam, acc in zip((0.05, 0.2), accuracies, strict=True)
        ]

    return {
        "grid": [0.05, 0.2],
        "max_validation_drop": 0.005,
        "before": {"validation_accuracy": 0.95, "validation_region_accuracy": 0.4},
        "defuse": {"lam": defuse_lam, "candidates": candidates((0.95, 0.93))},
        "baseline": {"lam": baseline_lam, "candidates": candidates((0.95, 0.95))},
        "baseline_matched": {"lam": 0.2, "reaches_target": True},
    }


def test_selection_plot_written_only_with_selection(tmp_path):
    path = str(tmp_path / "lambda_selection.png")
    assert not table_lib.save_selection_plot(path, [_row("a", 0)])
    assert not os.path.exists(path)
    rows = [
        _row("a", 0, lambda_selection=_selection(0.05, 0.2)),
        _row("b", 0, lambda_selection=_selection(0.2, 0.05)),
    ]
    assert table_lib.save_selection_plot(path, rows)
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_row_figures_keep_the_selection_record():
    selection = _selection(0.05, 0.2)
    report = {
        "correction": {"lam": 0.05, "baseline_lam": 0.2, "lambda_selection": selection},
    }
    row = table_lib.row_figures(report)
    assert row["lam"] == 0.05
    assert row["baseline_lam"] == 0.2
    assert row["lam_chosen_on"] == "validation"
    assert row["lambda_selection"] == selection
    assert math.isnan(row["test_matched"])
    selection["baseline_matched"] = {"lam": 0.2, "reaches_target": False}
    report["correction"]["baseline_matched_lam"] = 0.2
    report["correction"]["finetune_on_flips_matched"] = {
        "test_accuracy": 0.9,
        "region_test_accuracy": 0.5,
    }
    row = table_lib.row_figures(report)
    assert (row["matched_lam"], row["test_matched"], row["region_matched"]) == (
        0.2,
        0.9,
        0.5,
    )
    assert row["matched_reaches_target"] is False
    # A report from before selection used its one lambda for both methods.
    older = table_lib.row_figures({"correction": {"lam": 0.1}})
    assert older["baseline_lam"] == 0.1
    assert older["lam_chosen_on"] == "config"
