r"""Benchmark defuse_jax's Dirichlet-process mixture against scikit-learn's.

Each setting plants a Gaussian mixture whose clusters have their own random full
covariance, and draws N training points and N / 5 held-out points from it in float32.
On that data it fits defuse_jax's `distill.fit_mixture` (truncation 100, once per
--covariance_types entry, with minibatches of --batch_size above 100,000 points) and
scikit-learn's `BayesianGaussianMixture` (100 components, Dirichlet-process prior,
max_iter=1000) with covariance types "full" and "diag". A "planted" row scores the
true mixture as a reference.

Each row gives the wall time of the fit call in seconds, the adjusted Rand index of
the hard assignments of the training points against the planted labels, the number
of components with weight > 0.01 and the mean held-out log-likelihood per point in
nats. The defuse_jax time includes compilation, because the JAX caches are cleared
first. Its "warm" time comes from a second fit with the same shapes and another key.

Settings run in increasing N. Before each scikit-learn fit, the script estimates its
time by scaling linearly in N the time of the same covariance type on the largest
setting fitted so far, or of a fit on a 10,000-point subsample when there is none.
The estimate ignores changes in dimension and iteration count. A fit whose estimate
exceeds --sklearn_time_cap is skipped, with the estimate in the notes.

    python -m experiments.bench_distill
    python -m experiments.bench_distill --settings=n1m_d15_k8 \
        --output_jsonl=/tmp/bench_distill.jsonl
    python -m experiments.bench_distill --settings=tiny_d5_k3
"""

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture

from defuse_jax import distill


class Setting(NamedTuple):
    """Sizes and cluster spacing of a planted mixture."""

    num_points: int
    dim: int
    num_clusters: int
    centre_scale: float  # Standard deviation of the cluster centres around 0.
    imbalanced: bool = False  # Cluster weights proportional to 2^-i, else equal.


# Each cluster's standard deviations along its principal axes are log-uniform in this
# range, so covariance condition numbers stay below (1.0 / 0.3) ** 2, about 11.
_AXIS_STD_RANGE = (0.3, 1.0)

# Centres ~ N(0, 4^2 I) lie about 4 * sqrt(2 D) apart, far beyond the cluster spread.
# In n30k_d10_k20_overlap, centres ~ N(0, I) overlap, and the planted mixture itself
# reaches an adjusted Rand index of 0.95 to 0.98 with seeds 0 to 2.
SETTINGS = {
    "tiny_d5_k3": Setting(2_000, 5, 3, 4.0),
    "n10k_d15_k8": Setting(10_000, 15, 8, 4.0),
    "n10k_d15_k8_imbalanced": Setting(10_000, 15, 8, 4.0, imbalanced=True),
    "n30k_d10_k20_overlap": Setting(30_000, 10, 20, 1.0),
    "n100k_d15_k8": Setting(100_000, 15, 8, 4.0),
    "n1m_d15_k8": Setting(1_000_000, 15, 8, 4.0),
}
# Training points [N, D], their planted labels [N] and held-out points [N / 5, D].
Data = tuple[np.ndarray, np.ndarray, np.ndarray]
_TRUNCATION = 100
_FULL_BATCH_LIMIT = 100_000  # defuse_jax fits larger sets with minibatches.
_TIMING_SUBSAMPLE = 10_000
_SKLEARN_COVARIANCE_TYPES = ("full", "diag")

_SETTINGS = flags.DEFINE_list(
    "settings",
    [name for name in SETTINGS if name not in ("tiny_d5_k3", "n1m_d15_k8")],
    f"Comma-separated settings to run, from: {', '.join(SETTINGS)}.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data and of both fits.")
_COVARIANCE_TYPES = flags.DEFINE_list(
    "covariance_types",
    ["full", "diag"],
    "Covariance types of the defuse_jax fits; empty to skip defuse_jax.",
)
_SKLEARN_TIME_CAP = flags.DEFINE_float(
    "sklearn_time_cap",
    300.0,
    "Skip a scikit-learn fit whose estimated time exceeds this many seconds.",
)
_NUM_RESTARTS = flags.DEFINE_integer("num_restarts", 4, "defuse_jax restarts.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 500, "defuse_jax steps per phase.")
_TOLERANCE = flags.DEFINE_float(
    "tolerance", 1e-5, "defuse_jax convergence threshold in nats per point."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 20_000, "defuse_jax minibatch size above 100,000 points."
)
_OUTPUT_JSONL = flags.DEFINE_string(
    "output_jsonl", "", "File to write one JSON object per table row; empty for none."
)
flags.register_validator(
    "settings",
    lambda names: set(names) <= set(SETTINGS),
    f"--settings must name settings from: {', '.join(SETTINGS)}.",
)


class Planted(NamedTuple):
    """True mixture. Cluster k has covariance R_k diag(s_k^2) R_k^T.

    R_k is rotations[k] and s_k is scales[k].
    """

    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, D]
    rotations: np.ndarray  # [K, D, D], orthogonal
    scales: np.ndarray  # [K, D]


