"""Tests of the annotators, the annotation file checks and the export for annotation."""

import csv
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from defuse_jax import (
    annotate,
    annotate_stage,
    annotation_export,
    annotation_file,
    classifier,
    configuration,
    models,
    training,
)
from defuse_jax import regions as regions_lib
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import InputError
from defuse_jax.identify import Flips
from defuse_jax.vae import Generator
from experiments.configs import mnist5k

RUN_ID = "0123456789abcdef"
CLASS_NAMES = ("cat", "dog", "bird")
LATENT_DIM = 4
IMAGE_SHAPE = (8, 8, 1)


def make_regions(source_label, source_purity, predicted_label):
    size = len(source_label)
    return regions_lib.Regions(
        component=np.arange(size, dtype=np.int32),
        weight=np.full(size, 1.0 / size, np.float32),
        mean=np.zeros((size, LATENT_DIM), np.float32)
        + np.arange(size)[:, None].astype(np.float32),
        covariance=np.tile(0.1 * np.eye(LATENT_DIM, dtype=np.float32), (size, 1, 1)),
        member_count=np.full(size, 10, np.int32),
        source_label=np.asarray(source_label, np.int32),
        source_purity=np.asarray(source_purity, np.float32),
        predicted_label=np.asarray(predicted_label, np.int32),
        predicted_purity=np.ones(size, np.float32),
        sample_error_rate=np.full(size, 0.5, np.float32),
    )


NO_FLIPS = Flips(
    codes=np.zeros((0, LATENT_DIM), np.float32),
    source_index=np.zeros(0, np.int32),
    source_label=np.zeros(0, np.int32),
    predicted_label=np.zeros(0, np.int32),
    noise_norm=np.zeros(0, np.float32),
)
NO_ASSIGNMENTS = np.zeros(0, np.int32)


def write_csv(path, rows, columns=annotation_file.MANIFEST_COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})
    return str(path)


def row(region, label="", decision="", run_id=RUN_ID):
    return {"run_id": run_id, "region": region, "label": label, "decision": decision}


def read(path, region_ids=(0, 1, 2, 3)):
    return annotation_file.read_file_decisions(
        str(path), CLASS_NAMES, RUN_ID, np.asarray(region_ids, np.int32)
    )


# Annotation records.


def test_annotation_without_decisions_derives_them():
    annotation = annotate.Annotation(
        label=np.array([2, annotate.REJECTED, 0]), source="legacy"
    )
    assert annotation.decision.tolist() == ["fix", "unsure", "fix"]
    assert annotation.accepted.tolist() == [True, False, True]
    assert annotation.label_source.tolist() == ["legacy"] * 3
    assert annotation.region_ids.tolist() == [0, 1, 2]


def test_annotation_rejects_fix_without_label():
    with pytest.raises(ValueError, match=r"rows \[1\] are to be fixed but have no"):
        annotate.Annotation(
            label=np.array([1, annotate.REJECTED]),
            source="x",
            decision=["fix", "fix"],
        )


def test_annotation_rejects_label_on_not_a_bug():
    with pytest.raises(ValueError, match=r"rows \[0\] have a label"):
        annotate.Annotation(label=np.array([1]), source="x", decision=["not_a_bug"])


def test_annotation_rejects_unknown_decision():
    with pytest.raises(ValueError, match="'maybe'"):
        annotate.Annotation(label=np.array([-1]), source="x", decision=["maybe"])


def test_summary_is_json_and_names_regions():
    annotation = annotate.Annotation(
        label=np.array([2, -1]),
        source="agreement",
        decision=["fix", "unsure"],
        region_ids=np.array([7, 9]),
        details={"max_disagreement": 0.3},
        region_details={"source_disagreement": np.array([0.1, 0.5])},
    )
    summary = json.loads(json.dumps(annotation.summary()))
    assert summary["annotator"] == "agreement"
    assert summary["accepted"] == 1
    assert summary["rejected"] == 1
    assert summary["decisions"] == {
        "fix": 1,
        "not_a_bug": 0,
        "unsure": 1,
        "unannotated": 0,
    }
    assert summary["regions"][0] == {
        "region": 7,
        "row": 0,
        "label": 2,
        "decision": "fix",
        "label_source": "agreement",
        "source_disagreement": 0.1,
    }
    assert summary["regions"][1]["label"] is None
    assert summary["details"] == {"max_disagreement": 0.3}


