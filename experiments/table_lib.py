"""The experiment table of experiments/run_table.py: its figures, Markdown and checks."""

import math
import os
from typing import Any

import numpy as np

from defuse_jax import report
from defuse_jax.configuration import InputError
from experiments.cli import config_path, load_config, split_variant

# Report figures per run, as (key, path in report.json).
_FIGURES = (
    ("classifier_test_accuracy", ("classifier_test_accuracy",)),
    ("num_flips", ("search", "num_flips")),
    ("searched_images", ("search", "searched_images")),
    ("lam", ("correction", "lam")),
    ("baseline_lam", ("correction", "baseline_lam")),
    ("region_before", ("correction", "before", "region_test_accuracy")),
    ("region_defuse", ("correction", "defuse", "region_test_accuracy")),
    (
        "region_baseline",
        ("correction", "finetune_on_flips_baseline", "region_test_accuracy"),
    ),
    ("test_before", ("correction", "before", "test_accuracy")),
    ("test_defuse", ("correction", "defuse", "test_accuracy")),
    ("test_baseline", ("correction", "finetune_on_flips_baseline", "test_accuracy")),
    ("matched_lam", ("correction", "baseline_matched_lam")),
    (
        "region_matched",
        ("correction", "finetune_on_flips_matched", "region_test_accuracy"),
    ),
    ("test_matched", ("correction", "finetune_on_flips_matched", "test_accuracy")),
)

# The claim checked per dataset: Defuse raises region test accuracy by at least this
# many points, moves test accuracy by at most this many, and ends above the baseline
# (at an equal fix where the runs chose lambda on validation).
MIN_REGION_GAIN_POINTS = 30.0
MAX_TEST_CHANGE_POINTS = 1.0


def row_figures(outputs: dict[str, Any]) -> dict[str, Any]:
    """Return the table's figures of one run's report, NaN where it corrected nothing."""
    row: dict[str, Any] = {}
    for key, path in _FIGURES:
        value: Any = outputs
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        row[key] = float("nan") if value is None else float(value)
    # Reports written before lambda selection used one lambda for both methods.
    if math.isnan(row["baseline_lam"]):
        row["baseline_lam"] = row["lam"]
    selection = outputs.get("correction", {}).get("lambda_selection")
    row["lam_chosen_on"] = "validation" if selection else "config"
    if selection:
        row["lambda_selection"] = selection
        matched = selection.get("baseline_matched")
        if matched:
            row["matched_reaches_target"] = bool(matched["reaches_target"])
    row["flips_per_image"] = row["num_flips"] / max(row["searched_images"], 1.0)
    row["regions"] = float(outputs.get("distill", {}).get("num_regions", 0))
    row["regions_corrected"] = float(outputs.get("annotation", {}).get("accepted", 0))
    return row


def load_configs(datasets: list[str], variant: str) -> dict[str, Any]:
    """Load each --datasets entry's config, keyed by the name of its workdir folder."""
    if not datasets:
        raise InputError(
            "--datasets is empty; pass one or more config names, such as "
            "--datasets=mnist5k,fashion_mnist."
        )
    configs: dict[str, Any] = {}
    entries: dict[str, str] = {}
    for entry in datasets:
        name, entry_variant = split_variant(entry, variant)
        folder = os.path.basename(name).removesuffix(".py")
        if folder in entries:
            raise InputError(
                f"--datasets entries {entries[folder]!r} and {entry!r} would share the "
                f"workdirs OUT/{folder}/seed_S; pass each config once, and give config "
                "files distinct names."
            )
        entries[folder] = entry
        configs[folder] = load_config(config_path(name), entry_variant)
    return configs


def write_table(out: str, rows: list[dict[str, Any]]) -> None:
    """Write table.json, table.md and lambda_selection.png for the runs so far."""
    os.makedirs(out, exist_ok=True)
    report.write_json(os.path.join(out, "table.json"), {"runs": rows})
    save_selection_plot(os.path.join(out, "lambda_selection.png"), rows)
    text = markdown_table(rows)
    temporary = os.path.join(out, "table.md.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, os.path.join(out, "table.md"))


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _change(rows: list[dict[str, Any]], before: str, after: str) -> str:
    return (
        f"{_mean_std([r[before] for r in rows], 100)} → "
        f"{_mean_std([r[after] for r in rows], 100)}"
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Format the summary table, the per-run table and the claim checks as Markdown."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    header = (
        "| dataset | {seeds} | classifier test acc. (%) | flips | flips per searched "
        "image | regions (corrected) | region test acc., Defuse (%) | region test acc., "
        "finetune on flips (%) | test acc., Defuse (%) | test acc., finetune on flips "
        "(%) | lambda, Defuse / baseline |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        (
            "Mean ± sample standard deviation over seeds. Accuracies are percentages; "
            "a → b is before → after correction."
        ),
        "",
        header.format(seeds="seeds").rstrip("\n"),
    ]
    chosen = sum(row.get("lam_chosen_on") == "validation" for row in rows)
    if chosen:
        others = (
            "" if chosen == len(rows) else " The other runs used config.correct.lam."
        )
        lines[1:1] = [
            "",
            f"In {chosen} of {len(rows)} runs each method chose its lambda on the "
            f"validation split (lambda_selection.png shows the candidates).{others}",
        ]
    for name in datasets:
        group = [row for row in rows if row["dataset"] == name]
        lines.append(_table_line(name, group, str(len(group))))
    lines += ["", "Per run:", "", header.format(seeds="seed").rstrip("\n")]
    for row in rows:
        lines.append(_table_line(row["dataset"], [row], str(row["seed"])))
    lines += _matched_tables(rows, datasets)
    lines += ["", "Checks of the correction claim (points are percentage points):", ""]
    for name in datasets:
        lines.append(
            f"- {name}: " + check_claim([r for r in rows if r["dataset"] == name])
        )
    return "\n".join(lines) + "\n"


