"""Annotation files: the manifest a person fills, read back as one decision per region.

`annotation_export.export_regions` writes the manifest (manifest.csv and manifest.json,
with the same rows) next to each region's sample PNGs. `read_file_decisions` reads a
filled one back for the "file" annotator.

Manifest columns:
    run_id           the id of the run's regions; a file with another id is rejected
    region           the region's id, as report.json "region"
    suggested_label  the majority source label of the region's flips (class name)
    source_label, predicted_label, member_count   the region's statistics
    samples          the folder of its PNGs, relative to the manifest
    label            to fill: the class to correct the region to (name or index)
    decision         to fill: fix, not_a_bug or unsure

A label with an empty decision means fix. A row with neither is skipped, and its region,
like a region without a row, stays "unannotated" and is not corrected. A label next to
not_a_bug or unsure is checked and recorded, but not used.
"""

from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from defuse_jax import annotate
from defuse_jax.configuration import InputError

MANIFEST_COLUMNS = (
    "run_id",
    "region",
    "suggested_label",
    "source_label",
    "predicted_label",
    "member_count",
    "samples",
    "label",
    "decision",
)
# Columns the file annotator reads; the others are there for the person filling it.
REQUIRED_COLUMNS = ("run_id", "region", "label", "decision")


class _Row(NamedTuple):
    """One row of an annotation file, before validation."""

    where: str  # "line 4" (CSV) or "regions[2]" (JSON), for error messages.
    line: int  # The CSV line number, or the JSON entry index.
    values: dict[str, Any]


class FileEntry(NamedTuple):
    """One validated row of an annotation file.

    decision: "fix", "not_a_bug" or "unsure"; "" for a row with neither label nor
        decision, which is skipped.
    label: The class index written in the row, -1 when empty.
    """

    where: str
    line: int
    run_id: str
    region: int
    label: int
    decision: str


class ParsedFile(NamedTuple):
    """An annotation file whose rows are valid on their own.

    Rows are checked against a run's run id and region ids by `match_file`.
    """

    path: str
    entries: list[FileEntry]
    run_id: str | None  # The JSON manifest's top-level run id; None for CSV.


def _normalise_decision(text: str) -> str:
    return re.sub(r"[\s-]+", "_", text.strip().lower())


def _cell(value: Any) -> str:
    """Return a file cell as stripped text; JSON null is empty."""
    return "" if value is None else str(value).strip()


def _read_csv_rows(path: str) -> list[_Row]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            if reader.fieldnames is None:
                raise InputError(
                    f"Annotation file {path} is empty; pass the manifest.csv that "
                    "`python -m experiments.annotate export` wrote, filled in."
                )
            # Column names are matched without case, as spreadsheets may capitalise.
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
            header = list(reader.fieldnames)
            if len(header) == 1 and ";" in header[0]:
                raise InputError(
                    f"Annotation file {path}, line 1 (the header): the cells are "
                    "separated by semicolons; save it as CSV with commas (in a "
                    "spreadsheet: CSV UTF-8, comma-delimited)."
                )
            _check_columns(path, "line 1 (the header)", header)
            rows = []
            for record in reader:
                if None in record:
                    raise InputError(
                        f"{path}, line {reader.line_num}: the row has more cells than "
                        f"the header's {len(header)}; remove the extra cells (a comma "
                        "inside a label needs quotes)."
                    )
                values = {
                    key.strip(): _cell(value)
                    for key, value in record.items()
                    if key is not None
                }
                if any(values.values()):
                    rows.append(
                        _Row(f"line {reader.line_num}", reader.line_num, values)
                    )
            return rows
    except UnicodeDecodeError as error:
        raise InputError(
            f"Annotation file {path} is not UTF-8 text ({error}); save it as UTF-8 CSV."
        ) from error
    except csv.Error as error:
        raise InputError(
            f"Annotation file {path} is not valid CSV: {error}."
        ) from error


