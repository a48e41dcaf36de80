"""Tests of training checkpoints, resume, non-finite guards and stage caching."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defuse_jax import classifier, models, training
from defuse_jax import workdir as workdir_lib
from defuse_jax.configuration import InputError


class _Killed(Exception):
    """Stands in for a kill in the middle of a training loop."""


def _small_problem():
    cnn = models.CNN(3, (4,), 8)
    apply_fn = classifier.make_apply_fn(cnn)
    state = classifier.create_state(
        cnn, apply_fn, jax.random.key(0), (8, 8, 1), learning_rate=1e-2, decay_steps=12
    )
    rng = np.random.default_rng(0)
    images = rng.random((40, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 3, 40).astype(np.int32)
    return state, (images, labels)


def _killed_at_step_7():
    """Return a train step that raises _Killed on its seventh call."""
    calls = []

    def step(s, batch, key):
        calls.append(1)
        if len(calls) == 7:
            raise _Killed
        return classifier.train_step(s, batch, key)

    return step


def _loop(state, arrays, step_fn, **kwargs):
    return training.train_loop(
        state,
        step_fn,
        arrays,
        key=jax.random.key(1),
        num_steps=12,
        batch_size=8,
        name="small",
        log_every=3,
        **kwargs,
    )


def test_resumed_loop_equals_uninterrupted_loop(tmp_path):
    state, arrays = _small_problem()
    uninterrupted = _loop(state, arrays, classifier.train_step)

    progress = str(tmp_path / "progress")
    with pytest.raises(_Killed):
        _loop(
            state,
            arrays,
            _killed_at_step_7(),
            checkpoint_dir=progress,
            checkpoint_every=4,
        )
    assert sorted(os.listdir(progress)) == ["4"]

    resumed_calls = []

    def counting_step(s, batch, key):
        resumed_calls.append(1)
        return classifier.train_step(s, batch, key)

    resumed = _loop(
        state, arrays, counting_step, checkpoint_dir=progress, checkpoint_every=4
    )
    assert len(resumed_calls) == 8  # Steps 5 to 12: it resumed after step 4.
    assert int(resumed.step) == int(uninterrupted.step) == 12
    for got, want in zip(
        jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for got, want in zip(
        jax.tree.leaves(resumed.opt_state), jax.tree.leaves(uninterrupted.opt_state)
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_nonfinite_loss_keeps_last_checkpoint(tmp_path):
    def step(state, batch, key):
        count = state["count"] + 1
        return {"count": count}, {"loss": jnp.where(count >= 7, jnp.nan, 1.0)}

    progress = str(tmp_path / "progress")
    with pytest.raises(FloatingPointError) as raised:
        training.train_loop(
            {"count": jnp.int32(0)},
            step,
            (np.zeros(8),),
            key=jax.random.key(0),
            num_steps=20,
            batch_size=4,
            name="diverging",
            log_every=5,
            checkpoint_dir=progress,
            checkpoint_every=2,
        )
    message = str(raised.value)
    assert "diverging: the loss became nan at step 7" in message
    assert "checkpoint, at step 6" in message
    assert sorted(os.listdir(progress)) == ["6"]


def test_loop_refuses_checkpoint_past_its_end(tmp_path):
    state, arrays = _small_problem()
    progress = str(tmp_path / "progress")
    _loop(
        state,
        arrays,
        classifier.train_step,
        checkpoint_dir=progress,
        checkpoint_every=4,
    )
    with pytest.raises(ValueError, match="past the 3 steps"):
        training.train_loop(
            state,
            classifier.train_step,
            arrays,
            key=jax.random.key(1),
            num_steps=3,
            batch_size=8,
            name="small",
            checkpoint_dir=progress,
        )


def test_cached_params_survive_kill_before_fingerprint(tmp_path):
    workdir = str(tmp_path)
    old = {"w": jnp.zeros(3)}
    workdir_lib.cached_params(workdir, "model", "config-a", old, lambda _: old)

    def killed(_progress):
        raise _Killed

    # A run with another config dies while computing: the stored params must no
    # longer pass for those of config-a or config-b.
    with pytest.raises(_Killed):
        workdir_lib.cached_params(workdir, "model", "config-b", old, killed)
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "model.json"))
    new = {"w": jnp.ones(3)}
    got = workdir_lib.cached_params(workdir, "model", "config-a", old, lambda _: new)
    np.testing.assert_array_equal(got["w"], np.ones(3))


def test_progress_folder_is_emptied_when_its_fingerprint_changes(tmp_path):
    path = workdir_lib.progress_folder(str(tmp_path), "vae", "config-a")
    os.makedirs(path)
    open(os.path.join(path, "partial"), "w").close()
    assert workdir_lib.progress_folder(str(tmp_path), "vae", "config-a") == path
    assert os.path.exists(os.path.join(path, "partial"))
    workdir_lib.progress_folder(str(tmp_path), "vae", "config-b")
    assert not os.path.exists(path)


def _record(lam=0.1, every_steps=10, digest="abc"):
    return {
        "config": {"correct": {"lam": lam}, "checkpoint": {"every_steps": every_steps}},
        "dataset_digest": digest,
        "classifier": "trained from config.classifier",
    }


def test_check_workdir_accepts_new_and_matching_folders(tmp_path):
    workdir = str(tmp_path / "run")
    assert workdir_lib.check_workdir(workdir, _record(), allow_change=False) == []
    workdir_lib.write_record(workdir, _record(), [])
    assert workdir_lib.check_workdir(workdir, _record(), allow_change=False) == []
    # Checkpoint cadence never changes a result, so it is not compared.
    assert (
        workdir_lib.check_workdir(workdir, _record(every_steps=99), allow_change=False)
        == []
    )


def test_check_workdir_refuses_other_inputs_unless_allowed(tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.write_record(workdir, _record(), [])
    with pytest.raises(InputError) as raised:
        workdir_lib.check_workdir(workdir, _record(lam=0.3), allow_change=False)
    assert "config.correct.lam: 0.1 -> 0.3" in str(raised.value)
    assert "--allow_config_change" in str(raised.value)
    with pytest.raises(InputError, match="dataset_digest: 'abc' -> 'xyz'"):
        workdir_lib.check_workdir(workdir, _record(digest="xyz"), allow_change=False)

    open(os.path.join(workdir, "report.json"), "w").close()
    changes = workdir_lib.check_workdir(workdir, _record(lam=0.3), allow_change=True)
    assert changes == ["config.correct.lam: 0.1 -> 0.3"]
    workdir_lib.write_record(workdir, _record(lam=0.3), changes)
    assert not os.path.exists(os.path.join(workdir, "report.json"))
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as file:
        assert json.load(file)["config"]["correct"]["lam"] == 0.3


def test_check_workdir_refuses_foreign_or_unreadable_folders(tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="has no config.json"):
        workdir_lib.check_workdir(str(foreign), _record(), allow_change=True)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="Cannot read.*--allow_config_change"):
        workdir_lib.check_workdir(str(broken), _record(), allow_change=False)
    changes = workdir_lib.check_workdir(str(broken), _record(), allow_change=True)
    assert changes[0].startswith("config.json: unreadable")

    (broken / "config.json").write_text("[]")
    with pytest.raises(InputError, match="not a JSON object"):
        workdir_lib.check_workdir(str(broken), _record(), allow_change=False)


def test_unreadable_arrays_are_computed_again(tmp_path):
    path = tmp_path / "flips.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    arrays = workdir_lib.cached_arrays(
        str(tmp_path), "flips", "config-a", lambda: {"codes": np.ones(2)}
    )
    np.testing.assert_array_equal(arrays["codes"], np.ones(2))
    assert workdir_lib.load_arrays(str(path), "config-a") is not None


def test_damaged_params_are_computed_again(tmp_path):
    workdir = str(tmp_path)
    params = {"w": jnp.zeros(3)}
    workdir_lib.cached_params(workdir, "model", "config-a", params, lambda _: params)
    folder = os.path.join(workdir, "checkpoints", "model")
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "wb") as file:
                file.write(b"damaged")
    new = {"w": jnp.ones(3)}
    got = workdir_lib.cached_params(workdir, "model", "config-a", params, lambda _: new)
    np.testing.assert_array_equal(got["w"], np.ones(3))


def test_damaged_progress_checkpoint_starts_over(tmp_path, caplog):
    state, arrays = _small_problem()
    uninterrupted = _loop(state, arrays, classifier.train_step)
    progress = str(tmp_path / "progress")
    with pytest.raises(_Killed):
        _loop(
            state,
            arrays,
            _killed_at_step_7(),
            checkpoint_dir=progress,
            checkpoint_every=4,
        )
    for root, _, files in os.walk(progress):
        for name in files:
            with open(os.path.join(root, name), "wb") as file:
                file.write(b"damaged")

    resumed = _loop(state, arrays, classifier.train_step, checkpoint_dir=progress)
    assert "cannot restore the checkpoint" in caplog.text
    for got, want in zip(
        jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
