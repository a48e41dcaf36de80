"""The planted-bug benchmark of experiments/planted_bug.py, without its flags."""

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from defuse_jax import classifier, models, pipeline, planted, training
from defuse_jax.configuration import InputError


def restore_classifier(workdir: str, name: str, config: Any, dataset: Any) -> Any:
    """Return (apply_fn, params) of WORKDIR/checkpoints/NAME, or None when missing."""
    path = os.path.join(workdir, "checkpoints", name)
    if not os.path.isdir(path):
        return None
    cnn = models.CNN(
        dataset.num_classes,
        tuple(config.classifier.features),
        config.classifier.hidden_dim,
    )
    like = jax.eval_shape(
        lambda: (
            classifier.create_state(
                cnn,
                classifier.make_apply_fn(cnn),
                jax.random.key(0),
                dataset.image_shape,
                learning_rate=config.classifier.learning_rate,
            ).params
        )
    )
    return classifier.make_apply_fn(cnn), training.restore_params(path, like)


def evaluate_seed(
    config: Any,
    seed: int,
    out: str,
    *,
    quantile: float,
    fraction: float,
    source_class: int,
    target_class: int,
    min_precision: float,
    min_members: int,
    draw_report: bool,
    allow_config_change: bool = False,
) -> dict[str, Any]:
    """Plant the bug, run the pipeline and score its regions for one seed."""
    run_config = config.copy_and_resolve_references()
    with run_config.unlocked():
        run_config.seed = seed
        run_config.search_again.enabled = False
    dataset = pipeline.load_dataset(run_config)
    try:
        bug = planted.plant_bug(
            dataset,
            source_class=source_class,
            target_class=target_class,
            quantile=quantile,
            fraction=fraction,
            seed=seed,
        )
    except ValueError as error:
        raise InputError(str(error)) from None
    logging.info(
        "planted_bug: seed %d: %d light %d images (ink <= %.4f), %d relabelled as %d.",
        seed,
        int(bug.style.sum()),
        source_class,
        bug.threshold,
        int(bug.relabelled.sum()),
        target_class,
    )
    workdir = os.path.join(out, f"seed_{seed}")
    outputs = pipeline.run(
        run_config,
        workdir,
        dataset=bug.dataset,
        draw_report=draw_report,
        allow_config_change=allow_config_change,
    )

    flips = np.load(os.path.join(workdir, "flips.npz"))
    if run_config.identify.split == "train":
        source_style = bug.style
    else:
        source_style = planted.style_mask(
            dataset.test_images,
            dataset.test_labels,
            source_class=source_class,
            threshold=bug.threshold,
        )
    flip_is_style = source_style[flips["source_index"]]
    # With fewer than 2 flips the pipeline fits no mixture and writes no regions.
    scores = []
    if "run_id" in outputs:
        mixture = np.load(os.path.join(workdir, "mixture.npz"))
        regions = np.load(os.path.join(workdir, "regions.npz"))
        scores = planted.score_regions(
            flip_is_style, mixture["assignments"], regions["component"]
        )
    by_row = {entry["row"]: entry for entry in outputs.get("regions", [])}
    for entry in scores:
        region = by_row.get(entry["row"], {})
        entry["region"] = region.get("region", entry["row"])
        row = entry["row"]
        entry["confusion"] = (
            f"{int(regions['source_label'][row])} -> "
            f"{int(regions['predicted_label'][row])}"
        )
        entry["annotated_label"] = region.get("annotated_label")
    eligible = [entry for entry in scores if entry["members"] >= min_members]
    best = max(eligible, key=lambda e: (e["precision"], e["recall"]), default=None)

    result = {
        "seed": seed,
        "workdir": os.path.abspath(workdir),
        "threshold": bug.threshold,
        "style_train_images": int(bug.style.sum()),
        "relabelled": int(bug.relabelled.sum()),
        "classifier_test_accuracy": outputs["classifier_test_accuracy"],
        "num_flips": len(flip_is_style),
        "style_flips": int(flip_is_style.sum()),
        "regions": scores,
        "best_region": best,
        "found": bool(best is not None and best["precision"] >= min_precision),
    }
    result["held_out_style"] = held_out_accuracy(
        workdir, run_config, dataset, bug, source_class
    )
    return result


def held_out_accuracy(
    workdir: str, config: Any, dataset: Any, bug: planted.PlantedBug, source_class: int
) -> dict[str, Any]:
    """Accuracy on the test split's light and other source-class images, per model."""
    style = planted.style_mask(
        dataset.test_images,
        dataset.test_labels,
        source_class=source_class,
        threshold=bug.threshold,
    )
    other = (dataset.test_labels == source_class) & ~style
    result: dict[str, Any] = {
        "style_images": int(style.sum()),
        "other_images": int(other.sum()),
    }
    for name in ("classifier", "corrected", "baseline"):
        restored = restore_classifier(workdir, name, config, dataset)
        if restored is None:
            continue
        apply_fn, params = restored
        predicted = classifier.predict(apply_fn, params, dataset.test_images)
        correct = predicted == dataset.test_labels
        result[name] = {
            "style_accuracy": float(correct[style].mean()) if style.any() else None,
            "other_accuracy": float(correct[other].mean()) if other.any() else None,
        }
    return result


def markdown(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Format the per-seed table of the planted-bug benchmark as Markdown."""
    lines = [
        (
            f"Planted bug: {settings['fraction']:g} of the light {settings['source_class']}s "
            f"(ink in the lowest {settings['quantile']:g}) labelled "
            f"{settings['target_class']}. A region finds it with precision >= "
            f"{settings['min_precision']:g} and >= {settings['min_members']} flips."
        ),
        "",
        (
            "| seed | classifier test acc. (%) | light test images: acc. before → Defuse "
            "→ baseline (%) | other test images of the class: acc. (%) | flips from the "
            "sub-style / all | best region | its members | precision | recall | found |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def percent(value: Any) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    for result in results:
        held_out = result["held_out_style"]
        best = result["best_region"] or {}
        style_accuracy = " → ".join(
            percent(held_out.get(name, {}).get("style_accuracy"))
            for name in ("classifier", "corrected", "baseline")
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    str(result["seed"]),
                    percent(result["classifier_test_accuracy"]),
                    f"{style_accuracy} (n={held_out['style_images']})",
                    percent(held_out.get("classifier", {}).get("other_accuracy")),
                    f"{result['style_flips']} / {result['num_flips']}",
                    (
                        f"{best['region']} ({best['confusion']})"
                        if best
                        else "none"
                    ),
                    str(best.get("members", 0)),
                    percent(best.get("precision")),
                    percent(best.get("recall")),
                    "yes" if result["found"] else "no",
                ]
            )
            + " |"
        )
    found = sum(result["found"] for result in results)
    lines += ["", f"Found in {found} of {len(results)} seeds."]
    return "\n".join(lines) + "\n"
