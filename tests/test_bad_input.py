"""Bad input makes the binary exit with one clear message and write nothing.

Each case runs the binary against the workdir of a finished run or a folder named in
the case. It checks the exit status and the key words of the message. It also checks
that every file already in that folder is unchanged.
"""

import os
import re

import numpy as np
import pytest
from binary import run_binary, snapshot


def _npz(folder, **overrides):
    """Write a small valid dataset with `overrides` applied; return its config flag."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.random((200, 8, 8, 1)).astype(np.float32),
        "train_labels": np.arange(200) % 3,
        "test_images": rng.random((30, 8, 8, 1)).astype(np.float32),
        "test_labels": np.arange(30) % 3,
    }
    arrays.update(overrides)
    path = os.path.join(folder, "arrays.npz")
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"--config.dataset.name=npz:{path}"


# (case id, function of a scratch folder giving the flags, key words of the message)
CASES = [
    (
        "unknown dataset",
        lambda _: ["--config.dataset.name=cifar11"],
        ["cifar11", "mnist5k", "npz:FILE"],
    ),
    (
        "missing idx folder",
        lambda _: ["--config.dataset.name=idx:/no/such/folder"],
        ["/no/such/folder", "missing"],
    ),
    (
        "images not rank 4",
        lambda d: [_npz(d, train_images=np.zeros((200, 8, 8), np.float32))],
        ["train split", "(200, 8, 8)", "rank 4", "[N, H, W, C]"],
    ),
    (
        "images not finite",
        lambda d: [_npz(d, test_images=np.full((30, 8, 8, 1), np.inf, np.float32))],
        ["test split", "non-finite value inf", "index (0, 0, 0, 0)"],
    ),
    (
        "images outside [0, 1]",
        lambda d: [_npz(d, train_images=np.full((200, 8, 8, 1), 255.0))],
        ["value 255.0", "[0, 1]", "1/255"],
    ),
    (
        "negative label",
        lambda d: [_npz(d, train_labels=np.r_[np.arange(199) % 3, -1])],
        ["value -1 at index 199", "[0, 3)"],
    ),
    (
        "label beyond the class names",
        lambda d: [
            _npz(
                d,
                test_labels=np.r_[np.arange(29) % 3, 5],
                class_names=np.array(["a", "b", "c"]),
            )
        ],
        ["value 5 at index 29", "[0, 3)"],
    ),
    (
        "lambda above 1",
        lambda _: ["--config.correct.lam=1.5"],
        ["config.correct.lam=1.5", "[0, 1]"],
    ),
    (
        "zero truncation",
        lambda _: ["--config.distill.truncation=0"],
        ["config.distill.truncation=0", "[1, inf]"],
    ),
    (
        "batch larger than the data",
        lambda _: ["--config.classifier.batch_size=5000"],
        ["classifier.batch_size=5000", "at most 4000"],
    ),
    (
        "misspelt config field",
        lambda _: ["--config.correct.lamda=0.3"],
        ["no field named by --config.correct.lamda", 'did you mean "lam"'],
    ),
    (
        "workdir of another config",
        lambda _: ["--config.correct.lam=0.3"],
        ["different run", "config.correct.lam: 0.1 -> 0.3", "--allow_config_change"],
    ),
]


@pytest.mark.parametrize(
    ("flags_for", "words"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_exits_without_touching_the_workdir(
    finished_run, tmp_path, flags_for, words
):
    workdir, _ = finished_run
    before = snapshot(workdir)
    result = run_binary(workdir, *flags_for(str(tmp_path)), timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: "), message
    for word in words:
        assert word in message, (word, message)
    assert "Stage classifier" not in result.stderr
    assert snapshot(workdir) == before


def test_workdir_that_is_a_file_is_left_alone(tmp_path):
    path = tmp_path / "results"
    path.write_text("my notes")
    result = run_binary(str(path), timeout=300)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: "), message
    assert "is a file" in message, message
    assert path.read_text() == "my notes"


def test_workdir_under_a_file_is_rejected(tmp_path):
    path = tmp_path / "results"
    path.write_text("my notes")
    result = run_binary(str(path / "run"), timeout=300)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: Cannot create --workdir="), message
    assert path.read_text() == "my notes"


def test_folder_of_other_files_is_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("chapter 1")
    before = snapshot(str(tmp_path))
    result = run_binary(str(tmp_path), timeout=300)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "has no config.json" in message, message
    assert "new or empty folder" in message, message
    assert snapshot(str(tmp_path)) == before


def test_diverging_training_stops_with_the_step(tmp_path):
    workdir = str(tmp_path / "diverging")
    result = run_binary(workdir, "--config.classifier.learning_rate=1e9", timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: classifier: the loss became (nan|inf) at step \d+; lower the "
        r"learning rate or check the input images\.( The last good checkpoint.*)?",
        message,
    ), message
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "classifier.json"))
