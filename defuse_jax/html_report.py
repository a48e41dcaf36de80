"""report.html: a static page of one run's report, for reading and sharing.

The page is rendered from the report dict as report.json stores it. It has no script and
loads nothing from the network: its style is inline and its images are the workdir's PNG
files, referenced by relative paths, so the workdir can be zipped and opened anywhere.
An image whose file is missing is replaced by a note instead of a broken link.
"""

from __future__ import annotations

import html
import json
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  margin: 0; background: #f5f6f8; color: #1d2230; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin: 1.8em 0 0.6em; border-bottom: 2px solid #d8dce4;
  padding-bottom: 0.2em; }
h3 { font-size: 1.1em; margin: 0 0 0.5em; }
.subtitle { color: #5b6376; margin: 0 0 1em; }
.panel, .card { background: #fff; border: 1px solid #d8dce4; border-radius: 8px;
  padding: 14px 18px; margin: 12px 0; }
.card img, .panel img { max-width: 100%; height: auto; display: block;
  margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.95em; }
th, td { text-align: left; padding: 4px 12px 4px 0; vertical-align: top; }
table.data th, table.data td { border-bottom: 1px solid #e6e9ef; padding: 5px 14px 5px 0; }
table.data th { color: #5b6376; font-weight: 600; }
td.number { font-variant-numeric: tabular-nums; }
.facts th { color: #5b6376; font-weight: 500; white-space: nowrap; }
.facts { margin-top: 4px; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 0.8em;
  font-weight: 600; margin-left: 6px; vertical-align: middle; }
.good { background: #dff3e4; color: #17602d; }
.bad { background: #fbe1e1; color: #8c1d1d; }
.neutral { background: #e8eaf0; color: #3c4356; }
.warn { background: #fff1d6; color: #7a4b00; }
.note { color: #5b6376; font-size: 0.92em; }
.missing { color: #8c1d1d; background: #fbe1e1; padding: 6px 10px; border-radius: 6px; }
ul.notes li { margin: 0.2em 0; }
footer { color: #5b6376; font-size: 0.85em; margin-top: 3em; }
"""

_DECISION_CLASSES = {
    "fix": "good",
    "not_a_bug": "neutral",
    "unsure": "warn",
    "unannotated": "neutral",
}
_STATUS_CLASSES = {"closed": "good", "persisting": "bad", "not_corrected": "neutral"}


def render_report(report: Mapping[str, Any], workdir: str) -> str:
    """Render the report as one static HTML page.

    Args:
        report: The report as report.json stores it (JSON types only).
        workdir: The run's folder. Image paths in the page are relative to it, and an
            image whose file is missing there is left out with a note.

    Returns:
        The page, a complete HTML document.
    """
    page = _Page(report, workdir)
    sections = [
        page.summary(),
        page.correction(),
        page.annotation(),
        page.figures(),
        page.regions(),
        page.search_again(),
        page.footer(),
    ]
    dataset = report.get("dataset", {}).get("name", "unknown dataset")
    title = f"Defuse report: {dataset}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            # An empty icon, so a browser does not request favicon.ico.
            '<link rel="icon" href="data:,">',
            f"<title>{_escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            "<main>",
            f"<h1>{_escape(title)}</h1>",
            (
                f'<p class="subtitle">Run {_escape(report.get("run_id", "without regions"))}'
                f", seed {_escape(report.get('seed', '?'))}</p>"
            ),
            *[section for section in sections if section],
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


class _Page:
    """The sections of one report page. Each method returns HTML, or "" for no section."""

    def __init__(self, report: Mapping[str, Any], workdir: str):
        self.report = report
        self.workdir = workdir
        self.class_names = list(report.get("dataset", {}).get("class_names", []))
        self.correction_data = report.get("correction")
        search_again = report.get("search_again") or {}
        self.again_by_region = {
            str(entry.get("region")): entry for entry in search_again.get("regions", [])
        }

    def name(self, label: Any) -> str:
        """Return the class name of `label`, or the label itself when it has none."""
        if isinstance(label, int) and 0 <= label < len(self.class_names):
            return str(self.class_names[label])
        return "none" if label is None else str(label)

    def image(self, path: Any, alt: str) -> str:
        """Return an <img> of the workdir PNG `path`, or a note when it is missing."""
        if not isinstance(path, str) or not path:
            return f'<p class="missing">No image was recorded for {_escape(alt)}.</p>'
        relative = os.path.normpath(path)
        inside = not os.path.isabs(relative) and relative.split(os.sep)[0] != os.pardir
        if not inside or not relative.lower().endswith(".png"):
            return (
                f'<p class="missing">Image {_escape(path)} is not a PNG file inside '
                "the workdir, so it is not shown.</p>"
            )
        if not os.path.isfile(os.path.join(self.workdir, relative)):
            return (
                f'<p class="missing">Image {_escape(path)} is missing from the '
                "workdir, so it is not shown.</p>"
            )
        source = urllib.parse.quote(relative.replace(os.sep, "/"))
        return f'<img src="{_escape(source)}" alt="{_escape(alt)}">'

    def summary(self) -> str:
        search = self.report.get("search", {})
        quality = self.report.get("quality") or {}
        parts = [
            '<h2 id="summary">Run summary</h2>',
            '<div class="panel">',
            _facts(self.summary_rows()),
        ]
        if search.get("note"):
            parts.append(f'<p class="note">{_escape(search["note"])}</p>')

        if quality:
            parts.append(
                f'<p class="note"><b>Novelty:</b> {_escape(quality.get("novelty", ""))}'
                " A ratio near 0 means the region repeats errors already in the "
                "training set. A ratio above 1 means it lies farther from them than "
                "training codes usually lie from each other.</p>"
            )
            parts.append(
                f'<p class="note"><b>Realism:</b> {_escape(quality.get("realism", ""))}'
                " A ratio well above 1 marks samples unlike the images the VAE "
                "learned.</p>"
            )

        notes = [*self.report.get("notes", []), *quality.get("notes", [])]
        if notes:
            items = "".join(f"<li>{_escape(note)}</li>" for note in notes)
            parts.append(f'<p><b>Notes</b></p><ul class="notes">{items}</ul>')
        parts.append("</div>")
        return "\n".join(parts)

    def summary_rows(self) -> list[tuple[str, str]]:
        """Return the run summary's rows: dataset, search, regions and quality units."""
        report = self.report
        dataset = report.get("dataset", {})
        shape = " x ".join(str(size) for size in dataset.get("image_shape", []))
        sizes = (
            f"{dataset.get('name', '?')}: {dataset.get('num_train', '?')} train and "
            f"{dataset.get('num_test', '?')} test images of shape {shape}, "
            f"{dataset.get('num_classes', '?')} classes"
        )
        rows = [
            ("Dataset", sizes),
            (
                "Classifier test accuracy",
                _percent(report.get("classifier_test_accuracy")),
            ),
        ]

        search = report.get("search")
        if search:
            searched = (
                f"{search.get('searched_images', '?')} of "
                f"{search.get('split_size', '?')} {search.get('split', '')} images"
            )
            flips = (
                f"{search.get('num_flips', '?')} flips from "
                f"{search.get('images_with_flips', '?')} images "
                f"({_percent(search.get('fraction_images_with_flips'))} of those "
                "searched)"
            )
            skipped = (
                f"{search.get('misclassified_skipped', '?')} misclassified, "
                f"{search.get('bad_reconstruction_skipped', '?')} with a "
                "misclassified VAE reconstruction"
            )
            rows += [
                ("Images searched", searched),
                ("Flips found", flips),
                ("Skipped source images", skipped),
            ]

        distill = report.get("distill")
        if distill:
            kept_regions = (
                f"{distill.get('num_regions', '?')} kept of "
                f"{distill.get('truncation', '?')} mixture components"
            )
            rows.append(("Regions", kept_regions))

        quality = report.get("quality")
        if quality:
            misclassified = (
                f"{quality.get('misclassified_train_images')} of "
                f"{quality.get('train_images')}"
            )
            rows += [
                ("Misclassified training images", misclassified),
                (
                    "Training nearest-neighbour distance (median)",
                    _number(quality.get("typical_nearest_distance")),
                ),
                (
                    "Test reconstruction error (median)",
                    _number(quality.get("test_reconstruction_error_median"), 5),
                ),
            ]
        return rows

    def correction(self) -> str:
        correction = self.correction_data
        parts = ['<h2 id="correction">Accuracy before and after correction</h2>']
        if not correction:
            parts.append(
                '<div class="panel"><p class="note">No correction ran in this run. '
                "The notes in the run summary give the reason.</p></div>"
            )
            return "\n".join(parts)
        models = (
            ("Before correction", "before"),
            (f"Defuse (lambda = {correction.get('lam')})", "defuse"),
            (
                "Fine-tuned on flips (baseline, lambda = "
                f"{correction.get('baseline_lam', correction.get('lam'))})",
                "finetune_on_flips_baseline",
            ),
            (
                "Fine-tuned on flips at Defuse's fix (baseline, lambda = "
                f"{correction.get('baseline_matched_lam')})",
                "finetune_on_flips_matched",
            ),
        )
        rows = []
        for title, key in models:
            result = correction.get(key)
            if not result:
                continue
            rows.append(
                "<tr>"
                f"<td>{_escape(title)}</td>"
                f'<td class="number">{_escape(_percent(result.get("test_accuracy")))}</td>'
                '<td class="number">'
                f"{_escape(_percent(result.get('region_test_accuracy')))}</td>"
                "</tr>"
            )
        parts += [
            '<div class="panel">',
            (
                '<table class="data"><thead><tr><th>Classifier</th><th>Test accuracy</th>'
                "<th>Region test accuracy</th></tr></thead><tbody>"
            ),
            *rows,
            "</tbody></table>",
            (
                f'<p class="note">Fine-tuning ran {_escape(correction.get("num_steps"))} '
                "steps. Region test accuracy is measured on "
                f"{_escape(correction.get('region_test_size'))} held-out samples of the "
                "corrected regions, labelled with their annotation.</p>"
            ),
            (
                f'<p class="note">{_escape(correction["baseline_note"])}</p>'
                if correction.get("baseline_note")
                else ""
            ),
            _lambda_selection_note(correction.get("lambda_selection")),
            "</div>",
        ]
        return "\n".join(parts)

    def annotation(self) -> str:
        summary = self.report.get("annotation")
        if not summary:
            return ""
        rows = []
        for key, value in summary.items():
            title = key.replace("_", " ").capitalize()
            if _is_scalar(value):
                rows.append((title, _value(value)))
            elif isinstance(value, Mapping) and value:
                # Counts such as {"fix": 3, "unsure": 1}, or the annotator's details.
                rows.append((title, _compact(value)))
            # Lists (labels, per-region records) are shown in the region cards.
        return "\n".join(
            [
                '<h2 id="annotation">Annotation</h2>',
                '<div class="panel">',
                _facts(rows),
                "</div>",
            ]
        )

    def figures(self) -> str:
        parts = ['<h2 id="figures">Latent space and flips</h2>']
        latent_map = self.report.get("latent_map")
        if latent_map:
            parts += [
                '<div class="panel"><h3>Latent map</h3>',
                self.image(latent_map.get("path"), "2-D PCA map of the latent space"),
                (
                    f'<p class="note">{_escape(latent_map.get("train_points"))} training '
                    f"codes coloured by class, {_escape(latent_map.get('flip_points'))} "
                    "flips (crosses) and the region centres, labelled with their ids; "
                    f"{_escape(latent_map.get('method', 'PCA'))}.</p>"
                ),
                "</div>",
            ]
        if "flip_radius" in self.report:
            parts += [
                '<div class="panel"><h3>Minimal flip radius</h3>',
                self.image("flip_radius.png", "minimal flip radius per class"),
                "</div>",
            ]
        if self.report.get("search", {}).get("num_flips"):
            parts += [
                '<div class="panel"><h3>Random flips</h3>',
                self.image("flips.png", "random flips"),
                (
                    '<p class="note">Each tile is a decoded flip, captioned with its source '
                    "label and the classifier's prediction.</p>"
                ),
                "</div>",
            ]
        return "\n".join(parts) if len(parts) > 1 else ""

    def regions(self) -> str:
        records = self.report.get("regions", [])
        parts = ['<h2 id="regions">Misclassification regions</h2>']
        if not records:
            parts.append('<div class="panel"><p class="note">No regions.</p></div>')
            return "\n".join(parts)
        parts.append(
            '<p class="note">Tiles are fresh decoded samples of each region, captioned '
            "with the classifier's label; red captions differ from the region's "
            "source label.</p>"
        )
        parts += [self.region_card(record) for record in records]
        return "\n".join(parts)

    def region_card(self, record: Mapping[str, Any]) -> str:
        region = record.get("region")
        corrected = bool(record.get("corrected"))
        badges = [
            _badge("corrected", "good") if corrected else _badge("not corrected", "bad")
        ]
        again = self.again_by_region.get(str(region))
        if again:
            status = str(again.get("status"))
            badges.append(
                _badge(
                    f"after search again: {status}",
                    _STATUS_CLASSES.get(status, "neutral"),
                )
            )
        rows = [
            (
                "Confusion",
                (
                    f"{self.name(record.get('source_label'))} → "
                    f"{self.name(record.get('predicted_label'))} (source purity "
                    f"{_percent(record.get('source_purity'))}, predicted purity "
                    f"{_percent(record.get('predicted_purity'))})"
                ),
            ),
            ("Weight", _number(record.get("weight"))),
            ("Member flips", _value(record.get("member_count"))),
            (
                "Error rate of fresh samples (against the source label)",
                _percent(record.get("sample_error_rate")),
            ),
            ("Novelty", _ratio_text(record.get("novelty"), "median_distance", 3)),
            ("Realism", _ratio_text(record.get("realism"), "median_error", 5)),
            ("Annotation", self.annotation_text(record)),
        ]
        accuracy = self.region_accuracy(region)
        if accuracy:
            rows.append(("Region test accuracy", accuracy))
        if again:
            rows.append(("Search again", _search_again_text(again)))
        title = f"Region {region}"
        return "\n".join(
            [
                f'<section class="card" id="region-{_escape(region)}">',
                f"<h3>{_escape(title)}{''.join(badges)}</h3>",
                self.image(record.get("grid"), f"samples of region {region}"),
                _facts(rows),
                "</section>",
            ]
        )

    def annotation_text(self, record: Mapping[str, Any]) -> _Markup:
        label = record.get("annotated_label")
        decision = record.get("decision")
        if decision is None:
            decision = "fix" if record.get("corrected") else "rejected"
        label_text = "no label" if label in (None, -1) else f"label {self.name(label)}"
        badge = _badge(str(decision), _DECISION_CLASSES.get(str(decision), "neutral"))
        source = record.get("label_source")
        source_text = f" from {_escape(source)}" if source else ""
        return _Markup(f"{_escape(label_text)}{source_text}{badge}")

    def region_accuracy(self, region: Any) -> str:
        """Return the region's test accuracy per classifier, or "" when unmeasured."""
        if not self.correction_data:
            return ""
        values = []
        for title, key in (
            ("before", "before"),
            ("Defuse", "defuse"),
            ("baseline", "finetune_on_flips_baseline"),
            ("baseline at Defuse's fix", "finetune_on_flips_matched"),
        ):
            per_region = (self.correction_data.get(key) or {}).get(
                "region_test_accuracy_per_region", {}
            )
            value = per_region.get(str(region), per_region.get(region))
            if value is not None:
                values.append(f"{title} {_percent(value)}")
        return ", ".join(values)

    def search_again(self) -> str:
        search_again = self.report.get("search_again")
        if not search_again:
            return ""
        parts = [
            '<h2 id="search-again">Search again after correction</h2>',
            '<div class="panel">',
            _facts(
                [
                    (
                        "Search",
                        (
                            f"{_value(search_again.get('num_flips'))} flips from "
                            f"{_value(search_again.get('searched_images'))} searched "
                            "images"
                        ),
                    ),
                    ("Closed regions", _value(search_again.get("closed"))),
                    ("Persisting regions", _value(search_again.get("persisting"))),
                ]
            ),
            "</div>",
        ]
        new_regions = search_again.get("new_regions", [])
        parts.append(f"<h3>New regions after correction ({len(new_regions)})</h3>")
        if not new_regions:
            parts.append(
                '<p class="note">The search of the corrected classifier found no '
                "region that matches none of the old ones.</p>"
            )
        for record in new_regions:
            region = record.get("region")
            rows = [
                (
                    "Confusion",
                    (
                        f"{self.name(record.get('source_label'))} → "
                        f"{self.name(record.get('predicted_label'))}"
                    ),
                ),
                ("Weight", _number(record.get("weight"))),
                ("Member flips", _value(record.get("member_count"))),
                (
                    "Error rate of fresh samples",
                    _percent(record.get("sample_error_rate")),
                ),
            ]
            image = (
                self.image(record["grid"], f"samples of new region {region}")
                if record.get("grid")
                else '<p class="note">No sample grid was drawn for this region.</p>'
            )
            parts += [
                f'<section class="card" id="new-region-{_escape(region)}">',
                f"<h3>New region {_escape(region)}</h3>",
                image,
                _facts(rows),
                "</section>",
            ]
        return "\n".join(parts)

    def footer(self) -> str:
        versions = self.report.get("package_versions", {})
        seconds = self.report.get("stage_seconds", {})
        lines = []
        if versions:
            lines.append(
                "Package versions: "
                + ", ".join(f"{name} {version}" for name, version in versions.items())
            )
        if seconds:
            lines.append(
                "Stage seconds: "
                + ", ".join(f"{name} {value}" for name, value in seconds.items())
            )
        body = "".join(f"<p>{_escape(line)}</p>" for line in lines)
        return f"<footer>{body}<p>Written by defuse_jax.</p></footer>"


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {kind}">{_escape(text)}</span>'


class _Markup(str):
    """Text that is already HTML, which `_facts` inserts unescaped."""


def _facts(rows: Sequence[tuple[str, str]]) -> str:
    """Return a two-column table of text rows; values that are `_Markup` stay HTML."""
    body = "".join(
        f"<tr><th>{_escape(title)}</th>"
        f"<td>{value if isinstance(value, _Markup) else _escape(value)}</td></tr>"
        for title, value in rows
    )
    return f'<table class="facts"><tbody>{body}</tbody></table>'


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _compact(value: Mapping[str, Any], limit: int = 400) -> str:
    """Return "key value, key value" for a dict, with nested values written as JSON."""
    text = ", ".join(
        f"{key} {item}" if _is_scalar(item) else f"{key} {json.dumps(item)}"
        for key, item in value.items()
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(value: Any) -> str:
    """Return `value` as text: "n/a" for None, floats rounded."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(value: Any, digits: int = 3) -> str:
    if not _is_number(value) or not math.isfinite(value):
        return "n/a" if value is None else str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e-3 else f"{value:.{digits}f}"


def _percent(value: Any) -> str:
    if not _is_number(value) or not math.isfinite(value):
        return "n/a"
    return f"{value:.1%}"


def _ratio_text(measure: Any, raw_key: str, digits: int) -> _Markup:
    """Return "ratio R (raw V)" for a novelty or realism record, with its note."""
    if not isinstance(measure, Mapping):
        return _Markup("n/a")
    text = _escape(
        f"ratio {_number(measure.get('ratio'), 2)} "
        f"(median {_number(measure.get(raw_key), digits)})"
    )
    if measure.get("note"):
        text += f' <span class="note">{_escape(measure["note"])}</span>'
    return _Markup(text)


def _search_again_text(entry: Mapping[str, Any]) -> str:
    text = (
        f"{entry.get('status')}: error rate on the held-out samples (against the "
        f"annotated label) {_percent(entry.get('error_rate_before'))} before, "
        f"{_percent(entry.get('error_rate_after'))} after correction"
    )
    if entry.get("matched_region") is not None:
        text += (
            f"; matches region {entry['matched_region']} of the search after "
            f"correction (Bhattacharyya distance {_number(entry.get('distance'))})"
        )
    return text


def _lambda_selection_note(selection: dict[str, Any] | None) -> str:
    """Say how lambda was chosen, with each candidate's validation figures."""
    if not selection:
        return ""
    lines = []
    for name, title in (("defuse", "Defuse"), ("baseline", "Baseline")):
        record = selection.get(name, {})
        cells = ", ".join(
            f"{row['lam']:g}: {_percent(row['validation_accuracy'])} / "
            f"{_percent(row['validation_region_accuracy'])}"
            for row in record.get("candidates", [])
        )
        lines.append(f"{title} chose {record.get('lam')} ({cells}).")
    matched = selection.get("baseline_matched")
    if matched:
        lines.append(
            f"At Defuse's fix ({_percent(matched.get('target_region_accuracy'))} "
            f"validation region accuracy) the baseline takes {matched.get('lam')}"
            + ("." if matched.get("reaches_target") else ", the closest it gets.")
        )
    before = selection.get("before", {})
    text = (
        f"Lambda was chosen per method from {selection.get('grid')} on "
        f"{selection.get('validation_size')} validation images and "
        f"{selection.get('validation_region_size')} validation samples of the "
        "corrected regions, never on test figures. The audited classifier scores "
        f"{_percent(before.get('validation_accuracy'))} / "
        f"{_percent(before.get('validation_region_accuracy'))} (validation accuracy / "
        f"validation region accuracy). {selection.get('rule', '')} " + " ".join(lines)
    )
    return f'<p class="note">{_escape(text)}</p>'