# Automatic annotators.


def test_majority_source_fixes_every_region():
    regions = make_regions([2, 0], [0.4, 1.0], [1, 1])
    annotation = annotate.majority_source_annotator(regions, NO_FLIPS, NO_ASSIGNMENTS)
    assert annotation.label.tolist() == [2, 0]
    assert annotation.decision.tolist() == ["fix", "fix"]


def test_agreement_marks_disagreeing_regions_unsure():
    regions = make_regions([2, 0, 1], [1.0, 0.7, 0.6], [1, 1, 0])
    annotation = annotate.agreement_annotator(
        regions, NO_FLIPS, NO_ASSIGNMENTS, max_disagreement=0.3
    )
    # 0.7 purity is exactly at the threshold, so it stays "fix".
    assert annotation.decision.tolist() == ["fix", "fix", "unsure"]
    assert annotation.label.tolist() == [2, 0, annotate.REJECTED]
    assert annotation.label_source.tolist() == ["agreement"] * 3
    np.testing.assert_allclose(
        annotation.region_details["source_disagreement"], [0.0, 0.3, 0.4], atol=1e-6
    )


def test_agreement_threshold_changes_decisions():
    regions = make_regions([2, 0, 1], [1.0, 0.7, 0.6], [1, 1, 0])
    annotation = annotate.agreement_annotator(
        regions, NO_FLIPS, NO_ASSIGNMENTS, max_disagreement=0.1
    )
    assert annotation.decision.tolist() == ["fix", "unsure", "unsure"]


def test_oracle_annotator_takes_majority_vote():
    regions = make_regions([0, 0, 1], [1.0, 1.0, 1.0], [1, 2, 1])
    votes = np.array([[2, 2, 2, 0], [0, 0, 1, 0], [1, 1, 2, 2]])
    annotation = annotate.oracle_annotator(
        regions, NO_FLIPS, NO_ASSIGNMENTS, votes=votes, checkpoint="/ckpt"
    )
    # Region 2's tie goes to label 1, its majority predicted label: not a bug.
    assert annotation.region_details["oracle_label"].tolist() == [2, 0, 1]
    np.testing.assert_allclose(
        annotation.region_details["oracle_agreement"], [0.75, 0.75, 0.5]
    )
    assert annotation.decision.tolist() == ["fix", "fix", "not_a_bug"]
    assert annotation.label.tolist() == [2, 0, annotate.REJECTED]
    assert annotation.details["oracle_checkpoint"] == "/ckpt"


def test_oracle_compares_with_audited_votes():
    # Region 0's members were mostly predicted 1, but on these samples the audited
    # classifier predicts 2, as the oracle does: not a bug. Region 1's members were
    # predicted 0, like the oracle, but the audited classifier now says 1: a bug.
    regions = make_regions([0, 1], [1.0, 1.0], [1, 0])
    votes = np.array([[2, 2, 2, 0], [0, 0, 0, 1]])
    audited = np.array([[2, 2, 1, 2], [1, 1, 0, 1]])
    annotation = annotate.oracle_annotator(
        regions, NO_FLIPS, NO_ASSIGNMENTS, votes=votes, audited_votes=audited
    )
    assert annotation.decision.tolist() == ["not_a_bug", "fix"]
    assert annotation.label.tolist() == [annotate.REJECTED, 0]
    assert annotation.region_details["audited_label"].tolist() == [2, 1]
    with pytest.raises(ValueError, match="audited votes have shape"):
        annotate.oracle_annotator(
            regions,
            NO_FLIPS,
            NO_ASSIGNMENTS,
            votes=votes,
            audited_votes=audited[:, :2],
        )


def test_oracle_annotator_rejects_wrong_vote_shape():
    regions = make_regions([0, 1], [1.0, 1.0], [1, 0])
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        annotate.oracle_annotator(
            regions, NO_FLIPS, NO_ASSIGNMENTS, votes=np.zeros((3, 4), np.int32)
        )


