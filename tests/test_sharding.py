"""The search on 4 (faked) CPU devices gives the same arrays as on 1 device.

XLA fixes the number of host devices when JAX starts, so the searches run in a
subprocess started with XLA_FLAGS=--xla_force_host_platform_device_count=4.
"""

import os
import subprocess
import sys

import numpy as np

from defuse_jax import identify

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS)


def test_four_device_search_equals_one_device(tmp_path):
    output = tmp_path / "sharding.npz"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": REPO_ROOT,
    }
    result = subprocess.run(
        [sys.executable, os.path.join(TESTS, "sharding_worker.py"), str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    with np.load(output) as stored:
        results = dict(stored)
    assert int(results["device_count"]) == 4
    assert int(results["sharded_mesh_size"]) == 4
    assert int(results["single_mesh_size"]) == 1
    # 20 images in batches of 8: the last batch is half padding.
    assert len(results["single_radius"]) == 20
    assert results["single_codes"].shape[0] > 0, "the search found no flips"
    assert np.isfinite(results["single_radius"]).any()
    for field in (*identify.Flips._fields, "radius"):
        sharded, single = results[f"sharded_{field}"], results[f"single_{field}"]
        assert sharded.dtype == single.dtype, field
        assert np.array_equal(sharded, single), field
