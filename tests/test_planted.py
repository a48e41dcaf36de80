"""Tests of the planted-bug helpers and of the planted_bug binary's pieces."""

import json
import os

import numpy as np
import pytest

from defuse_jax import classifier, pipeline, planted
from defuse_jax.data import Dataset
from experiments import planted_lib
from experiments.cli import config_path, load_config


def _dataset(num_per_class=20, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), num_per_class).astype(np.int32)
    # The ink of image i of each class grows with i, so the lightest are known.
    level = np.tile(np.arange(1, num_per_class + 1), num_classes) / (num_per_class + 1)
    images = (level[:, None, None, None] * np.ones((1, 4, 4, 1))).astype(np.float32)
    images += rng.uniform(0, 1e-3, images.shape).astype(np.float32)
    return Dataset(
        name="toy",
        train_images=images,
        train_labels=labels,
        test_images=images[::2],
        test_labels=labels[::2],
        num_classes=num_classes,
        class_names=tuple(str(c) for c in range(num_classes)),
    )


def test_plant_bug_relabels_lightest_images():
    dataset = _dataset()
    bug = planted.plant_bug(
        dataset, source_class=1, target_class=2, quantile=0.5, fraction=0.6, seed=3
    )
    labels = dataset.train_labels
    lightest = np.argsort(planted.ink(dataset.train_images[labels == 1]))[:10]
    expected_style = np.zeros(len(labels), bool)
    expected_style[np.nonzero(labels == 1)[0][lightest]] = True
    np.testing.assert_array_equal(bug.style, expected_style)
    assert bug.relabelled.sum() == 6
    assert not (bug.relabelled & ~bug.style).any()
    np.testing.assert_array_equal(bug.dataset.train_labels[bug.relabelled], 2)
    np.testing.assert_array_equal(
        bug.dataset.train_labels[~bug.relabelled], labels[~bug.relabelled]
    )
    np.testing.assert_array_equal(bug.true_train_labels, labels)
    # The test split keeps its true labels.
    np.testing.assert_array_equal(bug.dataset.test_labels, dataset.test_labels)
    assert "planted(1->2" in bug.dataset.name


def test_plant_bug_seed_and_control():
    dataset = _dataset()
    first = planted.plant_bug(dataset, source_class=0, target_class=1, seed=5)
    again = planted.plant_bug(dataset, source_class=0, target_class=1, seed=5)
    other = planted.plant_bug(dataset, source_class=0, target_class=1, seed=6)
    np.testing.assert_array_equal(first.relabelled, again.relabelled)
    assert not np.array_equal(first.relabelled, other.relabelled)
    control = planted.plant_bug(dataset, source_class=0, target_class=1, fraction=0.0)
    assert not control.relabelled.any()
    np.testing.assert_array_equal(control.dataset.train_labels, dataset.train_labels)
    assert control.style.sum() == first.style.sum()