def _lam_list(group: list[dict[str, Any]], key: str) -> str:
    lams = sorted({r[key] for r in group if not math.isnan(r.get(key, math.nan))})
    return ", ".join(f"{lam:g}" for lam in lams) or "n/a"


def _has_matched(row: dict[str, Any]) -> bool:
    return not math.isnan(row.get("test_matched", math.nan))


def _matched_tables(rows: list[dict[str, Any]], datasets: list[str]) -> list[str]:
    """Return the table of the baseline at Defuse's fix; empty when no run has it."""
    matched_rows = [row for row in rows if _has_matched(row)]
    if not matched_rows:
        return []
    header = (
        "| dataset | {seeds} | region test acc., Defuse (%) | region test acc., "
        "finetune on flips at Defuse's fix (%) | test acc., Defuse (%) | test acc., "
        "finetune on flips at Defuse's fix (%) | lambda, Defuse / baseline | baseline "
        "reaches Defuse's fix on validation |\n"
        "|---|---|---|---|---|---|---|---|"
    )

    def line(name: str, group: list[dict[str, Any]], seeds: str) -> str:
        reached = sum(bool(r.get("matched_reaches_target")) for r in group)
        cells = [
            name,
            seeds,
            _change(group, "region_before", "region_defuse"),
            _change(group, "region_before", "region_matched"),
            _change(group, "test_before", "test_defuse"),
            _change(group, "test_before", "test_matched"),
            f"{_lam_list(group, 'lam')} / {_lam_list(group, 'matched_lam')}",
            f"{reached} of {len(group)}",
        ]
        return "| " + " | ".join(cells) + " |"

    lines = [
        "",
        "The same comparison at an equal fix. Here the baseline takes the lambda of "
        "the grid at which its validation region accuracy reaches Defuse's at "
        "Defuse's chosen lambda, or, where none does, the lambda that comes closest. "
        "Test accuracy then compares what an equal fix costs. Both lambdas are chosen "
        "on the validation split.",
        "",
        header.format(seeds="seeds"),
    ]
    for name in datasets:
        group = [row for row in matched_rows if row["dataset"] == name]
        if group:
            lines.append(line(name, group, str(len(group))))
    lines += ["", "Per run:", "", header.format(seeds="seed")]
    for row in matched_rows:
        lines.append(line(row["dataset"], [row], str(row["seed"])))
    return lines


def _table_line(name: str, group: list[dict[str, Any]], seeds: str) -> str:
    def lam_list(key: str) -> str:
        return _lam_list(group, key)

    # A single run has whole region counts; a mean over seeds keeps one decimal.
    count_digits = 0 if len(group) == 1 else 1
    regions = _mean_std([r["regions"] for r in group], digits=count_digits)
    corrected = _mean_std([r["regions_corrected"] for r in group], digits=count_digits)
    cells = [
        name,
        seeds,
        _mean_std([r["classifier_test_accuracy"] for r in group], 100),
        _mean_std([r["num_flips"] for r in group], digits=0),
        _mean_std([r["flips_per_image"] for r in group], digits=3),
        f"{regions} ({corrected})",
        _change(group, "region_before", "region_defuse"),
        _change(group, "region_before", "region_baseline"),
        _change(group, "test_before", "test_defuse"),
        _change(group, "test_before", "test_baseline"),
        f"{lam_list('lam')} / {lam_list('baseline_lam')}",
    ]
    return "| " + " | ".join(cells) + " |"


