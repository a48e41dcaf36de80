r"""Correct one audited classifier with several lambdas and plot the trade-off.

    python -m experiments.lambda_sweep --workdir=/tmp/defuse_mnist \
        --lams=0,0.05,0.1,0.2,0.4,0.7,1

First runs the pipeline in --workdir (reusing whatever is finished there), so every
lambda starts from the same classifier, VAE, flips, regions and annotation. Each lambda
then gets its own workdir under --out (default WORKDIR/lambda_sweep/lam_L), seeded with
links to the finished stages, where only correction (and, with --search_again, the
second search) runs. Rerunning the command reuses the lambdas already done.

Writes to --out:
    lambda_sweep.json   per lambda: test accuracy and region test accuracy of the
                        Defuse correction and of the finetune-on-flips baseline
    lambda_sweep.png    both accuracies against lambda, for both corrections
"""

import os
import shutil
from typing import Any

from absl import app, flags, logging

from defuse_jax import pipeline, report
from defuse_jax.configuration import InputError
from experiments import run_defuse
from experiments.cli import start_binary

_LAMS = flags.DEFINE_list(
    "lams",
    ["0", "0.05", "0.1", "0.2", "0.4", "0.7", "1"],
    "Comma-separated lambda values in [0, 1]: the weight of the region batch in the "
    "correction loss.",
)
_OUT = flags.DEFINE_string("out", None, "Output folder; default WORKDIR/lambda_sweep.")
_SEARCH_AGAIN = flags.DEFINE_bool(
    "search_again",
    False,
    "Also search each corrected classifier again (slower); the JSON then holds the "
    "fraction of corrected regions closed.",
)

# Workdir entries that hold finished stages before correction. Each lambda's workdir
# starts with links to them, so only correction and later stages run there.
SHARED_OUTPUTS = (
    "config.json",
    "checkpoints/classifier",
    "checkpoints/classifier.json",
    "checkpoints/vae",
    "checkpoints/vae.json",
    "flips.npz",
    "radius.npz",
    "mixture.npz",
    "regions.npz",
    "region_ids.json",
)


def parse_lams(values: list[str]) -> list[float]:
    """Parse and check --lams: at least one value, each a number in [0, 1], no repeats."""
    lams = []
    for text in values:
        try:
            lam = float(text)
        except ValueError:
            raise InputError(
                f"--lams has {text!r}, which is not a number; pass numbers in [0, 1] "
                "such as --lams=0,0.1,0.5."
            ) from None
        if not 0.0 <= lam <= 1.0:
            raise InputError(
                f"--lams has {lam}, outside [0, 1]; lambda weighs the region batch "
                "against the original batch, so pass values from 0 to 1."
            )
        lams.append(lam)
    if not lams:
        raise InputError("--lams is empty; pass at least one value such as --lams=0.1.")
    if len(set(lams)) != len(lams):
        raise InputError(f"--lams={values} repeats a value; pass each lambda once.")
    return sorted(lams)


def check_out(out: str) -> None:
    """Raise InputError unless `out` is a folder or can become one."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(
            f"--out={out!r} is a file; pass a folder for the sweep's outputs."
        )
    for relative in ("lambda_sweep.json", "lambda_sweep.png"):
        if os.path.isdir(os.path.join(out, relative)):
            raise InputError(
                f"{os.path.join(out, relative)!r} is a folder; pass another --out."
            )


def seed_workdir(source: str, target: str) -> None:
    """Give `target` the finished stages of `source` as hard links (copies if needed)."""
    for relative in SHARED_OUTPUTS:
        origin = os.path.join(source, relative)
        destination = os.path.join(target, relative)
        if not os.path.exists(origin) or os.path.exists(destination):
            continue
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        if os.path.isdir(origin):
            shutil.copytree(origin, destination, copy_function=_link_or_copy)
        else:
            _link_or_copy(origin, destination)


def _link_or_copy(origin: str, destination: str) -> None:
    try:
        os.link(origin, destination)
    except OSError:  # Another file system, or links not allowed.
        shutil.copy2(origin, destination)


def sweep(
    config: Any,
    workdir: str,
    lams: list[float],
    out: str,
    *,
    search_again: bool,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Run the base pipeline, then correction for each lambda; return the results."""
    base = pipeline.run(config, workdir, allow_config_change=allow_config_change)
    if "correction" not in base:
        raise InputError(
            f"The run in {workdir} has no correction ({'; '.join(base['notes'])}), so "
            "there is nothing to sweep."
        )
    results = {
        "workdir": os.path.abspath(workdir),
        "before": {
            "test_accuracy": base["correction"]["before"]["test_accuracy"],
            "region_test_accuracy": base["correction"]["before"][
                "region_test_accuracy"
            ],
        },
        "region_test_size": base["correction"]["region_test_size"],
        "num_steps": base["correction"]["num_steps"],
        "lams": [],
    }
    for index, lam in enumerate(lams):
        logging.info("lambda_sweep: lambda %g (%d of %d).", lam, index + 1, len(lams))
        lam_workdir = os.path.join(out, f"lam_{lam:g}")
        seed_workdir(workdir, lam_workdir)
        lam_config = config.copy_and_resolve_references()
        with lam_config.unlocked():
            lam_config.correct.lam = lam
            # One fixed lambda per workdir, whatever the base config selects.
            lam_config.correct.lam_grid = ()
            lam_config.search_again.enabled = search_again
        outputs = pipeline.run(
            lam_config, lam_workdir, allow_config_change=True, draw_report=False
        )
        correction = outputs["correction"]
        entry = {"lam": lam, "workdir": os.path.abspath(lam_workdir)}
        for name in ("defuse", "finetune_on_flips_baseline"):
            entry[name] = {
                "test_accuracy": correction[name]["test_accuracy"],
                "region_test_accuracy": correction[name]["region_test_accuracy"],
            }
        if search_again and "search_again" in outputs:
            entry["fraction_closed"] = outputs["search_again"]["fraction_closed"]
        results["lams"].append(entry)
        # Written after every lambda, so a kill keeps the lambdas already done.
        report.write_json(os.path.join(out, "lambda_sweep.json"), results)
    save_sweep_plot(os.path.join(out, "lambda_sweep.png"), results)
    return results


