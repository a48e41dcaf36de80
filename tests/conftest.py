"""Fixtures shared by the tests that run the experiments.run_defuse binary."""

import pytest
from binary import run_binary


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One uninterrupted run of the test config, shared by every binary test.

    Tests must not change this workdir; those that rerun with other flags copy it.
    """
    workdir = str(tmp_path_factory.mktemp("defuse_finished_run"))
    result = run_binary(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result