def test_plant_bug_relabels_validation_split_too():
    dataset = _dataset()
    with_validation = dataset._replace(
        validation_images=dataset.train_images[::2],
        validation_labels=dataset.train_labels[::2],
    )
    plain = planted.plant_bug(dataset, source_class=1, target_class=2, seed=3)
    bug = planted.plant_bug(with_validation, source_class=1, target_class=2, seed=3)
    # The train choice does not depend on the validation split.
    np.testing.assert_array_equal(bug.dataset.train_labels, plain.dataset.train_labels)
    style = planted.style_mask(
        with_validation.validation_images,
        with_validation.validation_labels,
        source_class=1,
        threshold=bug.threshold,
    )
    changed = bug.dataset.validation_labels != with_validation.validation_labels
    assert changed.sum() == round(0.5 * style.sum())
    assert changed.sum() > 0
    assert np.all(style[changed])
    assert np.all(bug.dataset.validation_labels[changed] == 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_class": 3}, "source_class=3 is not a class"),
        ({"target_class": -1}, "target_class=-1 is not a class"),
        ({"source_class": 1, "target_class": 1}, "both 1"),
        ({"quantile": 0.0}, "quantile=0.0"),
        ({"quantile": 1.0}, "quantile=1.0"),
        ({"fraction": 1.5}, "fraction=1.5"),
    ],
)
def test_plant_bug_rejects_bad_settings(kwargs, message):
    settings = {"source_class": 0, "target_class": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        planted.plant_bug(_dataset(), **settings)


def test_score_regions_counts_precision_and_recall_per_region():
    flip_is_style = np.array([1, 1, 1, 0, 0, 1, 0, 0], bool)
    assignments = np.array([4, 4, 4, 4, 2, 2, 2, 7])
    scores = planted.score_regions(flip_is_style, assignments, np.array([4, 2, 9]))
    assert [s["members"] for s in scores] == [4, 3, 0]
    assert [s["style_members"] for s in scores] == [3, 1, 0]
    assert scores[0]["precision"] == pytest.approx(0.75)
    assert scores[0]["recall"] == pytest.approx(0.75)
    assert scores[1]["precision"] == pytest.approx(1 / 3)
    assert scores[1]["recall"] == pytest.approx(0.25)
    assert scores[2]["precision"] == 0.0
    with pytest.raises(ValueError, match="one entry per flip"):
        planted.score_regions(flip_is_style[:3], assignments, np.array([4]))


def test_markdown_best_region_and_count():
    settings = {
        "source_class": 7,
        "target_class": 1,
        "quantile": 0.4,
        "fraction": 0.5,
        "min_precision": 0.5,
        "min_members": 20,
    }
    found = {
        "seed": 0,
        "classifier_test_accuracy": 0.95,
        "style_flips": 120,
        "num_flips": 1500,
        "best_region": {
            "region": 3,
            "confusion": "7 -> 1",
            "members": 90,
            "precision": 0.8,
            "recall": 0.6,
        },
        "found": True,
        "held_out_style": {
            "style_images": 40,
            "classifier": {"style_accuracy": 0.5, "other_accuracy": 0.98},
            "corrected": {"style_accuracy": 0.75},
        },
    }
    missed = {
        **found,
        "seed": 1,
        "best_region": None,
        "found": False,
        "held_out_style": {"style_images": 40},
    }
    text = planted_lib.markdown([found, missed], settings)
    assert (
        "| 0 | 95.0 | 50.0 → 75.0 → n/a (n=40) | 98.0 | 120 / 1500 | 3 (7 -> 1) |"
        in text
    )
    assert "| 80.0 | 60.0 | yes |" in text
    assert (
        "| 1 | 95.0 | n/a → n/a → n/a (n=40) | n/a | 120 / 1500 | none | 0 |" in text
    )
    assert text.rstrip().endswith("Found in 1 of 2 seeds.")


def test_restored_classifier_test_accuracy(finished_run):
    """restore_classifier reads the workdir's params with the right structure."""
    workdir, _ = finished_run
    config = load_config(config_path("mnist5k"), "test")
    dataset = pipeline.load_dataset(config)
    apply_fn, params = planted_lib.restore_classifier(
        workdir, "classifier", config, dataset
    )
    accuracy = classifier.accuracy(
        apply_fn, params, dataset.test_images, dataset.test_labels
    )
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as file:
        report = json.load(file)
    assert accuracy == pytest.approx(report["classifier_test_accuracy"])
    assert planted_lib.restore_classifier(workdir, "missing", config, dataset) is None


def test_seed_without_flips_scores_no_region(tmp_path):
    # A tiny noise scale decodes every perturbation to nearly the reconstruction of its
    # source image. The search skips misclassified reconstructions, so nothing flips.
    config = load_config(config_path("digits"), "test")
    with config.unlocked():
        config.identify.noise_scale = 1e-6

    result = planted_lib.evaluate_seed(
        config,
        0,
        str(tmp_path),
        quantile=0.4,
        fraction=0.5,
        source_class=7,
        target_class=1,
        min_precision=0.5,
        min_members=20,
        draw_report=False,
    )

    assert result["num_flips"] == 0
    assert result["regions"] == []
    assert result["best_region"] is None
    assert result["found"] is False

    settings = {
        "fraction": 0.5,
        "source_class": 7,
        "quantile": 0.4,
        "target_class": 1,
        "min_precision": 0.5,
        "min_members": 20,
    }
    text = planted_lib.markdown([result], settings)
    assert "| 0 / 0 | none | 0 | n/a | n/a | no |" in text
