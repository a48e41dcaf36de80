r"""Run Defuse on several datasets and seeds and write one Markdown table.

    python -m experiments.run_table --out=/tmp/defuse_table \
        --datasets=mnist5k,fashion_mnist --seeds=0,1,2

Each dataset names a config in experiments/configs (or is a path to a config file);
NAME:VARIANT picks a variant of it, such as mnist5k:test. Each (dataset, seed) pair
runs the whole pipeline in its own workdir, OUT/DATASET/seed_S, with `config.seed` set
to the seed. The train/test split is the one of the config, the same for every seed.
A rerun reuses the finished runs, and a killed one resumes. The table contains the
runs of this command only.

Writes to --out, after every run:
    table.json   per run: the figures of its report.json that the table uses
    table.md     mean and sample standard deviation over seeds, per dataset, then
                 one row per run; the same for the baseline at Defuse's fix (where
                 lambda was chosen on validation); then the checks of the
                 correction claim
    lambda_selection.png   each run's lambda candidates on validation
"""

import os
from typing import Any

from absl import app, flags, logging

from defuse_jax import pipeline
from experiments.cli import (
    check_out_folder,
    exit_on_known_errors,
    parse_seeds,
    start_binary,
)
from experiments.table_lib import (
    load_configs,
    markdown_table,
    row_figures,
    write_table,
)

_OUT = flags.DEFINE_string("out", None, "Output folder for the workdirs and the table.")
_DATASETS = flags.DEFINE_list(
    "datasets",
    ["mnist5k", "fashion_mnist"],
    "Config names in experiments/configs, or paths to config files; NAME:VARIANT "
    "picks a variant, such as mnist5k:test.",
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; one run per seed.")
_VARIANT = flags.DEFINE_string(
    "variant", "", "Config variant passed to get_config, such as 'test'."
)
_SEARCH_AGAIN = flags.DEFINE_bool(
    "search_again",
    False,
    "Also search each corrected classifier again (slower); the table does not use it.",
)
_DRAW_REPORT = flags.DEFINE_bool(
    "draw_report",
    False,
    "Also draw each run's region grids and report.html (slower).",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Reuse workdirs under --out that hold runs of another config, recomputing the "
    "stages that depend on what changed.",
)
flags.mark_flags_as_required(["out"])


def run_all(
    datasets: list[str],
    seeds: list[int],
    out: str,
    *,
    variant: str = "",
    search_again: bool = False,
    draw_report: bool = False,
    allow_config_change: bool = False,
) -> list[dict[str, Any]]:
    """Run every (dataset, seed) pair; write the table after each; return the rows."""
    configs = load_configs(datasets, variant)
    rows: list[dict[str, Any]] = []
    total = len(configs) * len(seeds)
    for name, config in configs.items():
        for seed in seeds:
            logging.info(
                "run_table: %s seed %d (run %d of %d).",
                name,
                seed,
                len(rows) + 1,
                total,
            )
            run_config = config.copy_and_resolve_references()
            with run_config.unlocked():
                run_config.seed = seed
                run_config.search_again.enabled = search_again
            workdir = os.path.join(out, name, f"seed_{seed}")
            outputs = pipeline.run(
                run_config,
                workdir,
                draw_report=draw_report,
                allow_config_change=allow_config_change,
            )
            row = {"dataset": name, "seed": seed, "workdir": os.path.abspath(workdir)}
            row.update(row_figures(outputs))
            rows.append(row)
            write_table(out, rows)
    return rows


def main(argv: list[str]) -> None:
    start_binary(argv)
    with exit_on_known_errors():
        seeds = parse_seeds(_SEEDS.value)
        out = _OUT.value
        check_out_folder(out)
        rows = run_all(
            _DATASETS.value,
            seeds,
            out,
            variant=_VARIANT.value,
            search_again=_SEARCH_AGAIN.value,
            draw_report=_DRAW_REPORT.value,
            allow_config_change=_ALLOW_CONFIG_CHANGE.value,
        )
    logging.info("Wrote %s for %d runs.", os.path.join(out, "table.md"), len(rows))
    print(markdown_table(rows), end="")


if __name__ == "__main__":
    app.run(main)
