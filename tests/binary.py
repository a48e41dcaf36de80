"""Helpers for tests that run the experiments.run_defuse binary as a subprocess."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CONFIG = "experiments/configs/mnist5k.py:test"


def binary_command(workdir, *flags):
    return [
        sys.executable,
        "-m",
        "experiments.run_defuse",
        f"--workdir={workdir}",
        f"--config={TEST_CONFIG}",
        *flags,
    ]


def binary_env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def run_binary(workdir, *flags, timeout=900):
    """Run the binary to completion; return the CompletedProcess."""
    return run_command(binary_command(workdir, *flags), timeout=timeout)


def run_module(module, *flags, timeout=900):
    """Run `python -m MODULE FLAGS...` to completion; return the CompletedProcess."""
    return run_command([sys.executable, "-m", module, *flags], timeout=timeout)


def run_command(command, *, timeout):
    """Run a command from the repository root with the binaries' environment."""
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=binary_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kill_binary_at(workdir, marker, *flags, timeout=900):
    """Start the binary, SIGKILL it as soon as a log line contains `marker`.

    Returns the log lines it wrote. Fails when the run ends before the marker.
    """
    process = subprocess.Popen(
        binary_command(workdir, *flags),
        cwd=REPO_ROOT,
        env=binary_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if marker in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended with status {process.returncode} before logging {marker!r}:\n"
        + "".join(lines[-30:])
    )
    return lines


def read_report(workdir):
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as file:
        return json.load(file)


def without_timings(report):
    return {k: v for k, v in report.items() if k != "stage_seconds"}


def snapshot(folder):
    """Map each file under `folder` to (size, mtime_ns, sha256) to detect any change."""
    state = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as file:
                digest = hashlib.sha256(file.read()).hexdigest()
            info = os.stat(path)
            state[os.path.relpath(path, folder)] = (
                info.st_size,
                info.st_mtime_ns,
                digest,
            )
    return state


def copy_workdir(source, destination):
    shutil.copytree(source, destination)
    return str(destination)