def plant_mixture(setting: Setting, rng: np.random.Generator) -> Planted:
    """Draw the cluster weights, centres and random full covariances of a setting."""
    k, d = setting.num_clusters, setting.dim
    if setting.imbalanced:
        weights = 2.0 ** -np.arange(k)
    else:
        weights = np.ones(k)
    means = rng.normal(0.0, setting.centre_scale, (k, d))
    rotations, _ = np.linalg.qr(rng.standard_normal((k, d, d)))
    low, high = np.log(_AXIS_STD_RANGE)
    scales = np.exp(rng.uniform(low, high, (k, d)))
    return Planted(weights / weights.sum(), means, rotations, scales)


def sample(
    planted: Planted, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return [N, D] float32 points drawn from the mixture and their [N] labels."""
    labels = rng.choice(len(planted.weights), size=num_points, p=planted.weights)
    noise = rng.standard_normal((num_points, planted.means.shape[1]))
    points = np.empty(noise.shape, np.float32)
    clusters = zip(planted.means, planted.rotations, planted.scales)
    for k, (mean, rotation, scale) in enumerate(clusters):
        members = labels == k
        points[members] = mean + (scale * noise[members]) @ rotation.T
    return points, labels


def planted_log_likelihoods(planted: Planted, points: np.ndarray) -> np.ndarray:
    """Return the [N, K] joint log densities log w_k + log N(x; mean_k, cov_k)."""
    points = points.astype(np.float64)
    columns = []
    for weight, mean, rotation, scale in zip(*planted):
        whitened = (points - mean) @ rotation / scale
        log_det = 2.0 * np.log(scale).sum()
        log_norm = log_det + len(mean) * math.log(2.0 * math.pi)
        squared = np.square(whitened).sum(axis=1)
        columns.append(math.log(weight) - 0.5 * (squared + log_norm))
    return np.stack(columns, axis=1)


def _fit_defuse(
    points: jax.Array, key: jax.Array, covariance_type: str, num_points: int
) -> distill.Mixture:
    """Fit defuse_jax's mixture. Every call of the fit API goes through here."""
    batch_size = None if num_points <= _FULL_BATCH_LIMIT else _BATCH_SIZE.value
    return distill.fit_mixture(
        points,
        key,
        truncation=_TRUNCATION,
        covariance_type=covariance_type,
        num_restarts=_NUM_RESTARTS.value,
        max_steps=_MAX_STEPS.value,
        tolerance=_TOLERANCE.value,
        batch_size=batch_size,
    )


def _timed(fit, *args):
    """Return fit(*args), once its JAX arrays are computed, and the seconds taken."""
    start = time.perf_counter()
    result = jax.block_until_ready(fit(*args))
    return result, time.perf_counter() - start


def bench_defuse(data: Data, covariance_type: str, key: jax.Array) -> dict:
    """Fit defuse_jax twice, first with empty JAX caches, and score the first fit."""
    train, labels, heldout = data
    points = jax.block_until_ready(jnp.asarray(train))
    cold_key, warm_key = jax.random.split(key)
    jax.clear_caches()
    mixture, seconds = _timed(
        _fit_defuse, points, cold_key, covariance_type, len(train)
    )
    _, warm_seconds = _timed(_fit_defuse, points, warm_key, covariance_type, len(train))

    assigned = np.asarray(distill.assign(mixture, points))
    log_joint = distill.log_likelihoods(mixture, jnp.asarray(heldout))
    notes = [f"{len(mixture.elbo_trace)} steps in the ELBO trace"]
    if len(train) > _FULL_BATCH_LIMIT:
        notes.append(f"minibatches of {_BATCH_SIZE.value}")
    return {
        "time_s": seconds,
        "warm_time_s": warm_seconds,
        "ari": adjusted_rand_score(labels, assigned),
        "num_components": int(np.sum(np.asarray(mixture.weights) > 0.01)),
        "heldout_loglik": float(jax.nn.logsumexp(log_joint, axis=1).mean()),
        "notes": ", ".join(notes),
    }


def _fit_sklearn(points: np.ndarray, covariance_type: str) -> BayesianGaussianMixture:
    model = BayesianGaussianMixture(
        n_components=_TRUNCATION,
        weight_concentration_prior_type="dirichlet_process",
        covariance_type=covariance_type,
        max_iter=1000,
        random_state=_SEED.value,
    )
    with warnings.catch_warnings():
        # Non-convergence goes into the notes column instead.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(points)


def bench_sklearn(data: Data, covariance_type: str, timings: dict) -> dict:
    """Fit scikit-learn unless its estimated time exceeds --sklearn_time_cap.

    `timings` maps a covariance type to (N, seconds) of its largest fit so far, and
    this function updates it.
    """
    train, labels, heldout = data
    notes = []
    if covariance_type not in timings and len(train) > _TIMING_SUBSAMPLE:
        rng = np.random.default_rng(_SEED.value)
        subsample = train[rng.choice(len(train), _TIMING_SUBSAMPLE, replace=False)]
        _, seconds = _timed(_fit_sklearn, subsample, covariance_type)
        timings[covariance_type] = (_TIMING_SUBSAMPLE, seconds)
        notes.append(f"timing fit on {_TIMING_SUBSAMPLE} points took {seconds:.1f} s")
    if covariance_type in timings:
        reference_points, reference_seconds = timings[covariance_type]
        estimate = reference_seconds * len(train) / reference_points
        if estimate > _SKLEARN_TIME_CAP.value:
            notes.append(
                f"estimated {estimate:.0f} s > cap {_SKLEARN_TIME_CAP.value:.0f} s"
            )
            return {"time_s": "skipped", "notes": ", ".join(notes)}

    model, seconds = _timed(_fit_sklearn, train, covariance_type)
    timings[covariance_type] = (len(train), seconds)
    converged = "converged" if model.converged_ else "not converged"
    notes.append(f"{converged} after {model.n_iter_} iterations")
    return {
        "time_s": seconds,
        "ari": adjusted_rand_score(labels, model.predict(train)),
        "num_components": int(np.sum(model.weights_ > 0.01)),
        "heldout_loglik": float(model.score(heldout)),
        "notes": ", ".join(notes),
    }


def bench_planted(data: Data, planted: Planted) -> dict:
    """Score the true mixture as a reference for the fits."""
    train, labels, heldout = data
    assigned = planted_log_likelihoods(planted, train).argmax(axis=1)
    log_joint = planted_log_likelihoods(planted, heldout)
    return {
        "ari": adjusted_rand_score(labels, assigned),
        "num_components": int(np.sum(planted.weights > 0.01)),
        "heldout_loglik": float(np.logaddexp.reduce(log_joint, axis=1).mean()),
    }


_COLUMNS = {
    "setting": "setting",
    "num_points": "N",
    "dim": "D",
    "num_clusters": "clusters",
    "method": "method",
    "time_s": "time (s)",
    "warm_time_s": "warm time (s)",
    "ari": "ARI",
    "num_components": "weights > 0.01",
    "heldout_loglik": "held-out log-lik / point",
    "notes": "notes",
}


def _format_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Return the rows as a markdown table with empty cells for missing values."""
    lines = ["| " + " | ".join(_COLUMNS.values()) + " |"]
    lines.append("|" + "---|" * len(_COLUMNS))
    for row in rows:
        cells = [_format_cell(row[column]) for column in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_setting(name: str, timings: dict) -> Iterator[dict]:
    """Generate the data of one setting and yield one table row per method."""
    setting = SETTINGS[name]
    # The data depend only on --seed and the setting's position in SETTINGS, not on
    # which other settings run.
    setting_index = list(SETTINGS).index(name)
    rng = np.random.default_rng([_SEED.value, setting_index])
    planted = plant_mixture(setting, rng)
    train, labels = sample(planted, setting.num_points, rng)
    heldout, _ = sample(planted, setting.num_points // 5, rng)
    data = (train, labels, heldout)
    key = jax.random.fold_in(jax.random.key(_SEED.value), setting_index)

    methods = [("planted", bench_planted, (data, planted))]
    for covariance_type in _COVARIANCE_TYPES.value:
        method = f"defuse_jax {covariance_type}"
        methods.append((method, bench_defuse, (data, covariance_type, key)))
    for covariance_type in _SKLEARN_COVARIANCE_TYPES:
        method = f"sklearn {covariance_type}"
        methods.append((method, bench_sklearn, (data, covariance_type, timings)))

    for method, bench, args in methods:
        logging.info("%s: starting %s on %d points.", name, method, len(train))
        # Every row has every column, with None where a method has no value.
        row = dict.fromkeys(_COLUMNS) | setting._asdict()
        row.update(setting=name, method=method, **bench(*args))
        logging.info("%s: finished %s: %s", name, method, row)
        yield row


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.info(
        "JAX %s, backend %s, devices %s, %d CPUs.",
        jax.__version__,
        jax.default_backend(),
        jax.devices(),
        os.cpu_count(),
    )
    names = sorted(_SETTINGS.value, key=lambda name: SETTINGS[name].num_points)
    timings = {}
    rows = []
    with contextlib.ExitStack() as stack:
        output = None
        if _OUTPUT_JSONL.value:
            output = stack.enter_context(open(_OUTPUT_JSONL.value, "w"))
        for name in names:
            for row in bench_setting(name, timings):
                rows.append(row)
                # Written as they come, so an interrupted run keeps its rows.
                if output:
                    output.write(json.dumps(row) + "\n")
                    output.flush()
    print(format_table(rows))


if __name__ == "__main__":
    app.run(main)
