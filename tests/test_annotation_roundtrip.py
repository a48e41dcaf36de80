"""A hand-filled annotation file changes which regions the binary corrects.

tests/fixtures/annotation_test.csv is the manifest that `experiments.annotate export`
writes for the test config, filled by hand. The test config's run finds 4 regions, all
of which the default majority_source annotator fixes. The fixture's rows, in order:
fix with a label other than the suggested one, not_a_bug, empty (skipped), unsure.
"""

import csv
import os

import pytest
from binary import copy_workdir, read_report, run_binary

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "annotation_test.csv")
REGENERATE = (
    "Regenerate tests/fixtures/annotation_test.csv: run `python -m "
    "experiments.run_defuse --workdir=/tmp/wd --config=experiments/configs/mnist5k.py:test`, "
    "then `python -m experiments.annotate export --workdir=/tmp/wd`, copy "
    "/tmp/wd/annotation/manifest.csv to tests/fixtures/annotation_test.csv, and fill "
    "its first four rows as the docstring of tests/test_annotation_roundtrip.py says "
    "(at least four regions are needed)."
)


def read_fixture():
    with open(FIXTURE, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def fixture_rows_by_role(rows):
    """Return the fixture's rows: (fix, not_a_bug, skipped, unsure)."""
    assert len(rows) >= 4, REGENERATE
    fix, not_a_bug, skipped, unsure = rows[:4]
    assert fix["decision"] == "fix", REGENERATE
    assert fix["label"], REGENERATE
    assert fix["label"] != fix["suggested_label"], REGENERATE
    assert not_a_bug["decision"] == "not_a_bug", REGENERATE
    assert not skipped["label"], REGENERATE
    assert not skipped["decision"], REGENERATE
    assert unsure["decision"] == "unsure", REGENERATE
    return fix, not_a_bug, skipped, unsure


def annotation_by_region(report):
    return {entry["region"]: entry for entry in report["annotation"]["regions"]}


def corrected_regions(report):
    return {
        region
        for region, entry in annotation_by_region(report).items()
        if entry["decision"] == "fix"
    }


def test_filled_file_changes_corrected_regions(finished_run, tmp_path):
    source, _ = finished_run
    original = read_report(source)
    rows = read_fixture()
    fix, not_a_bug, skipped, unsure = fixture_rows_by_role(rows)
    # Fail, not skip, when the test config's regions changed: the fixture is stale.
    if {row["run_id"] for row in rows} != {original["run_id"]}:
        pytest.fail(
            f"The fixture's run_id {rows[0]['run_id']!r} differs from the test "
            f"config's run {original['run_id']!r}, so the test config or the "
            f"regions changed. {REGENERATE}"
        )
    region_ids = {record["region"] for record in original["regions"]}
    if not {int(row["region"]) for row in rows} <= region_ids:
        pytest.fail(
            f"The fixture names regions {[row['region'] for row in rows]} but the "
            f"test config's run has {sorted(region_ids)}. {REGENERATE}"
        )
    assert corrected_regions(original) == region_ids

    workdir = copy_workdir(source, tmp_path / "annotated")
    result = run_binary(
        workdir,
        "--config.annotate.annotator=file",
        f"--config.annotate.file={FIXTURE}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Only the annotate section changed, so the stages before annotation are reused.
    for line in (
        "Reusing classifier params",
        "Reusing vae params",
        "flips.npz (fingerprint",
        "regions.npz (fingerprint",
    ):
        assert line in result.stderr

    report = read_report(workdir)
    assert report["run_id"] == original["run_id"]
    assert report["annotation"]["annotator"] == "file"
    by_region = annotation_by_region(report)
    names = report["dataset"]["class_names"]

    fix_region = int(fix["region"])
    assert corrected_regions(report) == {fix_region}
    assert corrected_regions(report) != corrected_regions(original)
    assert by_region[fix_region]["label"] == names.index(fix["label"])
    assert by_region[fix_region]["label_source"] == "file"
    record = next(r for r in report["regions"] if r["region"] == fix_region)
    assert record["annotated_label"] == names.index(fix["label"])
    assert "correction" in report

    assert by_region[int(not_a_bug["region"])]["decision"] == "not_a_bug"
    assert by_region[int(not_a_bug["region"])]["label"] is None
    assert by_region[int(unsure["region"])]["decision"] == "unsure"
    assert by_region[int(skipped["region"])]["decision"] == "unannotated"

    details = report["annotation"]["details"]
    assert details["file"] == os.path.abspath(FIXTURE)
    assert details["rows_skipped"] == 1
    assert details["skipped_rows"] == [f"line {rows.index(skipped) + 2}"]
    assert report["annotation"]["decisions"] == {
        "fix": 1,
        "not_a_bug": 1,
        "unsure": 1,
        "unannotated": len(region_ids) - 3,
    }

    # The HTML report shows each region's decision. The finished run's report, with
    # every region "fix", names the other decisions only in its table of counts.
    with open(os.path.join(source, "report.html"), encoding="utf-8") as file:
        original_html = file.read()
    with open(os.path.join(workdir, "report.html"), encoding="utf-8") as file:
        html = file.read()
    for decision in ("not_a_bug", "unsure", "unannotated"):
        assert html.count(decision) > original_html.count(decision), decision