def test_reject_mixed_marks_regions_to_fix_unsure():
    regions = make_regions([2, 0, 1], [0.9, 0.4, 0.3], [1, 1, 1])
    annotation = annotate.Annotation(
        label=np.array([2, 0, -1]),
        source="oracle",
        decision=["fix", "fix", "not_a_bug"],
    )
    result = annotate.reject_mixed(annotation, regions, 0.5)
    assert result.decision.tolist() == ["fix", "unsure", "not_a_bug"]
    assert result.label.tolist() == [2, annotate.REJECTED, annotate.REJECTED]
    assert result.label_source.tolist() == ["oracle", "min_source_purity", "oracle"]
    assert result.details["min_source_purity"] == 0.5


def test_get_annotator_lists_every_name():
    with pytest.raises(ValueError, match="majority_source, agreement, oracle, file"):
        annotate.get_annotator("crowd")


# Annotation files.


def test_file_decisions_follow_the_rows(tmp_path):
    path = write_csv(
        tmp_path / "a.csv",
        [
            row(0, "dog", "fix"),
            row(1, "", "not_a_bug"),
            row(2, "", "unsure"),
            row(3, "bird", "Not a bug"),
        ],
    )
    decisions = read(path)
    assert decisions.decision.tolist() == ["fix", "not_a_bug", "unsure", "not_a_bug"]
    assert decisions.label.tolist() == [1, -1, -1, -1]
    assert decisions.written_label.tolist() == [1, -1, -1, 2]
    assert decisions.line.tolist() == [2, 3, 4, 5]


def test_label_by_name_index_or_case(tmp_path):
    path = write_csv(
        tmp_path / "a.csv",
        [row(0, "bird", "fix"), row(1, "0", "fix"), row(2, "DOG", "fix")],
    )
    assert read(path, (0, 1, 2)).label.tolist() == [2, 0, 1]


def test_class_name_wins_over_index(tmp_path):
    path = write_csv(tmp_path / "a.csv", [row(0, "1", "fix")])
    decisions = annotation_file.read_file_decisions(
        path, ("1", "0"), RUN_ID, np.array([0])
    )
    assert decisions.label.tolist() == [0]


def test_label_without_decision_means_fix(tmp_path):
    path = write_csv(tmp_path / "a.csv", [row(0, "dog", "")])
    decisions = read(path, (0,))
    assert decisions.decision.tolist() == ["fix"]
    assert decisions.label.tolist() == [1]


def test_empty_rows_are_skipped_and_counted(tmp_path):
    path = write_csv(
        tmp_path / "a.csv",
        [row(0, "dog", "fix"), row(1), row(3)],
    )
    decisions = read(path)
    assert decisions.decision.tolist() == [
        "fix",
        "unannotated",
        "unannotated",
        "unannotated",
    ]
    assert decisions.details["rows_read"] == 3
    assert decisions.details["rows_skipped"] == 2
    assert decisions.details["skipped_rows"] == ["line 3", "line 4"]
    assert decisions.details["regions_without_row"] == [2]
    assert decisions.details["unannotated"] == 3


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "a.csv"
    write_csv(path, [row(0, "dog", "fix")])
    with open(path, "a", encoding="utf-8") as file:
        file.write("\n,,,,,,,,\n")
    decisions = read(path, (0,))
    assert decisions.details["rows_read"] == 1


def test_region_ids_need_not_be_row_numbers(tmp_path):
    path = write_csv(tmp_path / "a.csv", [row(12, "dog", "fix"), row(5, "", "unsure")])
    decisions = read(path, (5, 12))
    assert decisions.decision.tolist() == ["unsure", "fix"]
    assert decisions.label.tolist() == [-1, 1]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [row(0, "dog", "fix"), row(1, "dog", "fix", run_id="fedcba9876543210")],
            (
                r"line 3: run_id 'fedcba9876543210' differs from this run's "
                r"'0123456789abcdef', so it was exported from another run.*"
                r"experiments.annotate export"
            ),
        ),
        (
            [row(0, "dog", "fix"), row(9, "dog", "fix")],
            (
                r"line 3: region 9 is not a region of this run; its regions are "
                r"\[0, 1, 2, 3\]"
            ),
        ),
        (
            [row(0, "horse", "fix")],
            (
                r"line 2: label 'horse' is not a class of this dataset; use a class name "
                r"\(cat, dog, bird\) or an index from 0 to 2"
            ),
        ),
        ([row(0, "3", "fix")], r"line 2: label '3' is not a class"),
        (
            [row(0, "dog", "fix"), row(1, "", "unsure"), row(0, "cat", "fix")],
            r"line 4: region 0 already has a row at line 2; keep one row per region",
        ),
        (
            [row(0, "dog", "maybe")],
            r"line 2: decision 'maybe' is invalid; use fix, not_a_bug, unsure",
        ),
        (
            [row(0, "dog", "fix"), row(1, "", "fix")],
            r"line 3: decision 'fix' needs a label",
        ),
        ([row("first", "dog", "fix")], r"line 2: region 'first' is not a region id"),
    ],
)
def test_invalid_rows_name_the_line(tmp_path, rows, message):
    path = write_csv(tmp_path / "a.csv", rows)
    with pytest.raises(InputError, match=message) as error:
        read(path)
    assert str(path) in str(error.value)


