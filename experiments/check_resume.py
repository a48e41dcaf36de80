r"""Kill a run at a log line, resume it, and compare it with an uninterrupted run.

    python -m experiments.check_resume --reference=/tmp/defuse_mnist \
        --workdir=/tmp/defuse_killed --marker="vae: saved a checkpoint at step 500/"

The reference workdir must contain a finished run of the default config. The check copies
it, deletes the outputs named by --remove (the stage to redo and every later one), runs
experiments.run_defuse there, sends SIGKILL right after a log line that contains
--marker, runs it again, and compares report.json (all but stage_seconds) and the
array and image files with the reference. It exits 1 when anything differs.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags, logging

_REFERENCE = flags.DEFINE_string("reference", None, "Workdir of a finished run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir for the killed run.")
_MARKER = flags.DEFINE_string(
    "marker", "vae: saved a checkpoint at step 500/", "Log text to kill the run at."
)
_REMOVE = flags.DEFINE_list(
    "remove",
    [
        "checkpoints/vae",
        "checkpoints/vae.json",
        "flips.npz",
        "radius.npz",
        "mixture.npz",
        "regions.npz",
        "checkpoints/corrected",
        "checkpoints/corrected.json",
        "checkpoints/baseline",
        "checkpoints/baseline.json",
        "flips_after.npz",
        "mixture_after.npz",
        "regions_after.npz",
        "region_ids.json",
        "search_again",
        "flips.png",
        "flip_radius.png",
        "latent_map.png",
        "region_samples.npz",
        "regions",
        "report.json",
        "report.html",
    ],
    "Outputs deleted from the copy before the killed run.",
)
_COMPARED = (
    "flips.npz",
    "radius.npz",
    "mixture.npz",
    "regions.npz",
    "flips_after.npz",
    "regions_after.npz",
    "flips.png",
    "flip_radius.png",
)
flags.mark_flags_as_required(["reference", "workdir"])


def _report(workdir: str) -> dict:
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as file:
        report = json.load(file)
    report.pop("stage_seconds", None)
    return report


def _same_bytes(first: str, second: str) -> bool:
    with open(first, "rb") as a, open(second, "rb") as b:
        return a.read() == b.read()


def main(argv: list[str]) -> None:
    del argv
    reference, workdir = _REFERENCE.value, _WORKDIR.value
    if os.path.exists(workdir):
        raise SystemExit(f"error: --workdir={workdir!r} exists; pass a new folder.")

    shutil.copytree(reference, workdir)
    for relative in _REMOVE.value:
        path = os.path.join(workdir, relative)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    command = [sys.executable, "-m", "experiments.run_defuse", f"--workdir={workdir}"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if _MARKER.value in line:
            process.send_signal(signal.SIGKILL)
            logging.info("Killed the run after: %s", line.strip())
            break
    process.wait()
    if process.returncode != -signal.SIGKILL:
        raise SystemExit(
            f"error: the run ended with status {process.returncode} before logging "
            f"{_MARKER.value!r}; pick a marker from an earlier stage."
        )

    start = time.perf_counter()
    subprocess.run(command, check=True)
    logging.info("The resumed run took %.0f s.", time.perf_counter() - start)

    differences = [] if _report(workdir) == _report(reference) else ["report.json"]
    differences += [
        name
        for name in _COMPARED
        if not _same_bytes(os.path.join(workdir, name), os.path.join(reference, name))
    ]
    if differences:
        raise SystemExit(f"error: the resumed run differs in {', '.join(differences)}.")
    logging.info(
        "The resumed run equals the reference: report.json and %s.",
        ", ".join(_COMPARED),
    )


if __name__ == "__main__":
    app.run(main)
