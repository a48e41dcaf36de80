"""Plant a known bug in the training labels and check that Defuse finds it.

    python -m experiments.planted_bug --out=/tmp/defuse_planted --seeds=0,1,2

For each seed: load the config's dataset (mnist5k by default), relabel a --fraction of
the light --source_class train images (ink in the lowest --quantile of that class) as
--target_class, run the whole pipeline on the planted data in OUT/seed_S, and score
each region by the precision and recall of the planted sub-style among its member
flips (a flip belongs to the sub-style when its source image does). The bug is
found when some region with at least --min_members flips has precision at least
--min_precision. --fraction=0 plants nothing: a control run for the same sub-style.

It also measures the classifier on the real held-out images of the sub-style (test
split, true labels, the train split's ink threshold), before and after the Defuse
correction. Writes OUT/planted_bug.json and OUT/planted_bug.md after every seed.
"""

import os

from absl import app, flags

from defuse_jax import report
from defuse_jax.configuration import InputError
from experiments.cli import (
    check_out_folder,
    config_path,
    exit_on_known_errors,
    load_config,
    parse_seeds,
    split_variant,
    start_binary,
)
from experiments.planted_lib import evaluate_seed, markdown

_OUT = flags.DEFINE_string("out", None, "Output folder for the workdirs and results.")
_CONFIG = flags.DEFINE_string(
    "config",
    "mnist5k",
    "Config name in experiments/configs, or a config file path; NAME:VARIANT picks a "
    "variant, such as mnist5k:test.",
)
_VARIANT = flags.DEFINE_string("variant", "", "Config variant, such as 'test'.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; one run per seed.")
_SOURCE = flags.DEFINE_integer(
    "source_class", 7, "Class whose light images are planted."
)
_TARGET = flags.DEFINE_integer("target_class", 1, "Label the planted images get.")
_QUANTILE = flags.DEFINE_float(
    "quantile", 0.4, "The sub-style: ink at most this quantile of the source class."
)
_FRACTION = flags.DEFINE_float(
    "fraction", 0.5, "Fraction of the sub-style relabelled (0: a control run)."
)
_MIN_PRECISION = flags.DEFINE_float(
    "min_precision", 0.5, "A region finds the bug with at least this precision."
)
_MIN_MEMBERS = flags.DEFINE_integer(
    "min_members", 20, "Regions with fewer member flips never count as finding it."
)
_DRAW_REPORT = flags.DEFINE_bool(
    "draw_report", True, "Draw each run's region grids and report.html."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Reuse workdirs under --out that hold runs of other settings, recomputing the "
    "stages that depend on what changed.",
)
flags.mark_flags_as_required(["out"])


def main(argv: list[str]) -> None:
    start_binary(argv)
    out = _OUT.value
    settings = {
        "config": _CONFIG.value,
        "source_class": _SOURCE.value,
        "target_class": _TARGET.value,
        "quantile": _QUANTILE.value,
        "fraction": _FRACTION.value,
        "min_precision": _MIN_PRECISION.value,
        "min_members": _MIN_MEMBERS.value,
    }
    with exit_on_known_errors():
        seeds = parse_seeds(_SEEDS.value)
        # Checked before the dataset loads, with the flag names.
        if not 0.0 <= _FRACTION.value <= 1.0:
            raise InputError(
                f"--fraction={_FRACTION.value} is outside [0, 1]; pass the share of the "
                "sub-style to relabel, such as --fraction=0.5 (0 for a control run)."
            )
        if not 0.0 < _QUANTILE.value < 1.0:
            raise InputError(
                f"--quantile={_QUANTILE.value} is outside (0, 1); pass the ink quantile "
                "that bounds the sub-style, such as --quantile=0.4."
            )
        name, variant = split_variant(_CONFIG.value, _VARIANT.value)
        config = load_config(config_path(name), variant)
        check_out_folder(out)
        results = []
        for seed in seeds:
            results.append(
                evaluate_seed(
                    config,
                    seed,
                    out,
                    quantile=_QUANTILE.value,
                    fraction=_FRACTION.value,
                    source_class=_SOURCE.value,
                    target_class=_TARGET.value,
                    min_precision=_MIN_PRECISION.value,
                    min_members=_MIN_MEMBERS.value,
                    draw_report=_DRAW_REPORT.value,
                    allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                )
            )
            # Written after every seed, so a kill keeps the seeds already done.
            report.write_json(
                os.path.join(out, "planted_bug.json"),
                {"settings": settings, "seeds": results},
            )
            text = markdown(results, settings)
            with open(
                os.path.join(out, "planted_bug.md"), "w", encoding="utf-8"
            ) as file:
                file.write(text)
    print(text, end="")


if __name__ == "__main__":
    app.run(main)