def check_claim(group: list[dict[str, Any]]) -> str:
    """Say, from the means over seeds, whether each part of the claim holds."""

    corrected = [r for r in group if not math.isnan(r["test_defuse"])]
    if not corrected:
        return "no run corrected a region, so there is nothing to check."
    skipped = len(group) - len(corrected)
    group = corrected

    def mean(key: str) -> float:
        return float(np.nanmean([r[key] for r in group])) * 100

    region_gain = mean("region_defuse") - mean("region_before")
    test_change = mean("test_defuse") - mean("test_before")
    # With lambda selection, the baseline is compared at an equal fix; without it,
    # both methods used the one lambda of the config.
    matched = all(_has_matched(r) for r in group)
    baseline = "test_matched" if matched else "test_baseline"
    over_baseline = mean("test_defuse") - mean(baseline)
    seeds_above = sum(r["test_defuse"] > r[baseline] for r in group)
    compared = "the baseline's at Defuse's fix" if matched else "the baseline's"
    parts = [
        (
            f"region test accuracy {region_gain:+.1f} points "
            f"({'holds' if region_gain >= MIN_REGION_GAIN_POINTS else 'fails'}: "
            f"at least +{MIN_REGION_GAIN_POINTS:g})"
        ),
        (
            f"test accuracy {test_change:+.1f} points "
            f"({'holds' if abs(test_change) <= MAX_TEST_CHANGE_POINTS else 'fails'}: "
            f"within {MAX_TEST_CHANGE_POINTS:g})"
        ),
        (
            f"Defuse test accuracy minus {compared} {over_baseline:+.1f} points "
            f"({'holds' if over_baseline > 0 else 'fails'}: above 0; Defuse is above in "
            f"{seeds_above} of {len(group)} seeds)"
        ),
    ]
    if matched:
        own = mean("test_defuse") - mean("test_baseline")
        region_own = mean("region_defuse") - mean("region_baseline")
        parts.append(
            f"Defuse minus the baseline at its own lambda (the same validation drop "
            f"allowed): test accuracy {own:+.1f} points, region test accuracy "
            f"{region_own:+.1f} points"
        )
    if skipped:
        parts.append(f"{skipped} more runs corrected nothing and are left out")
    return "; ".join(parts) + "."


def save_selection_plot(path: str, rows: list[dict[str, Any]]) -> bool:
    """Plot each run's lambda candidates on validation; return False if none chose one.

    One column per dataset. The top panel gives the change in validation accuracy
    from the audited classifier, the bottom one validation region accuracy, both
    against lambda, for Defuse (solid) and the baseline (dashed), one line per seed.
    A star marks the lambda each method chose, and an open square the baseline's
    lambda at Defuse's fix.
    """
    chosen_rows = [row for row in rows if row.get("lambda_selection")]
    if not chosen_rows:
        return False
    plt = report._pyplot()
    datasets = list(dict.fromkeys(row["dataset"] for row in chosen_rows))
    figure, axes = plt.subplots(
        2,
        len(datasets),
        figsize=(max(6.4, 4.6 * len(datasets)), 6.4),
        squeeze=False,
        sharex=True,
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for column, name in enumerate(datasets):
        group = [row for row in chosen_rows if row["dataset"] == name]
        top, bottom = axes[0][column], axes[1][column]
        for index, row in enumerate(group):
            selection = row["lambda_selection"]
            before = selection["before"]
            color = colors[index % len(colors)]
            for method, line in (("defuse", "-"), ("baseline", "--")):
                candidates = selection[method]["candidates"]
                lams = [candidate["lam"] for candidate in candidates]
                drop = [
                    100
                    * (candidate["validation_accuracy"] - before["validation_accuracy"])
                    for candidate in candidates
                ]
                region = [
                    100 * candidate["validation_region_accuracy"]
                    for candidate in candidates
                ]
                label = f"seed {row['seed']}, {'Defuse' if method == 'defuse' else 'baseline'}"
                top.plot(lams, drop, line, marker="o", color=color, label=label)
                bottom.plot(lams, region, line, marker="o", color=color)
                pick = lams.index(selection[method]["lam"])
                for axis, values in ((top, drop), (bottom, region)):
                    axis.plot(lams[pick], values[pick], "*", color=color, markersize=13)
                matched = selection.get("baseline_matched")
                if method == "baseline" and matched:
                    pick = lams.index(matched["lam"])
                    for axis, values in ((top, drop), (bottom, region)):
                        axis.plot(
                            lams[pick],
                            values[pick],
                            "s",
                            markerfacecolor="none",
                            color=color,
                            markersize=11,
                        )
            bottom.axhline(
                100 * before["validation_region_accuracy"],
                color=color,
                linestyle=":",
                linewidth=1,
            )
        max_drop = 100 * group[0]["lambda_selection"]["max_validation_drop"]
        top.axhline(-max_drop, color="black", linestyle=":", linewidth=1)
        top.set_title(f"{name}: validation accuracy change (points)", fontsize=9)
        bottom.set_title(
            f"{name}: validation region accuracy (%); dotted: before", fontsize=9
        )
        bottom.set_xlabel("lambda (log scale)")
        grid = group[0]["lambda_selection"]["grid"]
        for axis in (top, bottom):
            axis.set_xscale("log")
            axis.minorticks_off()
            axis.grid(alpha=0.3)
        bottom.set_xticks(grid, [f"{lam:g}" for lam in grid])
        top.legend(fontsize=6, handlelength=3)
    figure.suptitle(
        "Lambda candidates on validation; black dotted line: largest drop allowed\n"
        "Star: the lambda each method chose; open square: the baseline at Defuse's fix",
        fontsize=9,
    )
    figure.tight_layout()
    report._save_figure(figure, path)
    return True