def test_missing_column_is_named(tmp_path):
    path = write_csv(
        tmp_path / "a.csv", [{"run_id": RUN_ID, "region": 0}], ("run_id", "region")
    )
    with pytest.raises(
        InputError, match="line 1 .*columns label, decision are missing"
    ):
        read(path)


def test_header_case_is_ignored(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("Run_ID,Region,Label,Decision\n" + f"{RUN_ID},0,1,Fix\n")
    decisions = read(path)
    assert decisions.label.tolist()[0] == 1


def test_semicolon_file_is_named(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("run_id;region;label;decision\n" + f"{RUN_ID};0;1;fix\n")
    with pytest.raises(InputError, match="separated by semicolons"):
        read(path)


def test_extra_cells_are_rejected(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("run_id,region,label,decision\n" + f"{RUN_ID},0,dog,fix,extra\n")
    with pytest.raises(InputError, match="line 2: the row has more cells"):
        read(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="missing.csv not found; write it with"):
        read(tmp_path / "missing.csv")


def test_json_manifest_is_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            {
                "run_id": RUN_ID,
                "regions": [
                    row(0, 2, "fix"),
                    row(1, None, None),
                    row(2, "cat", "not_a_bug"),
                ],
            }
        )
    )
    decisions = read(path, (0, 1, 2))
    assert decisions.decision.tolist() == ["fix", "unannotated", "not_a_bug"]
    assert decisions.label.tolist() == [2, -1, -1]
    assert decisions.details["skipped_rows"] == ["regions[1]"]


def test_json_errors_name_the_entry(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"regions": [row(0, 2, "fix"), row(1, 7, "fix")]}))
    with pytest.raises(InputError, match=r"regions\[1\]: label '7' is not a class"):
        read(path)


def test_json_run_id_is_checked(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"run_id": "old", "regions": [row(0, 2, "fix")]}))
    with pytest.raises(InputError, match="run_id 'old' differs"):
        read(path)


# Export for annotation.


def make_workdir(path, channels=1, run_id=RUN_ID, region_ids=(0, 3)):
    """Write the report.json and region_samples.npz that an export reads."""
    os.makedirs(path, exist_ok=True)
    samples_per_region = 3
    regions = [
        {
            "region": region,
            "source_label": index % 3,
            "predicted_label": (index + 1) % 3,
            "member_count": 10 + index,
        }
        for index, region in enumerate(region_ids)
    ]
    report = {
        "run_id": run_id,
        "regions": regions,
        "dataset": {"class_names": list(CLASS_NAMES)},
    }
    with open(os.path.join(path, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file)
    count = len(region_ids) * samples_per_region
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 5, 6, channels), dtype=np.uint8)
    workdir_lib.save_arrays(
        os.path.join(path, "region_samples.npz"),
        run_id,
        {
            "region_id": np.repeat(
                np.asarray(region_ids, np.int32), samples_per_region
            ),
            "images": images,
            "predicted": np.zeros(count, np.int32),
            "class_names": np.asarray(CLASS_NAMES),
        },
    )
    return str(path), images


