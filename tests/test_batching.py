"""Tests of fixed-shape batching, the shared training loop and atomic writes."""

import os
import stat
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import batching, report, training


def test_padded_batches_cover_rows_once():
    batches = list(batching.padded_index_batches(10, 4))
    assert [len(indices) for indices, _ in batches] == [4, 4, 4]
    covered = np.concatenate([indices[mask] for indices, mask in batches])
    np.testing.assert_array_equal(covered, np.arange(10))
    np.testing.assert_array_equal(batches[-1][1], [True, True, False, False])


def test_padded_batches_reject_zero_batch_size():
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        list(batching.padded_index_batches(3, 0))


def test_map_batched_drops_padding_rows():
    values = np.arange(7, dtype=np.float32)
    result = batching.map_batched(jax.jit(lambda x: {"double": 2 * x}), (values,), 3)
    np.testing.assert_array_equal(result["double"], 2 * values)


def test_epoch_permutation_depends_on_epoch_only():
    key = jax.random.key(0)
    first = batching.epoch_permutation(key, 3, 20)
    np.testing.assert_array_equal(first, batching.epoch_permutation(key, 3, 20))
    assert not np.array_equal(first, batching.epoch_permutation(key, 4, 20))
    np.testing.assert_array_equal(np.sort(first), np.arange(20))


def test_train_loop_rejects_batch_larger_than_data():
    with pytest.raises(ValueError, match="fewer than the batch size 16"):
        training.train_loop(
            None,
            None,
            (np.zeros(8),),
            key=jax.random.key(0),
            num_steps=1,
            batch_size=16,
            name="small",
        )


def test_params_checkpoint_round_trip(tmp_path):
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    training.save_params(str(tmp_path / "params"), params)
    restored = training.restore_params(str(tmp_path / "params"), params)
    jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_npz_bytes_are_reproducible_and_loadable(tmp_path):
    arrays = {
        "codes": np.arange(6.0).reshape(2, 3),
        "label": np.array([1, 2], np.int32),
    }
    first = report.npz_bytes(arrays)
    time.sleep(2.1)  # np.savez would stamp a new time here.
    assert report.npz_bytes(arrays) == first
    path = tmp_path / "arrays.npz"
    path.write_bytes(first)
    with np.load(path) as stored:
        assert stored.files == ["codes", "label"]
        np.testing.assert_array_equal(stored["codes"], arrays["codes"])
        assert stored["label"].dtype == np.int32


def test_atomic_write_uses_umask_permissions(tmp_path):
    path = tmp_path / "out.json"
    report.write_json(str(path), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
