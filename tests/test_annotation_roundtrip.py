"""A hand-filled annotation file changes which regions the binary corrects.

tests/fixtures/annotation_test.csv is a manifest that `experiments.annotate export`
wrote for the test config, filled by hand. Its first four rows, in order: fix with a
label other than the suggested one, not_a_bug, empty (skipped), unsure.

Region ids and the run id come from floating-point results, and these differ between
machines (different flips from the same classifier). So the test exports the manifest of
the run on this machine and copies the fixture's hand-filled cells onto its first four
rows, in order.
"""

import csv
import os

import pytest
from binary import copy_workdir, read_report, run_binary

from defuse_jax import annotation_export

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "annotation_test.csv")
FIXTURE_HELP = (
    "tests/fixtures/annotation_test.csv needs at least four rows, filled as the "
    "docstring of tests/test_annotation_roundtrip.py says."
)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def fixture_rows_by_role(rows):
    """Return the fixture's rows: (fix, not_a_bug, skipped, unsure)."""
    assert len(rows) >= 4, FIXTURE_HELP
    fix, not_a_bug, skipped, unsure = rows[:4]
    assert fix["decision"] == "fix", FIXTURE_HELP
    assert fix["label"], FIXTURE_HELP
    assert fix["label"] != fix["suggested_label"], FIXTURE_HELP
    assert not_a_bug["decision"] == "not_a_bug", FIXTURE_HELP
    assert not skipped["label"], FIXTURE_HELP
    assert not skipped["decision"], FIXTURE_HELP
    assert unsure["decision"] == "unsure", FIXTURE_HELP
    return fix, not_a_bug, skipped, unsure


def fill_manifest(manifest_csv, fixture_rows, class_names, path):
    """Copy the fixture's label and decision cells onto the manifest's first four rows.

    The filled file keeps only those four rows, so regions after them are unannotated,
    as in the fixture. The fix row keeps the fixture's label unless this run suggests that label for
    the region. Then it takes the first other class, so the file still overrides the
    suggestion. Returns the filled rows.
    """
    rows = read_csv(manifest_csv)
    if len(rows) < 4:
        pytest.fail(
            f"The test config's run has {len(rows)} regions; the round trip needs at "
            "least four. Check experiments/configs/mnist5k.py:test."
        )
    with open(manifest_csv, newline="", encoding="utf-8") as file:
        fieldnames = csv.DictReader(file).fieldnames
    rows = rows[:4]
    for row, filled in zip(rows, fixture_rows[:4]):
        row["label"] = filled["label"]
        row["decision"] = filled["decision"]
    if rows[0]["label"] == rows[0]["suggested_label"]:
        rows[0]["label"] = next(
            name for name in class_names if name != rows[0]["suggested_label"]
        )
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return rows


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
    fixture_rows_by_role(read_csv(FIXTURE))
    export = annotation_export.export_regions(source, out=str(tmp_path / "export"))
    filled_path = str(tmp_path / "annotation_filled.csv")
    rows = fill_manifest(
        export.manifest_csv,
        read_csv(FIXTURE),
        original["dataset"]["class_names"],
        filled_path,
    )
    fix, not_a_bug, skipped, unsure = fixture_rows_by_role(rows)
    assert {row["run_id"] for row in rows} == {original["run_id"]}
    region_ids = {record["region"] for record in original["regions"]}
    assert corrected_regions(original) == region_ids

    workdir = copy_workdir(source, tmp_path / "annotated")
    result = run_binary(
        workdir,
        "--config.annotate.annotator=file",
        f"--config.annotate.file={filled_path}",
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
    assert details["file"] == os.path.abspath(filled_path)
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