def test_export_writes_samples_and_manifest(tmp_path):
    workdir, images = make_workdir(tmp_path / "wd")
    result = annotation_export.export_regions(workdir)
    folder = os.path.join(workdir, "annotation")

    assert result.folder == folder
    assert (result.num_regions, result.num_images) == (2, 6)
    assert sorted(os.listdir(os.path.join(folder, "region_03"))) == [
        f"region_03_sample_{i:02d}.png" for i in range(3)
    ]
    with Image.open(
        os.path.join(folder, "region_03", "region_03_sample_01.png")
    ) as png:
        assert png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), images[4, ..., 0])

    with open(result.manifest_csv, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == annotation_file.MANIFEST_COLUMNS
    assert rows[1] == {
        "run_id": RUN_ID,
        "region": "3",
        "suggested_label": "dog",
        "source_label": "dog",
        "predicted_label": "bird",
        "member_count": "11",
        "samples": "region_03",
        "label": "",
        "decision": "",
    }

    with open(result.manifest_json, encoding="utf-8") as file:
        manifest = json.load(file)
    assert manifest["run_id"] == RUN_ID
    assert manifest["regions"][1]["region"] == 3


def test_export_keeps_rgb_channels(tmp_path):
    workdir, images = make_workdir(tmp_path / "wd", channels=3)
    annotation_export.export_regions(workdir)
    path = os.path.join(workdir, "annotation", "region_00", "region_00_sample_02.png")
    with Image.open(path) as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), images[2])


def test_export_splits_other_channel_counts(tmp_path):
    workdir, images = make_workdir(tmp_path / "wd", channels=2)
    annotation_export.export_regions(workdir)
    folder = os.path.join(workdir, "annotation", "region_00")
    assert "region_00_sample_00_c1.png" in os.listdir(folder)
    with Image.open(os.path.join(folder, "region_00_sample_00_c1.png")) as png:
        np.testing.assert_array_equal(np.asarray(png), images[0, ..., 1])


