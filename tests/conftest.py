"""Fixtures shared by the tests that run the experiments.run_defuse binary."""

import json
import os
import subprocess
import tempfile

# A persistent XLA compilation cache shared by the test processes and every binary
# they start: each binary run compiles the same training and search steps, and reading
# them from the cache made a test-config run take 51 s instead of 130 s. Set before any
# test module imports JAX, which reads these variables at import; the binary inherits
# them. Results do not change: the cached executables are the ones XLA would compile.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"defuse_jax_test_xla_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest
from binary import binary_command, run_binary
from filelock import FileLock


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One uninterrupted run of the test config, shared by every binary test.

    Under pytest-xdist every worker process requests this fixture; the first one runs
    the binary while holding a file lock and records its output, and the others wait
    for the lock and reuse the same workdir. Tests must not change this workdir; those
    that rerun with other flags copy it.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # The folder that all workers' temporary folders share.
    workdir = root / "defuse_finished_run"
    record = root / "defuse_finished_run.json"
    with FileLock(f"{record}.lock"):
        if record.is_file():
            outputs = json.loads(record.read_text(encoding="utf-8"))
        else:
            result = run_binary(str(workdir))
            outputs = {
                "returncode": result.returncode,
                "stdout": result.stdout,
                "stderr": result.stderr,
            }
            record.write_text(json.dumps(outputs), encoding="utf-8")
    result = subprocess.CompletedProcess(
        binary_command(str(workdir)),
        outputs["returncode"],
        outputs["stdout"],
        outputs["stderr"],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(workdir), result
