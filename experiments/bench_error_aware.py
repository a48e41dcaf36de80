r"""Measure what the error-aware mixture changes on real flips.

Loads the flips of a finished run (`flips.npz` in its workdir) and holds out a fifth of
them. It fits the pipeline's Dirichlet-process mixture to the rest twice: on the codes
alone, and with each component also carrying distributions over source and predicted
label (`labels=` of `distill.fit_mixture`). For each fit it prints the regions kept
with the pipeline's thresholds and the share of flips they contain. It also prints
their confusion purity (the member-weighted fraction of flips whose source ->
predicted pair is the region's majority pair) and the held-out log-likelihood of the
codes alone, per flip.

    python -m experiments.bench_error_aware --flips=/tmp/defuse_mnist/flips.npz
"""

import json

import jax
import numpy as np
from absl import app, flags, logging

from defuse_jax import distill

_FLIPS = flags.DEFINE_string(
    "flips", None, "flips.npz of a finished run.", required=True
)
_COVARIANCE_TYPES = flags.DEFINE_list(
    "covariance_types", ["diag", "full"], "Covariance types to compare."
)
_TRUNCATION = flags.DEFINE_integer("truncation", 20, "Mixture truncation K.")
_MIN_WEIGHT = flags.DEFINE_float("min_weight", 0.02, "Smallest region weight.")
_MIN_SIZE = flags.DEFINE_integer("min_region_size", 20, "Smallest region size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split and the fits.")


def _confusion_purity(assignments, selected, source, predicted, num_classes):
    """Member-weighted share of flips with their region's majority confusion pair."""
    pairs = source * num_classes + predicted
    agreeing, total = 0, 0
    for component in selected:
        members = pairs[assignments == component]
        agreeing += np.bincount(members).max()
        total += members.size
    return agreeing / max(total, 1), total


def main(argv: list[str]) -> None:
    del argv
    with np.load(_FLIPS.value) as stored:
        codes = stored["codes"].astype(np.float32)
        source = stored["source_label"].astype(np.int32)
        predicted = stored["predicted_label"].astype(np.int32)
    num_classes = int(max(source.max(), predicted.max())) + 1

    rng = np.random.default_rng(_SEED.value)
    order = rng.permutation(len(codes))
    held_out, train = order[: len(codes) // 5], order[len(codes) // 5 :]
    logging.info(
        "%d flips (%d to fit, %d held out), %d classes.",
        len(codes),
        len(train),
        len(held_out),
        num_classes,
    )

    rows = []
    for covariance_type in _COVARIANCE_TYPES.value:
        for error_aware in (False, True):
            labels = (source[train], predicted[train], num_classes)
            mixture = distill.fit_mixture(
                codes[train],
                jax.random.key(_SEED.value),
                truncation=_TRUNCATION.value,
                covariance_type=covariance_type,
                labels=labels if error_aware else None,
            )
            assignments = np.asarray(distill.assign(mixture, codes[train], labels[:2]))
            selected = distill.select_regions(
                mixture,
                assignments,
                min_weight=_MIN_WEIGHT.value,
                min_size=_MIN_SIZE.value,
            )
            purity, covered = _confusion_purity(
                assignments, selected, source[train], predicted[train], num_classes
            )
            codes_only = mixture._replace(
                source_probs=mixture.source_probs[:, :0],
                predicted_probs=mixture.predicted_probs[:, :0],
            )
            held_out_loglik = float(
                jax.nn.logsumexp(
                    distill.log_likelihoods(codes_only, codes[held_out]), axis=1
                ).mean()
            )

            rows.append(
                {
                    "covariance": covariance_type,
                    "error_aware": error_aware,
                    "regions": len(selected),
                    "share_in_regions": covered / len(train),
                    "confusion_purity": purity,
                    "held_out_code_loglik": held_out_loglik,
                }
            )
            logging.info("%s", json.dumps(rows[-1]))

    print(
        "| covariance | error-aware | regions | share of flips in regions "
        "| confusion purity | held-out code log-lik / flip |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['covariance']} | {row['error_aware']} | {row['regions']} "
            f"| {row['share_in_regions']:.3f} | {row['confusion_purity']:.3f} "
            f"| {row['held_out_code_loglik']:.3f} |"
        )


if __name__ == "__main__":
    app.run(main)