def test_exported_manifest_reads_back_as_unannotated(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    result = annotation_export.export_regions(workdir)
    for path in (result.manifest_csv, result.manifest_json):
        decisions = read(path, (0, 3))
        assert decisions.decision.tolist() == ["unannotated", "unannotated"]
        assert decisions.details["rows_skipped"] == 2


def test_export_refuses_to_overwrite_filled_manifest(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    result = annotation_export.export_regions(workdir)
    annotation_export.export_regions(workdir)  # An empty manifest may be replaced.
    with open(result.manifest_csv, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    rows[1]["decision"] = "unsure"
    write_csv(result.manifest_csv, rows)
    with pytest.raises(InputError, match=r"manifest.csv already has labels or deci"):
        annotation_export.export_regions(workdir)
    with open(result.manifest_csv, encoding="utf-8") as file:
        assert "unsure" in file.read()
    annotation_export.export_regions(workdir, overwrite=True)
    with open(result.manifest_csv, encoding="utf-8") as file:
        assert "unsure" not in file.read()


def test_export_refuses_filled_json_manifest(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    result = annotation_export.export_regions(workdir)
    with open(result.manifest_json, encoding="utf-8") as file:
        manifest = json.load(file)
    manifest["regions"][0]["label"] = "dog"
    with open(result.manifest_json, "w", encoding="utf-8") as file:
        json.dump(manifest, file)
    with pytest.raises(InputError, match=r"manifest.json already has .*regions\[0\]"):
        annotation_export.export_regions(workdir)


def test_export_removes_regions_of_older_exports(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd", region_ids=(0, 3))
    annotation_export.export_regions(workdir)
    make_workdir(tmp_path / "wd", run_id="fedcba9876543210", region_ids=(0, 1))
    annotation_export.export_regions(workdir)
    folders = sorted(os.listdir(os.path.join(workdir, "annotation")))
    assert folders == ["manifest.csv", "manifest.json", "region_00", "region_01"]


def test_export_rejects_samples_of_another_run(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    make_workdir(tmp_path / "other", run_id="fedcba9876543210")
    os.replace(
        tmp_path / "other" / "region_samples.npz",
        os.path.join(workdir, "region_samples.npz"),
    )
    with pytest.raises(InputError, match="samples of run 'fedcba9876543210'"):
        annotation_export.export_regions(workdir)


def test_export_rejects_report_without_run_id(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    path = os.path.join(workdir, "report.json")
    with open(path, encoding="utf-8") as file:
        report = json.load(file)
    del report["run_id"]
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file)
    with pytest.raises(InputError, match="has no run_id"):
        annotation_export.export_regions(workdir)


def test_check_file_reads_against_the_workdir(tmp_path):
    workdir, _ = make_workdir(tmp_path / "wd")
    path = write_csv(tmp_path / "a.csv", [row(3, "cat", "fix"), row(0)])
    report, decisions = annotation_export.check_file(workdir, path)
    assert report["run_id"] == RUN_ID
    assert decisions.decision.tolist() == ["unannotated", "fix"]
    assert decisions.label.tolist() == [-1, 0]


# Config checks and the stage.


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"annotator": "file"}, "annotator='file' needs config.annotate.file"),
        ({"annotator": "oracle"}, "needs config.annotate.oracle_checkpoint"),
        ({"max_disagreement": 1.5}, r"max_disagreement=1.5 is out of range"),
        ({"oracle_features": (8, 0)}, "oracle_features=.* is invalid"),
        ({"oracle_hidden_dim": -1}, r"oracle_hidden_dim=-1 is out of range"),
        ({"oracle_samples": 0}, r"oracle_samples=0 is out of range"),
        ({"file": 3}, "config.annotate.file=3 must be a path"),
        ({"annotator": "crowd"}, "use one of majority_source, agreement, oracle, file"),
    ],
)
def test_invalid_annotate_config_raises(changes, message):
    config = mnist5k.get_config("test")
    # A new section, because ConfigDict keeps each field's type.
    config.annotate = ml_collections.ConfigDict(
        {**config.annotate.to_dict(), **changes}
    )
    with pytest.raises(InputError, match=message):
        configuration.validate_config(config)


def test_annotate_config_missing_field_raises():
    config = mnist5k.get_config("test")
    del config.annotate.oracle_samples
    with pytest.raises(InputError, match=r"missing the fields \['oracle_samples'\]"):
        configuration.validate_config(config)


def fake_dataset():
    return types.SimpleNamespace(
        class_names=CLASS_NAMES, num_classes=len(CLASS_NAMES), image_shape=IMAGE_SHAPE
    )


def test_check_inputs_reads_the_file_before_training(tmp_path):
    config = mnist5k.get_config("test")
    config.annotate.annotator = "file"
    config.annotate.file = write_csv(tmp_path / "a.csv", [row(0, "horse", "fix")])
    with pytest.raises(InputError, match="line 2: label 'horse'"):
        annotate_stage.check_inputs(config, fake_dataset())
    config.annotate.file = str(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="not found"):
        annotate_stage.check_inputs(config, fake_dataset())


def save_oracle(path, features=(2,), hidden_dim=4):
    cnn = models.CNN(len(CLASS_NAMES), features, hidden_dim)
    params = cnn.init(jax.random.key(1), jnp.zeros((1, *IMAGE_SHAPE)))["params"]
    training.save_params(str(path), params)
    return cnn, params


def oracle_config(path, features=(2,), hidden_dim=4):
    config = mnist5k.get_config("test")
    config.annotate.annotator = "oracle"
    config.annotate.oracle_checkpoint = str(path)
    config.annotate.oracle_features = features
    config.annotate.oracle_hidden_dim = hidden_dim
    return config


def test_oracle_missing_folder_raises(tmp_path):
    config = oracle_config(tmp_path / "nothing")
    with pytest.raises(InputError, match=r"oracle_checkpoint='.*nothing' is not a"):
        annotate_stage.check_inputs(config, fake_dataset())


def test_oracle_other_architecture_names_the_fields(tmp_path):
    save_oracle(tmp_path / "oracle", features=(2,), hidden_dim=4)
    config = oracle_config(tmp_path / "oracle", features=(3,), hidden_dim=4)
    with pytest.raises(InputError) as error:
        annotate_stage.check_inputs(config, fake_dataset())
    message = str(error.value)
    assert str(tmp_path / "oracle") in message
    assert "features (3,), hidden_dim 4 and 3 classes" in message
    assert "contains a CNN with features (2,), hidden_dim 4 and 3 classes" in message
    assert "--config.annotate.oracle_features" in message


def fake_run(config, workdir):
    weights = jax.random.normal(jax.random.key(2), (LATENT_DIM, 64))

    def decode(params, codes):
        return jax.nn.sigmoid(codes @ params).reshape(-1, *IMAGE_SHAPE)

    dataset = fake_dataset()

    def predict_zero(params, images):
        """The audited classifier: class 0 for every image."""
        del params
        return jnp.zeros((images.shape[0], dataset.num_classes)).at[:, 0].set(1.0)

    return types.SimpleNamespace(
        config=config,
        dataset=dataset,
        workdir=str(workdir),
        keys={"annotate": jax.random.key(3)},
        generator=Generator(encode=None, decode=decode),
        apply_fn=predict_zero,
    ), weights


def test_oracle_stage_votes_on_decoded_samples(tmp_path):
    cnn, params = save_oracle(tmp_path / "oracle")
    config = oracle_config(tmp_path / "oracle")
    config.annotate.oracle_samples = 5
    run, generator_params = fake_run(config, tmp_path)
    regions = make_regions([0, 1, 2], [1.0, 1.0, 1.0], [0, 0, 0])
    annotation = annotate_stage.annotate_regions(
        run,
        regions,
        np.array([4, 5, 6]),
        NO_FLIPS,
        {"assignments": NO_ASSIGNMENTS},
        generator_params,
        RUN_ID,
    )

    # The same samples, decoded and classified without the stage.
    codes = regions_lib.sample_codes(
        jax.random.key(3),
        jnp.asarray(regions.mean),
        jnp.asarray(regions.covariance),
        tau=config.regions.tau,
        num_samples=5,
    ).reshape(-1, LATENT_DIM)
    images = jax.nn.sigmoid(codes @ generator_params).reshape(-1, *IMAGE_SHAPE)
    votes = classifier.predict(
        classifier.make_apply_fn(cnn), params, np.asarray(images)
    ).reshape(3, 5)
    expected = [int(np.argmax(np.bincount(v))) for v in votes]

    assert annotation.region_details["oracle_label"].tolist() == expected
    assert annotation.source == "oracle"
    assert annotation.region_ids.tolist() == [4, 5, 6]
    # The audited classifier predicts 0 on every sample, so oracle label 0 is no bug.
    for row_index, label in enumerate(expected):
        decision = "not_a_bug" if label == 0 else "fix"
        assert annotation.decision[row_index] == decision
    assert annotation.details["oracle_checkpoint"] == str(tmp_path / "oracle")


def test_stage_passes_max_disagreement(tmp_path):
    config = mnist5k.get_config("test")
    config.annotate.annotator = "agreement"
    config.annotate.max_disagreement = 0.2
    run, _ = fake_run(config, tmp_path)
    regions = make_regions([0, 1], [0.9, 0.75], [1, 0])
    annotation = annotate_stage.annotate_regions(
        run,
        regions,
        np.array([0, 1]),
        NO_FLIPS,
        {"assignments": NO_ASSIGNMENTS},
        None,
        RUN_ID,
    )
    assert annotation.decision.tolist() == ["fix", "unsure"]


def test_min_source_purity_spares_file_decisions(tmp_path):
    regions = make_regions([0, 1], [0.9, 0.4], [1, 0])
    config = mnist5k.get_config("test")
    config.annotate.min_source_purity = 0.5
    run, _ = fake_run(config, tmp_path)
    inputs = (regions, np.array([0, 1]), NO_FLIPS, {"assignments": NO_ASSIGNMENTS})
    annotation = annotate_stage.annotate_regions(run, *inputs, None, RUN_ID)
    assert annotation.decision.tolist() == ["fix", "unsure"]
    assert annotation.label_source.tolist() == ["majority_source", "min_source_purity"]

    config.annotate.annotator = "file"
    config.annotate.file = write_csv(
        tmp_path / "a.csv", [row(0, "", "not_a_bug"), row(1, "bird", "fix")]
    )
    annotation = annotate_stage.annotate_regions(run, *inputs, None, RUN_ID)
    assert annotation.decision.tolist() == ["not_a_bug", "fix"]
    assert annotation.label.tolist() == [-1, 2]
    assert annotation.label_source.tolist() == ["file", "file"]
    assert annotation.summary()["regions"][1]["file_line"] == 3