def save_sweep_plot(path: str, results: dict[str, Any]) -> None:
    """Plot test and region test accuracy against lambda, for both corrections."""
    plt = report._pyplot()
    lams = [entry["lam"] for entry in results["lams"]]
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    styles = {
        ("defuse", "test_accuracy"): (
            "Defuse: original test accuracy",
            "tab:blue",
            "-",
        ),
        ("defuse", "region_test_accuracy"): (
            "Defuse: region test accuracy",
            "tab:red",
            "-",
        ),
        ("finetune_on_flips_baseline", "test_accuracy"): (
            "finetune on flips: original test accuracy",
            "tab:blue",
            "--",
        ),
        ("finetune_on_flips_baseline", "region_test_accuracy"): (
            "finetune on flips: region test accuracy",
            "tab:red",
            "--",
        ),
    }
    for (name, metric), (label, color, line) in styles.items():
        values = [entry[name][metric] for entry in results["lams"]]
        axis.plot(lams, values, linestyle=line, marker="o", color=color, label=label)
    for metric, color, label in (
        ("test_accuracy", "tab:blue", "before correction: original test accuracy"),
        ("region_test_accuracy", "tab:red", "before correction: region test accuracy"),
    ):
        axis.axhline(
            results["before"][metric],
            color=color,
            linestyle=":",
            linewidth=1,
            label=label,
        )
    axis.set_xlabel("lambda (weight of the region batch)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0.0, 1.02)
    axis.set_title(
        f"Correction from one classifier, {results['num_steps']} steps per lambda",
        fontsize=9,
    )
    axis.grid(alpha=0.3)
    # Long legend handles, so dashed and dotted lines read as such.
    axis.legend(fontsize=7, loc="lower left", handlelength=4)
    figure.tight_layout()
    report._save_figure(figure, path)


def main(argv: list[str]) -> None:
    start_binary(argv)
    workdir = run_defuse._WORKDIR.value
    with run_defuse.exit_on_known_errors():
        lams = parse_lams(_LAMS.value)
        out = _OUT.value or os.path.join(workdir, "lambda_sweep")
        check_out(out)
        results = sweep(
            run_defuse._CONFIG.value,
            workdir,
            lams,
            out,
            search_again=_SEARCH_AGAIN.value,
            allow_config_change=run_defuse._ALLOW_CONFIG_CHANGE.value,
        )
    for entry in results["lams"]:
        logging.info(
            "lambda %g: Defuse test accuracy %.4f, region test accuracy %.4f; "
            "baseline %.4f, %.4f.",
            entry["lam"],
            entry["defuse"]["test_accuracy"],
            entry["defuse"]["region_test_accuracy"],
            entry["finetune_on_flips_baseline"]["test_accuracy"],
            entry["finetune_on_flips_baseline"]["region_test_accuracy"],
        )
    logging.info(
        "Wrote %s and lambda_sweep.png.", os.path.join(out, "lambda_sweep.json")
    )


if __name__ == "__main__":
    app.run(main, flags_parser=run_defuse.parse_flags)