def _read_json_rows(path: str) -> tuple[list[_Row], str | None]:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(
            f"Annotation file {path} is not valid JSON: {error}. Fix it, or fill the "
            "manifest.csv written next to it instead."
        ) from error
    if not isinstance(content, dict) or not isinstance(content.get("regions"), list):
        raise InputError(
            f'Annotation file {path} has no list of rows under "regions"; pass the '
            "manifest.json that `python -m experiments.annotate export` wrote."
        )
    rows = []
    for index, entry in enumerate(content["regions"]):
        where = f"regions[{index}]"
        if not isinstance(entry, dict):
            raise InputError(
                f"{path}, {where}: the row is a {type(entry).__name__}, not an object "
                "with the manifest's columns."
            )
        _check_columns(path, where, list(entry))
        rows.append(_Row(where, index, dict(entry)))
    run_id = content.get("run_id")
    return rows, None if run_id is None else _cell(run_id)


def _check_columns(path: str, where: str, names: list[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise InputError(
            f"{path}, {where}: the columns {', '.join(missing)} are missing (found "
            f"{', '.join(names) or 'none'}). An annotation file needs "
            f"{', '.join(REQUIRED_COLUMNS)}; export it again with `python -m "
            "experiments.annotate export`."
        )


def _read_rows(path: str) -> tuple[list[_Row], str | None]:
    if not path:
        raise InputError(
            "The annotation file path is empty; pass --config.annotate.file=PATH, the "
            "manifest "
            "written by `python -m experiments.annotate export` and filled in."
        )
    if not os.path.isfile(path):
        raise InputError(
            f"Annotation file {path} not found; write it with `python -m "
            "experiments.annotate export --workdir=WORKDIR` and fill in its label and "
            "decision columns."
        )
    if path.lower().endswith(".json"):
        return _read_json_rows(path)
    return _read_csv_rows(path), None


def _parse_label(
    path: str, where: str, value: Any, class_names: tuple[str, ...]
) -> int:
    """Return the class index that a label cell names, or -1 when it is empty.

    A class name wins over an index: with names ("1", "0"), the label "1" is class 0.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(class_names):
            return value
        text = str(value)
    else:
        text = _cell(value)
        if not text:
            return -1
        if text in class_names:
            return class_names.index(text)
        folded = [name.casefold() for name in class_names]
        if folded.count(text.casefold()) == 1:
            return folded.index(text.casefold())
        if re.fullmatch(r"\d+", text) and int(text) < len(class_names):
            return int(text)
    raise InputError(
        f"{path}, {where}: label {text!r} is not a class of this dataset; use a class "
        f"name ({', '.join(class_names)}) or an index from 0 to {len(class_names) - 1}."
    )


def _parse_entry(path: str, row: _Row, class_names: tuple[str, ...]) -> FileEntry:
    region_text = _cell(row.values["region"])
    if not re.fullmatch(r"\d+", region_text):
        raise InputError(
            f"{path}, {row.where}: region {region_text!r} is not a region id; use the "
            "integer ids of the exported manifest's region column."
        )
    label = _parse_label(path, row.where, row.values["label"], class_names)
    decision = _normalise_decision(_cell(row.values["decision"]))
    if not decision and label >= 0:
        decision = "fix"  # A label alone means: correct the region to this label.
    if decision and decision not in annotate.FILE_DECISIONS:
        raise InputError(
            f"{path}, {row.where}: decision {_cell(row.values['decision'])!r} is "
            f"invalid; use {', '.join(annotate.FILE_DECISIONS)}, or leave label and "
            "decision empty to skip the region."
        )
    if decision == "fix" and label < 0:
        raise InputError(
            f"{path}, {row.where}: decision 'fix' needs a label; write the class to "
            f"correct region {region_text} to in the label column, or choose "
            "not_a_bug or unsure."
        )
    if decision in ("not_a_bug", "unsure") and label >= 0:
        logging.warning(
            "%s, %s: region %s is %s, so its label %r is recorded but not used for "
            "correction; write decision fix to correct it.",
            path,
            row.where,
            region_text,
            decision,
            _cell(row.values["label"]),
        )
    return FileEntry(
        where=row.where,
        line=row.line,
        run_id=_cell(row.values["run_id"]),
        region=int(region_text),
        label=label,
        decision=decision,
    )


def parse_file(path: str, class_names: tuple[str, ...]) -> ParsedFile:
    """Read an annotation file and check each row on its own.

    Args:
        path: A filled manifest.csv or manifest.json.
        class_names: The dataset's class names, indexed by label.

    Returns:
        The rows, in file order; `match_file` checks them against a run's regions.

    Raises:
        InputError: The file is missing or unreadable, a column is missing, or a row
            has an invalid region id, label or decision, or repeats a region. The
            message names the file and the row.
    """
    rows, run_id = _read_rows(path)
    class_names = tuple(str(name) for name in class_names)
    entries = [_parse_entry(path, row, class_names) for row in rows]
    first_row: dict[int, FileEntry] = {}
    for entry in entries:
        if entry.region in first_row:
            raise InputError(
                f"{path}, {entry.where}: region {entry.region} already has a row at "
                f"{first_row[entry.region].where}; keep one row per region."
            )
        first_row[entry.region] = entry
    return ParsedFile(path=path, entries=entries, run_id=run_id)


def match_file(
    parsed: ParsedFile, run_id: str, region_ids: np.ndarray, *, workdir: str = ""
) -> annotate.FileDecisions:
    """Match an annotation file's rows to a run's regions.

    Args:
        parsed: The file, from `parse_file`.
        run_id: The id of the run's regions (report.json "run_id").
        region_ids: [R] the regions' ids, in row order.
        workdir: The run's folder, named in the message on a run id mismatch.

    Returns:
        One decision per region. Regions without a row, or whose row has neither label
        nor decision, are "unannotated".

    Raises:
        InputError: A row has another run id or an unknown region id; the message
            names the file and the row.
    """
    path = parsed.path
    workdir = workdir or "WORKDIR"
    # A new folder, so the export keeps the filled file that the labels come from.
    export = (
        f"python -m experiments.annotate export --workdir={workdir} "
        f"--out={os.path.join(workdir, 'annotation_' + run_id)}"
    )
    stale = (
        "so it was exported from another run, or before this run's regions changed. "
        "Rerun this workdir with --config.annotate.annotator=majority_source so that "
        f"its report shows the current regions, export them with `{export}`, copy "
        "your labels over, and run again with the new file."
    )
    if parsed.run_id is not None and parsed.run_id != run_id:
        raise InputError(
            f"{path}: run_id {parsed.run_id!r} differs from this run's {run_id!r}, "
            + stale
        )
    row_of_id = {int(region): row for row, region in enumerate(region_ids.tolist())}
    size = len(row_of_id)
    label = np.full(size, annotate.REJECTED, np.int32)
    written_label = np.full(size, -1, np.int32)
    decision = ["unannotated"] * size
    line = np.full(size, -1, np.int32)
    skipped = []
    for entry in parsed.entries:
        if entry.run_id != run_id:
            raise InputError(
                f"{path}, {entry.where}: run_id {entry.run_id!r} differs from this "
                f"run's {run_id!r}, " + stale
            )
        if entry.region not in row_of_id:
            raise InputError(
                f"{path}, {entry.where}: region {entry.region} is not a region of this "
                f"run; its regions are {sorted(row_of_id)}. Remove the row or fix "
                "the id."
            )
        row = row_of_id[entry.region]
        line[row] = entry.line
        written_label[row] = entry.label
        if not entry.decision:
            skipped.append(entry.where)
            continue
        decision[row] = entry.decision
        if entry.decision == "fix":
            label[row] = entry.label
    missing = [region for region, row in row_of_id.items() if line[row] < 0]
    details = {
        "file": os.path.abspath(path),
        "rows_read": len(parsed.entries),
        "rows_skipped": len(skipped),
        "skipped_rows": skipped,
        "regions_without_row": sorted(missing),
        "unannotated": decision.count("unannotated"),
    }
    return annotate.FileDecisions(
        label=label,
        decision=np.asarray(decision, dtype=str),
        line=line,
        written_label=written_label,
        details=details,
    )


def read_file_decisions(
    path: str,
    class_names: tuple[str, ...],
    run_id: str,
    region_ids: np.ndarray,
    *,
    workdir: str = "",
) -> annotate.FileDecisions:
    """Read a filled annotation file and match it to a run's regions.

    Raises:
        InputError: See `parse_file` and `match_file`.
    """
    return match_file(
        parse_file(path, class_names), run_id, np.asarray(region_ids), workdir=workdir
    )


def filled_rows(path: str) -> list[str]:
    """Return the rows of an existing manifest that have a label or a decision.

    Raises:
        InputError: The manifest cannot be read, so it is unknown whether it is filled.
    """
    rows, _ = _read_rows(path)
    return [
        row.where
        for row in rows
        if _cell(row.values["label"]) or _cell(row.values["decision"])
    ]
