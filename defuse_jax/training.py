"""Shared training loop, metric writing and parameter checkpoints.

The loop draws one fixed-shape batch per step from a per-epoch permutation derived from
`fold_in(data_key, epoch)`, and passes `fold_in(step_key, step)` to the step function, so
the numbers a run draws depend only on the seed and the step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from defuse_jax import batching

StepFn = Callable[
    [Any, tuple[jax.Array, ...], jax.Array], tuple[Any, Mapping[str, jax.Array]]
]


class MetricWriter:
    """Write scalar metrics as JSON lines and, when tensorboardX imports, as TensorBoard events.

    Args:
        logdir: Folder for `metrics.jsonl` and the event files; None writes nothing.
    """

    def __init__(self, logdir: str | None):
        self._jsonl = None
        self._tensorboard = None
        if logdir is None:
            return
        os.makedirs(logdir, exist_ok=True)
        # Kept open for the writer's lifetime and closed by close().
        path = os.path.join(logdir, "metrics.jsonl")
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            logging.warning(
                "tensorboardX is not installed; writing metrics as JSON only."
            )
        else:
            self._tensorboard = SummaryWriter(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._jsonl is not None:
            record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, float(value), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def train_loop(
    state: Any,
    step_fn: StepFn,
    arrays: tuple[np.ndarray, ...],
    *,
    key: jax.Array,
    num_steps: int,
    batch_size: int,
    name: str,
    writer: MetricWriter | None = None,
    log_every: int = 100,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
) -> Any:
    """Run `num_steps` steps of `step_fn(state, batch, key)` over row batches of `arrays`.

    With `checkpoint_dir`, the loop saves the whole state there every `checkpoint_every`
    steps and, when it finds a checkpoint there at the start, resumes after its step.
    Batches and step keys depend only on `key` and the step number, so a resumed loop
    ends with the same state as one that was never interrupted.

    Args:
        state: The training state pytree (for example a flax TrainState).
        step_fn: Jitted `(state, batch, key) -> (state, metrics)`; `batch` is a tuple
            with one [B, ...] slice of each array, and `metrics` holds a "loss".
        arrays: Training arrays with a common leading size N >= batch_size.
        key: Root key of this loop; split into a data key and a step key.
        num_steps: Number of optimisation steps.
        batch_size: Fixed batch size B. Each epoch drops its last partial batch.
        name: Name used in logs and metric keys.
        writer: Receives every logged metric.
        log_every: Steps between progress log lines and metric records.
        checkpoint_dir: Folder for progress checkpoints, or None. It must contain only
            checkpoints of this same loop (same state structure, data and key).
        checkpoint_every: Steps between checkpoints. With 0 the loop saves none, but it
            still resumes from a checkpoint it finds.

    Returns:
        The final state.

    Raises:
        FloatingPointError: A step returned a non-finite loss. The message names the
            first such step; checkpoints saved before it are kept.
    """
    num_examples = len(arrays[0])
    if num_examples < batch_size:
        raise ValueError(
            f"{name}: {num_examples} training examples is fewer than the batch size "
            f"{batch_size}; lower the batch size."
        )
    steps_per_epoch = num_examples // batch_size
    data_key, step_key = jax.random.split(key)
    checkpoints = None if checkpoint_dir is None else _Checkpoints(checkpoint_dir)
    first_step = 0
    if checkpoints is not None:
        state, first_step = checkpoints.restore_latest(state, num_steps, name)
    logging.info(
        "%s: training for %d steps (%.1f epochs of %d examples, batch %d)%s.",
        name,
        num_steps,
        num_steps / steps_per_epoch,
        num_examples,
        batch_size,
        f", resuming at step {first_step}" if first_step else "",
    )
    start = time.perf_counter()
    order = None
    # Losses since the last check, kept on the device so that steps are not synchronised.
    pending: list[tuple[int, jax.Array]] = []
    for step in range(first_step, num_steps):
        epoch, position = divmod(step, steps_per_epoch)
        if position == 0 or order is None:
            order = batching.epoch_permutation(data_key, epoch, num_examples)
        indices = order[position * batch_size : (position + 1) * batch_size]
        batch = tuple(array[indices] for array in arrays)
        state, metrics = step_fn(state, batch, jax.random.fold_in(step_key, step))
        pending.append((step + 1, metrics["loss"]))
        done = step + 1
        save = (
            checkpoints is not None
            and checkpoint_every
            and done % checkpoint_every == 0
        )
        if done % log_every == 0 or done == num_steps or save:
            _check_finite(pending, name, checkpoints)
            pending = []
        if save and done < num_steps:
            checkpoints.save(done, state)
            logging.info("%s: saved a checkpoint at step %d/%d.", name, done, num_steps)
        if done % log_every == 0 or done == num_steps:
            scalars = {k: float(v) for k, v in metrics.items()}
            rate = (done - first_step) / (time.perf_counter() - start)
            logging.info(
                "%s: step %d/%d, %s, %.1f steps/s, %.0f s left.",
                name,
                done,
                num_steps,
                ", ".join(f"{k}={v:.4g}" for k, v in scalars.items()),
                rate,
                (num_steps - done) / rate,
            )
            if writer is not None:
                writer.write_scalars(
                    done, {f"{name}/{k}": v for k, v in scalars.items()}
                )
    logging.info("%s: done in %.1f s.", name, time.perf_counter() - start)
    return state


def _check_finite(
    losses: list[tuple[int, jax.Array]], name: str, checkpoints: _Checkpoints | None
) -> None:
    """Raise FloatingPointError naming the first step whose loss is not finite."""
    if not losses:
        return
    values = np.asarray(jax.device_get([loss for _, loss in losses]), np.float64)
    bad = np.nonzero(~np.isfinite(values))[0]
    if not bad.size:
        return
    step, value = losses[bad[0]][0], values[bad[0]]
    last_good = checkpoints.latest_step() if checkpoints is not None else None
    raise FloatingPointError(
        f"{name}: the loss became {value} at step {step}; lower the learning rate or "
        "check the input images."
        + (
            f" The last good checkpoint, at step {last_good}, is kept in {checkpoints.path}."
            if last_good
            else ""
        )
    )


class _Checkpoints:
    """Progress checkpoints of one training loop: the latest whole state, saved in sync."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        with _quiet_orbax():
            self._manager = ocp.CheckpointManager(
                self.path,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, enable_async_checkpointing=False
                ),
            )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore_latest(self, like: Any, num_steps: int, name: str) -> tuple[Any, int]:
        """Return the latest saved state and its step, or `(like, 0)` when none is saved."""
        step = self.latest_step()
        if step is None:
            return like, 0
        if step > num_steps:
            raise ValueError(
                f"{name}: the checkpoint in {self.path} is at step {step}, past the "
                f"{num_steps} steps of this run; delete that folder to start again."
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            with _quiet_orbax():
                state = self._manager.restore(
                    step, args=ocp.args.StandardRestore(abstract)
                )
        except Exception as error:  # noqa: BLE001 - orbax raises many types here.
            logging.warning(
                "%s: cannot restore the checkpoint in %s (%s: %s); starting again.",
                name,
                self.path,
                type(error).__name__,
                error,
            )
            self._manager.close()
            shutil.rmtree(self.path)
            self.__init__(self.path)
            return like, 0
        logging.info(
            "%s: restored the checkpoint at step %d from %s.", name, step, self.path
        )
        return state, step

    def save(self, step: int, state: Any) -> None:
        with _quiet_orbax():
            self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
            self._manager.wait_until_finished()


def save_params(path: str, params: Any) -> None:
    """Save a params pytree with orbax; orbax writes to a temporary folder and renames it."""
    with _quiet_orbax():
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.abspath(path), params, force=True)
        checkpointer.wait_until_finished()


def restore_params(path: str, like: Any) -> Any:
    """Restore a params pytree saved by `save_params`, with the structure of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with _quiet_orbax():
        return ocp.StandardCheckpointer().restore(os.path.abspath(path), abstract)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Hide orbax's per-array INFO lines (it logs through absl) while it saves or restores."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
