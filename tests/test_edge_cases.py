"""Runs that find little must still finish with a report that explains why.

Most cases rerun a copy of the finished test-config workdir with one change, so only
the stages after that change are recomputed.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from binary import copy_workdir, read_report, run_binary

from defuse_jax import annotate, classifier, data, models, pipeline, training
from experiments.configs import mnist5k


def test_every_region_rejected_skips_correction(finished_run, tmp_path, monkeypatch):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "rejected")

    def reject_all(regions, flips, assignments):
        label = np.full(regions.size, annotate.REJECTED, np.int32)
        return annotate.Annotation(label=label, source="reject_all")

    monkeypatch.setitem(annotate.ANNOTATORS, "reject_all", reject_all)
    config = mnist5k.get_config("test")
    config.annotate.annotator = "reject_all"
    report = pipeline.run(config, workdir, allow_config_change=True)

    assert report["annotation"]["accepted"] == 0
    assert report["annotation"]["rejected"] == len(report["regions"]) > 0
    assert "marked no region as fix" in report["notes"][0]
    assert "correction" not in report
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "corrected"))
    assert read_report(workdir)["annotation"]["annotator"] == "reject_all"


def test_regions_below_the_minimum_size_are_dropped(finished_run, tmp_path):
    source, _ = finished_run
    sizes = sorted(r["member_count"] for r in read_report(source)["regions"])
    assert sizes[0] < sizes[-1], "the test run needs regions of different sizes"
    minimum = sizes[-1]
    workdir = copy_workdir(source, tmp_path / "min_size")
    result = run_binary(
        workdir, f"--config.distill.min_region_size={minimum}", "--allow_config_change"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(workdir)
    assert 0 < len(report["regions"]) < len(sizes)
    assert all(r["member_count"] >= minimum for r in report["regions"])
    grids = sorted(os.listdir(os.path.join(workdir, "regions")))
    assert grids == [f"region_{r:02d}.png" for r in range(len(report["regions"]))]


def test_no_regions_finish_with_a_note(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "no_regions")
    result = run_binary(
        workdir, "--config.distill.min_region_size=100000", "--allow_config_change"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(workdir)
    assert report["regions"] == []
    assert "min_region_size=100000" in report["notes"][0]
    assert "correction" not in report
    assert not os.path.exists(os.path.join(workdir, "regions"))


def test_class_absent_from_the_test_split(tmp_path):
    mnist = data.load_dataset("mnist5k")
    keep = mnist.test_labels != 9
    path = tmp_path / "no_nines_in_test.npz"
    np.savez(
        path,
        train_images=mnist.train_images[:1500],
        train_labels=mnist.train_labels[:1500],
        test_images=mnist.test_images[keep],
        test_labels=mnist.test_labels[keep],
        class_names=np.array(mnist.class_names),
    )
    workdir = str(tmp_path / "run")
    result = run_binary(workdir, f"--config.dataset.name=npz:{path}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_report(workdir)
    assert report["dataset"]["num_classes"] == 10
    assert report["dataset"]["num_test"] == int(keep.sum())
    assert 0.0 <= report["classifier_test_accuracy"] <= 1.0


def test_given_classifier_is_audited_like_a_trained_one(finished_run, tmp_path):
    source, _ = finished_run
    workdir = copy_workdir(source, tmp_path / "given")
    config = mnist5k.get_config("test")
    cnn = models.CNN(
        10, tuple(config.classifier.features), config.classifier.hidden_dim
    )
    like = jax.eval_shape(
        lambda: cnn.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    )
    params = training.restore_params(
        os.path.join(source, "checkpoints", "classifier"), like
    )

    pipeline.run(
        config,
        workdir,
        allow_config_change=True,
        audited=pipeline.Classifier(classifier.make_apply_fn(cnn), params),
    )
    # The same params, given instead of trained, must give the same audit.
    report, reference = read_report(workdir), read_report(source)
    for key in (
        "classifier_test_accuracy",
        "search",
        "distill",
        "regions",
        "correction",
    ):
        assert report[key] == reference[key], key
