r"""Export a finished run's regions for a person to label, and check the filled file.

    python -m experiments.annotate export --workdir=/tmp/defuse_mnist
    python -m experiments.annotate check --workdir=/tmp/defuse_mnist \
        --file=/tmp/defuse_mnist/annotation/manifest.csv

`export` writes each region's report samples as PNGs and a manifest with a row per
region under WORKDIR/annotation. Fill each row's `label` (a class name or index) and
`decision` (fix, not_a_bug or unsure), then `check` the file, and rerun the pipeline
with --config.annotate.annotator=file --config.annotate.file=PATH. Neither command runs
a model.
"""

import json
import os
import sys

from absl import app, flags, logging

from defuse_jax import annotation_export
from defuse_jax.configuration import InputError
from experiments.configs import mnist5k

_COMMANDS = ("export", "check")

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder of a finished experiments.run_defuse run."
)
_OUT = flags.DEFINE_string(
    "out",
    "",
    "export: output folder for the PNGs and manifest; default WORKDIR/annotation.",
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite",
    False,
    "export: replace a manifest in the output folder that already has labels or "
    "decisions.",
)
_FILE = flags.DEFINE_string(
    "file", "", "check: the filled manifest.csv or manifest.json to check."
)
flags.mark_flags_as_required(["workdir"])


def _config_argument(workdir: str) -> str:
    """Return the --config value of the workdir's run when it is a shipped config.

    Returns "CONFIG" when the run used another config file or overrides, which the
    workdir does not record.
    """
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as file:
            stored = json.load(file)["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return "CONFIG"
    path = "experiments/configs/mnist5k.py"
    # The rerun sets the annotate section, and checkpoint never changes a result.
    ignored = ("annotate", "checkpoint")
    for variant in ("", "test"):
        shipped = json.loads(json.dumps(mnist5k.get_config(variant).to_dict()))
        if all(
            stored.get(key) == value
            for key, value in shipped.items()
            if key not in ignored
        ):
            return f"{path}:{variant}" if variant else path
    return "CONFIG"


def _rerun_command(workdir: str, path: str) -> str:
    config = _config_argument(workdir)
    command = (
        f"python -m experiments.run_defuse --workdir={workdir} --config={config} "
        f"--config.annotate.annotator=file --config.annotate.file={path}"
    )
    if config == "CONFIG":
        command += " (replace CONFIG with the run's --config and its overrides)"
    return command


def export(workdir: str) -> None:
    result = annotation_export.export_regions(
        workdir, _OUT.value, overwrite=_OVERWRITE.value
    )
    logging.info(
        "Exported %d regions of run %s: %d PNGs under %s/region_RR/, and %s and %s. "
        "Fill each row's label (a class name or index) and decision (fix, not_a_bug "
        "or unsure); leave both empty to skip a region.",
        result.num_regions,
        result.run_id,
        result.num_images,
        result.folder,
        result.manifest_csv,
        result.manifest_json,
    )
    logging.info(
        "Then check the file with: python -m experiments.annotate check "
        "--workdir=%s --file=%s",
        workdir,
        result.manifest_csv,
    )
    logging.info(
        "and correct with it: %s", _rerun_command(workdir, result.manifest_csv)
    )


def check(workdir: str, path: str) -> None:
    if not path:
        raise app.UsageError("check needs --file, the filled manifest to check.")
    report, decisions = annotation_export.check_file(workdir, path)
    names = report["dataset"]["class_names"]
    for row, record in enumerate(report["regions"]):
        decision = str(decisions.decision[row])
        suffix = (
            f" with label {names[decisions.label[row]]}" if decision == "fix" else ""
        )
        logging.info("Region %d: %s%s.", record["region"], decision, suffix)
    details = decisions.details
    fixed = int((decisions.decision == "fix").sum())
    logging.info(
        "%s is valid for run %s: %d of %d regions would be corrected. Rows without "
        "label and decision, skipped: %d (%s). Regions without a row: %d.",
        path,
        report["run_id"],
        fixed,
        len(report["regions"]),
        details["rows_skipped"],
        ", ".join(details["skipped_rows"]) or "none",
        len(details["regions_without_row"]),
    )
    logging.info("Correct with it: %s", _rerun_command(workdir, os.path.abspath(path)))


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in _COMMANDS:
        raise app.UsageError(
            f"Pass one command, {' or '.join(_COMMANDS)}; got {argv[1:] or 'none'}."
        )
    try:
        if argv[1] == "export":
            export(_WORKDIR.value)
        else:
            check(_WORKDIR.value, _FILE.value)
    except InputError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    app.run(main)
