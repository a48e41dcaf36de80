"""Tests of the multi-process search: process blocks, and two JAX processes on CPU."""

import contextlib
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from toy_search import search, toy_data

from defuse_jax import distributed, identify

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS)


@pytest.mark.parametrize(
    ("num_items", "process_count"), [(10, 3), (9, 3), (3, 5), (0, 2), (7, 1)]
)
def test_process_blocks_cover_the_range_in_order(num_items, process_count):
    blocks = [
        distributed.process_block(num_items, index, process_count)
        for index in range(process_count)
    ]
    covered = [item for block in blocks for item in range(num_items)[block]]
    assert covered == list(range(num_items))
    sizes = [block.stop - block.start for block in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


def test_more_processes_than_items_leaves_empty_blocks():
    blocks = [distributed.process_block(2, index, 4) for index in range(4)]
    assert blocks == [slice(0, 1), slice(1, 2), slice(2, 2), slice(2, 2)]


@pytest.mark.parametrize("index", [-1, 3])
def test_process_index_outside_the_count_raises(index):
    with pytest.raises(ValueError, match=rf"process_index {index} is outside \[0, 3\)"):
        distributed.process_block(10, index, 3)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_merge_to_one_process_search(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}
    # One CPU device per process, even when the caller's XLA_FLAGS fake more.
    env.pop("XLA_FLAGS", None)
    outputs = [tmp_path / f"process_{index}.npz" for index in range(2)]
    with contextlib.ExitStack() as stack:
        logs = [
            stack.enter_context(open(tmp_path / f"process_{index}.log", "w+"))
            for index in range(2)
        ]
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    os.path.join(TESTS, "multihost_worker.py"),
                    str(index),
                    str(port),
                    str(outputs[index]),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=logs[index],
                stderr=subprocess.STDOUT,
            )
            for index in range(2)
        ]
        try:
            for process in processes:
                process.wait(timeout=180)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
            log.seek(0)
            assert process.returncode == 0, f"process {index}:\n{log.read()[-3000:]}"

    merged = []
    for index, output in enumerate(outputs):
        with np.load(output) as stored:
            result = dict(stored)
        assert int(result["process_index"]) == index
        assert int(result["process_count"]) == 2
        merged.append(result)
    # Blocks of the 11 images: 6 for process 0 and 5 for process 1.
    np.testing.assert_array_equal(merged[0]["block"], [0, 6])
    np.testing.assert_array_equal(merged[1]["block"], [6, 11])

    images, labels = toy_data(11)
    expected = search(images, labels)
    # Both blocks have flips, so the merge joins the work of both processes.
    assert np.any(expected.source_index < 6)
    assert np.any(expected.source_index >= 6)
    for result in merged:
        for field in identify.Flips._fields:
            np.testing.assert_array_equal(result[field], getattr(expected, field))
