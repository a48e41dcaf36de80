"""Distillation: cluster misclassified latent codes with a Dirichlet-process mixture.

Defuse step 2 takes the latent codes whose decoded images the classifier gets wrong
and groups them into misclassification regions. Each region is one Gaussian component
of a truncated stick-breaking Dirichlet-process mixture (`defuse_jax.dpmixture`), fitted
by mean-field variational inference: coordinate ascent on the whole set of codes, or
natural-gradient stochastic variational inference on minibatches followed by
full-batch steps. Several restarts from k-means++ seeds run together under `vmap`, and
the fit with the best evidence lower bound (ELBO) wins. Callers later sample a region
as N(mean, tau * covariance).

The fit works on codes standardised per dimension. The returned `Mixture` has means
and covariances in the original units of the codes.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from defuse_jax import dpmixture
from defuse_jax.dpmixture import COVARIANCE_TYPES, Layout

__all__ = [
    "COVARIANCE_TYPES",
    "Mixture",
    "assign",
    "fit_mixture",
    "log_likelihoods",
    "merge_duplicates",
    "responsibilities",
    "select_regions",
]

# Codes per chunk of the E-step: it bounds the [chunk, K] and [chunk, F] temporaries.
_CHUNK_SIZE = 8192
# k-means++ seeds come from at most this many codes.
_SEEDING_SAMPLE = 50_000
# Above this many codes (without a batch size), restarts fit a sample of this size.
_SAMPLE_SIZE = 20_000
# Score bonus (in squared standardised distance) of a seed per label a code shares.
_LABEL_SEED_BONUS = 10.0
# Full-batch steps every restart takes before the best one continues alone.
_SCREEN_STEPS = 8
# Natural-gradient step size (step + _DELAY) ** -_FORGETTING (Hoffman et al., 2013).
_DELAY = 10.0
_FORGETTING = 0.7
# The minibatch phase ends once the smoothed ELBO estimate has not risen by more
# than the tolerance for this many steps.
_PATIENCE = 20
_SMOOTHING = 0.9
# Seconds between progress lines of a long fit.
_LOG_INTERVAL = 10.0


class Mixture(NamedTuple):
    """Fitted Gaussian mixture over latent codes, in the codes' original units.

    Attributes:
        weights: [K] expected mixing weights, non-negative and summing to 1.
        means: [K, L] component means.
        covariances: [K, L, L] component covariances (the inverse of the expected
            precision). Diagonal matrices for "diag" and "spherical" fits.
        elbo_trace: [T] ELBO of the winning restart after each full-batch step on
            all codes, in nats (with labels, their terms included). For more than
            20,000 codes or with `batch_size`, the steps on the sample and the
            minibatch steps come before it and are not in the trace.
        restart_elbos: [R] ELBO of every restart when the winner was chosen: after
            at most 8 full-batch steps, or at convergence on the sample.
        source_probs: [K, C] expected source-label distribution of each component;
            [K, 0] when the fit did not model labels.
        predicted_probs: [K, C] expected predicted-label distribution; [K, 0] likewise.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    elbo_trace: jax.Array
    restart_elbos: jax.Array
    source_probs: jax.Array
    predicted_probs: jax.Array


def fit_mixture(
    codes: jax.Array,
    key: jax.Array,
    *,
    truncation: int = 20,
    alpha: float = 1.0,
    alpha_prior: tuple[float, float] | None = None,
    covariance_type: str = "diag",
    max_steps: int = 500,
    tolerance: float = 1e-5,
    num_restarts: int = 4,
    batch_size: int | None = None,
    labels: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> Mixture:
    """Fit a truncated Dirichlet-process Gaussian mixture to latent codes.

    Each restart seeds the K components by k-means++ and assigns every code to its
    nearest seed. For at most 20,000 codes (and no smaller `batch_size`), all
    restarts take up to 8 coordinate-ascent steps together, and the one with the
    best ELBO continues until the ELBO rises by less than `tolerance` nats per code
    or `max_steps` is reached. For more codes, each restart is fitted to
    convergence on a random sample of 20,000 codes (or `batch_size`), because on a
    sample the stick-breaking prior empties duplicate components sooner. With
    `batch_size`, natural-gradient steps on minibatches of all codes then refine the
    best one until its smoothed ELBO estimate stops rising. Full-batch steps on every
    code finish the fit. After every step the components are renumbered by decreasing
    size, so the stick-breaking prior sees the largest first.

    The result is a deterministic function of the inputs on a given backend.

    NOTE: every new combination of code shape, truncation, covariance type,
    restarts, batch size and label classes compiles the fit again (a few seconds).

    Args:
        codes: [M, L] latent codes, finite, with M >= 2.
        key: JAX PRNG key for the seeds and the minibatches.
        truncation: K, the number of mixture components.
        alpha: Dirichlet-process concentration, > 0, when `alpha_prior` is None.
            Stick fractions have the prior Beta(1, alpha); a larger alpha spreads
            weight over more components.
        alpha_prior: (shape, rate) of a Gamma prior on alpha, both > 0, to infer
            alpha instead of fixing it.
        covariance_type: "full", "diag" or "spherical".
        max_steps: cap on the steps of each phase.
        tolerance: convergence threshold on the ELBO change per step, in nats per
            code, >= 0.
        num_restarts: number of k-means++ restarts fitted together.
        batch_size: size of the restarts' sample and of each minibatch step, or
            None for no minibatch steps. Every code is fitted either way.
        labels: (source_labels [M], predicted_labels [M], num_classes) to make each
            component also carry categorical distributions over the two labels
            (the error-aware mixture), or None.

    Returns:
        The fitted `Mixture` of the restart with the best ELBO.

    Raises:
        ValueError: if an argument has an invalid value. The message names it.
        TypeError: if a count is not an int.
        FloatingPointError: if the ELBO became non-finite.
    """
    codes = np.asarray(codes)
    _check_codes(codes)
    _check_fit_options(
        truncation,
        alpha,
        alpha_prior,
        covariance_type,
        max_steps,
        tolerance,
        num_restarts,
        batch_size,
    )
    if not np.issubdtype(codes.dtype, np.floating):
        codes = codes.astype(np.float32)
    num_codes, num_dims = codes.shape
    source, predicted, num_classes = _check_labels(labels, num_codes)
    layout = Layout(num_dims, covariance_type, num_classes)
    if batch_size is not None and batch_size >= num_codes:
        batch_size = None
    logging.info(
        "Fitting a Dirichlet-process mixture: %d codes of dimension %d, truncation "
        "%d, %s, %s covariances, %d restarts, %s, %s.",
        num_codes,
        num_dims,
        truncation,
        f"alpha ~ Gamma{tuple(alpha_prior)}" if alpha_prior else f"alpha {alpha:g}",
        covariance_type,
        num_restarts,
        f"minibatches of {batch_size}" if batch_size else "full batch",
        f"{num_classes} label classes" if num_classes else "no labels",
    )
    constant = np.flatnonzero(np.all(codes == codes[0], axis=0))
    if constant.size:
        logging.warning(
            "Codes are constant in dimensions %s; the prior alone sets their "
            "fitted variances.",
            constant.tolist(),
        )
    start = time.perf_counter()
    _PROGRESS.reset(start)
    fit = _fit(
        codes,
        source,
        predicted,
        key,
        float(alpha),
        tuple(float(v) for v in alpha_prior) if alpha_prior else (0.0, 0.0),
        float(tolerance),
        layout=layout,
        truncation=truncation,
        max_steps=max_steps,
        num_restarts=num_restarts,
        batch_size=batch_size,
    )
    mixture, num_steps, converged = jax.device_get(fit)
    trace = np.asarray(mixture.elbo_trace)[: int(num_steps)]
    mixture = mixture._replace(elbo_trace=trace)
    _check_elbo(trace, np.asarray(mixture.restart_elbos))
    if not converged:
        logging.warning(
            "The mixture fit stopped at max_steps=%d before the ELBO change fell "
            "below %g nats per code; raise max_steps for a converged fit.",
            max_steps,
            tolerance,
        )
    weights = np.asarray(mixture.weights)
    logging.info(
        "Fitted the mixture in %.2f s: %d full-batch steps, ELBO %.6g (restarts: "
        "%s), %d of %d components with weight >= 0.01.",
        time.perf_counter() - start,
        int(num_steps),
        float(trace[-1]),
        ", ".join(f"{v:.6g}" for v in np.asarray(mixture.restart_elbos)),
        np.count_nonzero(weights >= 0.01),
        truncation,
    )
    return mixture


class _Progress:
    """Host-side progress log of the running fit, called from the compiled loop."""

    def __init__(self):
        self.reset(time.perf_counter())

    def reset(self, start: float) -> None:
        self.start = start
        self.last = start

    def __call__(self, phase, restart, step, elbo, active, done) -> None:
        now = time.perf_counter()
        if bool(done) or now - self.last < _LOG_INTERVAL:
            return
        self.last = now
        logging.info(
            "mixture fit, %s phase: restart %d, step %d, ELBO %.6g, %d components "
            "hold >= 1%% of the codes (%.0f s).",
            ("minibatch", "full-batch")[int(phase)],
            int(restart),
            int(step),
            float(elbo),
            int(active),
            now - self.start,
        )


_PROGRESS = _Progress()


def _check_elbo(trace: np.ndarray, restart_elbos: np.ndarray) -> None:
    """Raise FloatingPointError if the winning trace or every restart is non-finite."""
    bad = np.flatnonzero(~np.isfinite(trace))
    if bad.size or not np.isfinite(restart_elbos).any():
        where = f"at full-batch step {bad[0] + 1}" if bad.size else "in every restart"
        raise FloatingPointError(
            f"distill: the ELBO became non-finite {where}; check the codes for "
            "extreme values (for example codes of a diverged VAE)."
        )


class _Data(NamedTuple):
    """Per-code features (`dpmixture.features`), padded to whole chunks of rows."""

    features: jax.Array  # [C, S, F]
    mask: jax.Array  # [C, S], 1 for a real code and 0 for padding

    def flat(self, num_codes: int) -> jax.Array:
        """Return the [M, F] features of the real codes, without the padding."""
        return self.features.reshape(-1, self.features.shape[-1])[:num_codes]


def _chunks(features: jax.Array) -> _Data:
    """Split [M, F] features into near-equal chunks of at most `_CHUNK_SIZE` rows."""
    num_codes = features.shape[0]
    num_chunks = -(-num_codes // _CHUNK_SIZE)
    chunk_size = -(-num_codes // num_chunks)
    pad = num_chunks * chunk_size - num_codes
    mask = jnp.pad(jnp.ones(num_codes, features.dtype), (0, pad))
    features = jnp.pad(features, ((0, pad), (0, 0)))
    return _Data(
        features.reshape(num_chunks, chunk_size, -1),
        mask.reshape(num_chunks, chunk_size),
    )


def _accumulate(
    data: _Data, weights: jax.Array, *, hard: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Sum responsibility-weighted features over all chunks.

    Args:
        data: chunked features.
        weights: [K, F] scores: each code's component scores are features @ weights.T.
        hard: give each code wholly to its best-scoring component (the seeding
            pass) instead of the softmax of the scores.

    Returns:
        Statistics [K, F] and the sum over codes of logsumexp of the scores, which
        is the data term of the ELBO when `weights` are the expected log densities.
    """
    num_components = weights.shape[0]

    def body(carry, chunk):
        stats, total = carry
        features, mask = chunk
        scores = features @ weights.T
        if hard:
            log_norm = jnp.zeros_like(mask)
            resp = jax.nn.one_hot(
                jnp.argmax(scores, axis=1), num_components, dtype=features.dtype
            )
        else:
            # One exp pass gives both the responsibilities and the normaliser.
            peak = jax.lax.stop_gradient(jnp.max(scores, axis=1, keepdims=True))
            unnormalized = jnp.exp(scores - peak)
            total_mass = jnp.sum(unnormalized, axis=1, keepdims=True)
            resp = unnormalized / total_mass
            log_norm = (peak + jnp.log(total_mass))[:, 0]
        resp = resp * mask[:, None]
        return (stats + resp.T @ features, total + jnp.sum(mask * log_norm)), None

    init = (
        jnp.zeros((num_components, weights.shape[1]), weights.dtype),
        jnp.zeros((), weights.dtype),
    )
    (stats, total), _ = jax.lax.scan(body, init, data)
    return stats, total


def _by_size(stats: jax.Array, layout: Layout) -> jax.Array:
    """Renumber the components by decreasing expected count (stable)."""
    counts = stats[:, layout.num_second + layout.num_dims]
    return stats[jnp.argsort(-counts, stable=True)]


def _seed_stats(
    key: jax.Array,
    codes: jax.Array,
    features: jax.Array,
    data: _Data,
    layout: Layout,
    truncation: int,
) -> jax.Array:
    """Statistics of a hard partition of the codes around k-means++ seeds.

    Args:
        key: PRNG key.
        codes: [M, L] standardised codes.
        features: [M, F] their features.
        data: the same features in chunks.
        layout: static shape of the fit.
        truncation: number of seeds K.
    """
    sample_key, seed_key = jax.random.split(key)
    num_codes = codes.shape[0]
    if num_codes > _SEEDING_SAMPLE:
        rows = jax.random.choice(sample_key, num_codes, (_SEEDING_SAMPLE,), False)
        codes, features = codes[rows], features[rows]
    chosen = _kmeans_plus_plus(seed_key, codes, truncation)
    seeds = codes[chosen]
    # argmax over k of 2 x.mu_k - |mu_k|^2 is the nearest seed.
    weights = jnp.zeros((truncation, layout.num_features), codes.dtype)
    second_end = layout.num_second
    labels_start = second_end + layout.num_dims + 1
    weights = weights.at[:, second_end : second_end + layout.num_dims].set(2.0 * seeds)
    weights = weights.at[:, labels_start - 1].set(-jnp.sum(seeds * seeds, axis=1))
    if layout.num_classes:
        # Codes prefer seeds with their own labels. Without this, components that
        # share a cloud of codes start with the same label mix, and coordinate
        # ascent cannot tell them apart.
        weights = weights.at[:, labels_start:].set(
            _LABEL_SEED_BONUS * features[chosen, labels_start:]
        )
    stats, _ = _accumulate(data, weights, hard=True)
    return _by_size(stats, layout)


class _Options(NamedTuple):
    layout: Layout
    alpha: float
    alpha_prior: tuple[float, float]
    tolerance: float
    num_codes: int
    max_steps: int


def _update(
    stats: jax.Array, options: _Options, data: _Data, data_scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Take one coordinate-ascent step on `data`.

    Args:
        stats: [K, F] statistics that define the current posterior.
        options: the fit's options.
        data: the codes of this step: all of them, or a minibatch.
        data_scale: number of codes in the fit per code in `data`.

    Returns:
        The [K, F] statistics of `data` under the current posterior, and the ELBO
        of that posterior (estimated from `data` when it is a minibatch).
    """
    post = dpmixture.posterior(
        stats, options.layout, options.alpha, options.alpha_prior
    )
    new_stats, data_term = _accumulate(
        data, dpmixture.coefficients(post, options.layout)
    )
    elbo = data_scale * data_term - dpmixture.kl_divergence(
        post, options.layout, options.alpha_prior
    )
    return new_stats, elbo


def _active(stats: jax.Array, options: _Options) -> jax.Array:
    counts = stats[:, options.layout.num_second + options.layout.num_dims]
    return jnp.sum(counts >= 0.01 * options.num_codes)


def _log(phase: int, restart, step, elbo, active, done) -> None:
    jax.debug.callback(_PROGRESS, phase, restart, step, elbo, active, done)


class _Loop(NamedTuple):
    """State of the full-batch loop."""

    step: jax.Array
    stats: jax.Array
    elbo: jax.Array
    trace: jax.Array
    done: jax.Array


def _start(stats: jax.Array, max_steps: int) -> _Loop:
    return _Loop(
        jnp.zeros((), jnp.int32),
        stats,
        jnp.asarray(-jnp.inf, stats.dtype),
        jnp.full(max_steps, jnp.nan, stats.dtype),
        jnp.zeros((), bool),
    )


def _full_batch(
    state: _Loop, limit: int, restart: jax.Array, options: _Options, data: _Data
) -> _Loop:
    """Coordinate ascent until the ELBO settles or `limit` steps have run in all."""
    threshold = options.tolerance * options.num_codes

    def cond(state):
        return (state.step < limit) & ~state.done

    def body(state):
        new_stats, elbo = _update(state.stats, options, data)
        done = (jnp.abs(elbo - state.elbo) <= threshold) | ~jnp.isfinite(elbo)
        _log(1, restart, state.step + 1, elbo, _active(new_stats, options), done)
        return _Loop(
            state.step + 1,
            _by_size(new_stats, options.layout),
            elbo,
            state.trace.at[state.step].set(elbo),
            done,
        )

    return jax.lax.while_loop(cond, body, state)


def _best(elbos: jax.Array) -> jax.Array:
    return jnp.argmax(jnp.where(jnp.isfinite(elbos), elbos, -jnp.inf))


def _minibatch(
    stats: jax.Array,
    key: jax.Array,
    restart: jax.Array,
    options: _Options,
    features: jax.Array,
    batch_size: int,
):
    """Natural-gradient steps on minibatches until the smoothed ELBO stops rising."""
    scale = options.num_codes / batch_size
    threshold = options.tolerance * options.num_codes

    def cond(state):
        step, _, _, _, _, since_best = state
        return (step < options.max_steps) & (since_best < _PATIENCE)

    def body(state):
        step, stats, key, smoothed, best, since_best = state
        key, draw = jax.random.split(key)
        rows = jax.random.randint(draw, (batch_size,), 0, options.num_codes)
        batch = _Data(features[rows][None], jnp.ones((1, batch_size), features.dtype))
        batch_stats, estimate = _update(stats, options, batch, scale)
        smoothed = jnp.where(
            step == 0, estimate, _SMOOTHING * smoothed + (1 - _SMOOTHING) * estimate
        )
        improved = smoothed > best + threshold
        best = jnp.where(improved, smoothed, best)
        since_best = jnp.where(jnp.isfinite(estimate), since_best + 1, _PATIENCE)
        since_best = jnp.where(improved, 0, since_best)
        step_size = (step + _DELAY) ** -_FORGETTING
        stats = (1 - step_size) * stats + step_size * scale * batch_stats
        _log(
            0,
            restart,
            step + 1,
            smoothed,
            _active(stats, options),
            since_best >= _PATIENCE,
        )
        return (
            step + 1,
            _by_size(stats, options.layout),
            key,
            smoothed,
            best,
            since_best,
        )

    dtype = stats.dtype
    init = (
        jnp.zeros((), jnp.int32),
        stats,
        key,
        jnp.zeros((), dtype),
        jnp.asarray(-jnp.inf, dtype),
        jnp.zeros((), jnp.int32),
    )
    _, stats, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    return stats


@functools.partial(
    jax.jit,
    static_argnames=(
        "layout",
        "alpha_prior",
        "truncation",
        "max_steps",
        "num_restarts",
        "batch_size",
    ),
)
def _fit(
    codes: jax.Array,
    source: jax.Array,
    predicted: jax.Array,
    key: jax.Array,
    alpha: float,
    alpha_prior: tuple[float, float],
    tolerance: float,
    *,
    layout: Layout,
    truncation: int,
    max_steps: int,
    num_restarts: int,
    batch_size: int | None,
) -> tuple[Mixture, jax.Array, jax.Array]:
    """Standardise, fit every restart, keep the best and map it back to code units."""
    center = jnp.mean(codes, axis=0)
    # A constant dimension keeps unit scale instead of dividing by zero or by the
    # rounding error of its mean.
    constant = jnp.all(codes == codes[0], axis=0)
    scale = jnp.where(constant, 1.0, jnp.std(codes, axis=0))
    if layout.covariance_type == "spherical":
        # One scale for every dimension keeps spherical clusters spherical.
        scale = jnp.full_like(scale, jnp.sqrt(jnp.mean(jnp.var(codes, axis=0))))
        scale = jnp.where(scale > 0, scale, 1.0)
    standardized = (codes - center) / scale
    num_codes = codes.shape[0]
    data = _chunks(dpmixture.features(standardized, source, predicted, layout))
    options = _Options(layout, alpha, alpha_prior, tolerance, num_codes, max_steps)

    sample_key, batch_key, key = jax.random.split(key, 3)
    keys = jax.random.split(key, num_restarts)
    restarts = jnp.arange(num_restarts)
    sample_size = batch_size or _SAMPLE_SIZE
    if num_codes <= sample_size:
        # Every restart runs a few steps; the best then runs to convergence alone.
        seeded = jax.vmap(
            lambda k: _seed_stats(
                k, standardized, data.flat(num_codes), data, layout, truncation
            )
        )(keys)
        states = jax.vmap(
            lambda s, r: _full_batch(
                _start(s, max_steps), min(_SCREEN_STEPS, max_steps), r, options, data
            )
        )(seeded, restarts)
        elbos = states.elbo
        best = _best(elbos)
        state = jax.tree.map(lambda leaf: leaf[best], states)
    else:
        # Every restart fits a random sample of codes to convergence. On a sample,
        # the stick-breaking prior weighs more against the likelihood and empties
        # duplicate components in fewer steps than on all codes. With `batch_size`,
        # natural-gradient steps on minibatches of all codes refine the best fit;
        # full-batch steps on all codes finish it in either case.
        rows = jax.random.choice(sample_key, num_codes, (sample_size,), replace=False)
        flat = data.flat(num_codes)
        sample = _chunks(flat[rows])
        sample_options = options._replace(num_codes=sample_size)
        seeded = jax.vmap(
            lambda k: _seed_stats(
                k, standardized[rows], flat[rows], sample, layout, truncation
            )
        )(keys)
        states = jax.vmap(
            lambda s, r: _full_batch(
                _start(s, max_steps), max_steps, r, sample_options, sample
            )
        )(seeded, restarts)
        elbos = states.elbo
        best = _best(elbos)
        stats = states.stats[best] * (num_codes / sample_size)
        if batch_size:
            stats = _minibatch(stats, batch_key, best, options, flat, batch_size)
        state = _start(stats, max_steps)
    state = _full_batch(state, max_steps, best, options, data)
    stats, trace, steps, done = state.stats, state.trace, state.step, state.done

    post = dpmixture.posterior(stats, layout, alpha, alpha_prior)
    if layout.covariance_type == "full":
        covariances = post.scatter / post.dof[:, None, None]
    else:
        variances = post.scatter / post.dof[:, None]
        variances = jnp.broadcast_to(variances, post.mean.shape)
        covariances = jax.vmap(jnp.diag)(variances)
    mixture = Mixture(
        weights=dpmixture.expected_weights(post),
        means=center + scale * post.mean,
        # The outer product is exactly symmetric, so the covariances stay so.
        covariances=covariances * jnp.outer(scale, scale),
        elbo_trace=trace,
        restart_elbos=elbos,
        source_probs=post.source / jnp.sum(post.source, axis=1, keepdims=True),
        predicted_probs=post.predicted / jnp.sum(post.predicted, axis=1, keepdims=True),
    )
    return mixture, steps, done


@functools.partial(jax.jit, static_argnames=("num_seeds",))
def _kmeans_plus_plus(key: jax.Array, points: jax.Array, num_seeds: int) -> jax.Array:
    """Choose [num_seeds] row indices of `points` by k-means++ seeding.

    The first seed is uniform over the points. Each further seed is drawn with
    probability proportional to the squared distance to its nearest chosen seed.
    When every point coincides with a seed, the draw is uniform.
    """
    first_key, key = jax.random.split(key)
    first = jax.random.randint(first_key, (), 0, points.shape[0])
    squared_distances = jnp.sum((points - points[first]) ** 2, axis=-1)
    seeds = jnp.zeros(num_seeds, jnp.int32).at[0].set(first)

    def choose_seed(i, state):
        seeds, squared_distances, key = state
        key, draw_key = jax.random.split(key)
        total = jnp.sum(squared_distances)
        logits = jnp.where(total > 0, jnp.log(squared_distances), 0.0)
        seed = jax.random.categorical(draw_key, logits)
        new_distances = jnp.sum((points - points[seed]) ** 2, axis=-1)
        squared_distances = jnp.minimum(squared_distances, new_distances)
        return seeds.at[i].set(seed), squared_distances, key

    seeds, _, _ = jax.lax.fori_loop(
        1, num_seeds, choose_seed, (seeds, squared_distances, key)
    )
    return seeds


def log_likelihoods(
    mixture: Mixture,
    codes: jax.Array,
    labels: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Compute log w_k + log N(x | mean_k, covariance_k) for every code and component.

    Args:
        mixture: fitted mixture with K components of dimension L.
        codes: [M, L] codes in the units of `mixture`.
        labels: optional (source_labels [M], predicted_labels [M]). With an
            error-aware mixture, their log probabilities under each component are
            added; otherwise they are ignored.

    Returns:
        [M, K] joint log densities of each code and component.

    Raises:
        ValueError: if `codes` is not [M, L] with the mixture's L.
    """
    codes = jnp.asarray(codes)
    _check_codes_match(mixture, codes)
    covariances = np.asarray(mixture.covariances)
    diagonal = np.eye(covariances.shape[-1], dtype=bool)
    is_diagonal = not np.any(covariances[..., ~diagonal])
    joint = _mixture_log_likelihoods(
        mixture.weights,
        mixture.means,
        mixture.covariances,
        codes,
        covariance_type="diag" if is_diagonal else "full",
    )
    if labels is not None and np.asarray(mixture.source_probs).shape[-1]:
        source, predicted = (jnp.asarray(v) for v in labels)
        joint = (
            joint
            + jnp.log(jnp.asarray(mixture.source_probs))[:, source].T
            + jnp.log(jnp.asarray(mixture.predicted_probs))[:, predicted].T
        )
    return joint


def responsibilities(
    mixture: Mixture,
    codes: jax.Array,
    labels: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Compute the [M, K] posterior probability of each component for each code.

    Arguments are those of `log_likelihoods`. Each row sums to 1.
    """
    return jax.nn.softmax(log_likelihoods(mixture, codes, labels), axis=-1)


def assign(
    mixture: Mixture,
    codes: jax.Array,
    labels: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Assign each code to its most probable component: [M] int32 indices in [0, K).

    Arguments are those of `log_likelihoods`.
    """
    joint = log_likelihoods(mixture, codes, labels)
    return jnp.argmax(joint, axis=-1).astype(jnp.int32)


def merge_duplicates(
    mixture: Mixture,
    *,
    max_distance: float,
    groups: np.ndarray | None = None,
) -> tuple[Mixture, np.ndarray]:
    """Merge components that describe nearly the same Gaussian.

    Two components are near-duplicates when the Bhattacharyya distance between
    their Gaussians is at most `max_distance` (0 for identical Gaussians; 0.125
    for two unit-variance Gaussians one standard deviation apart in one dimension).
    Near-duplicate pairs are merged transitively. A merged component has the
    summed weight and the mean and covariance of the weighted mixture of its parts
    (moment matching). Its label distributions are the weighted average of theirs.

    Args:
        mixture: fitted mixture with K components.
        max_distance: largest Bhattacharyya distance at which two components merge,
            >= 0. 0 merges only identical components.
        groups: optional [K] integer group of each component (for example its
            majority source -> predicted label pair); only components of the same
            group merge.

    Returns:
        The merged mixture with K' <= K components, ordered by their smallest
        original index, and [K] int64 `mapping` from old to new component index.
        Its elbo_trace and restart_elbos are those of the input.

    Raises:
        ValueError: if `max_distance` is negative or `groups` is not [K].
    """
    weights = np.asarray(mixture.weights, np.float64)
    means = np.asarray(mixture.means, np.float64)
    covariances = np.asarray(mixture.covariances, np.float64)
    num_components = weights.shape[0]
    if not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}.")
    if groups is None:
        groups = np.zeros(num_components, np.int64)
    groups = np.asarray(groups)
    if groups.shape != (num_components,):
        raise ValueError(
            f"groups must have shape ({num_components},), one entry per component, "
            f"got {groups.shape}."
        )

    distance = _bhattacharyya(means, covariances)
    close = (distance <= max_distance) & (groups[:, None] == groups[None, :])
    parent = np.arange(num_components)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(close, k=1))):
        first, second = sorted((root(i), root(j)))
        parent[second] = first
    roots = np.array([root(i) for i in range(num_components)])
    _, mapping = np.unique(roots, return_inverse=True)

    merged = {
        name: [] for name in ("weights", "means", "covariances", "source", "pred")
    }
    source = np.asarray(mixture.source_probs, np.float64)
    predicted = np.asarray(mixture.predicted_probs, np.float64)
    for new in range(mapping.max() + 1):
        parts = np.flatnonzero(mapping == new)
        total = weights[parts].sum()
        share = (
            weights[parts] / total if total > 0 else np.full(len(parts), 1 / len(parts))
        )
        mean = share @ means[parts]
        offsets = means[parts] - mean
        merged["weights"].append(total)
        merged["means"].append(mean)
        merged["covariances"].append(
            np.einsum("p,pij->ij", share, covariances[parts])
            + np.einsum("p,pi,pj->ij", share, offsets, offsets)
        )
        merged["source"].append(share @ source[parts])
        merged["pred"].append(share @ predicted[parts])
    sizes = np.bincount(mapping)
    if np.any(sizes > 1):
        logging.info(
            "Merged %d near-duplicate components (Bhattacharyya distance <= %g) "
            "into %d.",
            int(sizes[sizes > 1].sum()),
            max_distance,
            int(np.count_nonzero(sizes > 1)),
        )
    dtype = np.asarray(mixture.means).dtype
    result = mixture._replace(
        weights=np.asarray(merged["weights"], dtype),
        means=np.asarray(merged["means"], dtype),
        covariances=np.asarray(merged["covariances"], dtype),
        source_probs=np.asarray(merged["source"], dtype).reshape(
            len(merged["weights"]), source.shape[1]
        ),
        predicted_probs=np.asarray(merged["pred"], dtype).reshape(
            len(merged["weights"]), predicted.shape[1]
        ),
    )
    return result, mapping.astype(np.int64)


def _bhattacharyya(means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """[K, K] Bhattacharyya distances between Gaussian components."""
    average = 0.5 * (covariances[:, None] + covariances[None, :])
    difference = means[:, None] - means[None, :]
    solved = np.linalg.solve(average, difference[..., None])[..., 0]
    _, log_det_average = np.linalg.slogdet(average)
    _, log_det = np.linalg.slogdet(covariances)
    return 0.125 * np.sum(difference * solved, axis=-1) + 0.5 * (
        log_det_average - 0.5 * (log_det[:, None] + log_det[None, :])
    )


def select_regions(
    mixture: Mixture,
    assignments: jax.Array,
    *,
    min_weight: float,
    min_size: int,
) -> np.ndarray:
    """Select the components that are large enough to count as regions.

    Args:
        mixture: fitted mixture with K components.
        assignments: [M] component index of each code, e.g. from `assign`.
        min_weight: smallest mixing weight a region may have.
        min_size: smallest number of assigned codes a region may have.

    Returns:
        [R] int64 indices of the components with weight >= `min_weight` and at
        least `min_size` assigned codes, sorted by weight in descending order
        (ties keep index order).

    Raises:
        ValueError: if `assignments` is not a 1-D integer array with values
            in [0, K), or if `min_weight` or `min_size` is negative.
    """
    weights = np.asarray(mixture.weights)
    num_components = weights.shape[0]
    assignments = np.asarray(assignments)
    if assignments.ndim != 1 or not np.issubdtype(assignments.dtype, np.integer):
        raise ValueError(
            "assignments must be a 1-D integer array of component indices, got "
            f"shape {assignments.shape} and dtype {assignments.dtype}. Pass the "
            "output of assign()."
        )
    if assignments.size and (
        assignments.min() < 0 or assignments.max() >= num_components
    ):
        raise ValueError(
            f"assignments must lie in [0, {num_components}), got values from "
            f"{assignments.min()} to {assignments.max()}. Pass component indices "
            "of this mixture."
        )
    if not min_weight >= 0:
        raise ValueError(f"min_weight must be >= 0, got {min_weight}.")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}.")

    sizes = np.bincount(assignments, minlength=num_components)
    selected = np.flatnonzero((weights >= min_weight) & (sizes >= min_size))
    order = np.argsort(-weights[selected], kind="stable")
    return selected[order]


# --- Input checks -----------------------------------------------------------


def _check_codes(codes: np.ndarray) -> None:
    if codes.ndim != 2:
        raise ValueError(
            f"codes must be a 2-D array [num_codes, latent_dim], got shape "
            f"{codes.shape}. Reshape the codes to one row per code."
        )
    if codes.shape[1] < 1:
        raise ValueError(
            f"codes must have at least one latent dimension, got shape {codes.shape}."
        )
    if codes.shape[0] < 2:
        raise ValueError(
            f"codes must contain at least 2 codes to fit a mixture, got "
            f"{codes.shape[0]}. Collect more misclassified codes."
        )
    finite_rows = np.all(np.isfinite(codes), axis=1)
    if not finite_rows.all():
        num_bad = codes.shape[0] - np.count_nonzero(finite_rows)
        first = int(np.flatnonzero(~finite_rows)[0])
        raise ValueError(
            f"codes must be finite, but {num_bad} of {codes.shape[0]} rows contain "
            f"NaN or infinity (the first is row {first}). Drop or repair those rows "
            "first."
        )


def _check_count(name: str, value, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.{hint}")


def _check_fit_options(
    truncation,
    alpha,
    alpha_prior,
    covariance_type,
    max_steps,
    tolerance,
    num_restarts,
    batch_size,
) -> None:
    _check_count(
        "truncation",
        truncation,
        1,
        " Pass the maximum number of components to fit, e.g. 20.",
    )
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(
            f"alpha must be a finite number > 0, got {alpha}. 1.0 is a common choice."
        )
    if alpha_prior is not None and not (
        len(alpha_prior) == 2 and all(math.isfinite(v) and v > 0 for v in alpha_prior)
    ):
        raise ValueError(
            "alpha_prior must be None or (shape, rate) with both finite and > 0, got "
            f"{alpha_prior!r}. For example (1.0, 1.0)."
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got "
            f"{covariance_type!r}."
        )
    _check_count("max_steps", max_steps, 1)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(
            f"tolerance must be a finite number >= 0 (nats per code), got "
            f"{tolerance}. For example 1e-5."
        )
    _check_count("num_restarts", num_restarts, 1)
    if batch_size is not None:
        _check_count("batch_size", batch_size, 1, " Or pass None for full batches.")


def _check_labels(labels, num_codes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate (source, predicted, num_classes); zeros and 0 classes when None."""
    if labels is None:
        zeros = np.zeros(num_codes, np.int32)
        return zeros, zeros, 0
    source, predicted, num_classes = labels
    _check_count("labels[2] (num_classes)", num_classes, 2)
    checked = []
    for name, values in (("source", source), ("predicted", predicted)):
        values = np.asarray(values)
        if values.shape != (num_codes,) or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"{name} labels must be integers of shape ({num_codes},), one per "
                f"code, got shape {values.shape} and dtype {values.dtype}."
            )
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} labels must lie in [0, {num_classes}), got values from "
                f"{values.min()} to {values.max()}. Pass the number of classes as "
                "labels[2]."
            )
        checked.append(values.astype(np.int32))
    return checked[0], checked[1], int(num_classes)


def _check_codes_match(mixture: Mixture, codes: jax.Array) -> None:
    num_dims = mixture.means.shape[-1]
    if codes.ndim != 2 or codes.shape[1] != num_dims:
        raise ValueError(
            f"codes must have shape [num_codes, {num_dims}] to match the mixture, "
            f"got {codes.shape}."
        )


@functools.partial(jax.jit, static_argnames=("covariance_type",))
def _mixture_log_likelihoods(
    weights: jax.Array,
    means: jax.Array,
    covariances: jax.Array,
    codes: jax.Array,
    covariance_type: str,
) -> jax.Array:
    """Compute [M, K] log w_k + log N(x | k) with the matrix-product form.

    The codes and components are first shifted and scaled by the mixture's own
    overall mean and per-dimension spread, which keeps the expanded quadratic
    well conditioned for codes far from the origin. The log-Jacobian of that
    scaling is then added back.
    """
    variances = jnp.diagonal(covariances, axis1=-2, axis2=-1)
    center = jnp.sum(weights[:, None] * means, axis=0)
    spread = jnp.sum(weights[:, None] * (variances + (means - center) ** 2), axis=0)
    scale = jnp.sqrt(spread)
    scaled_means = (means - center) / scale

    if covariance_type == "diag":
        precisions = scale**2 / variances
        log_det = jnp.sum(jnp.log(precisions), axis=-1)
    else:
        scaled_covariances = covariances / (scale[:, None] * scale[None, :])
        cholesky = jnp.linalg.cholesky(scaled_covariances)
        identity = jnp.broadcast_to(
            jnp.eye(means.shape[-1], dtype=covariances.dtype), covariances.shape
        )
        precisions = jax.scipy.linalg.cho_solve((cholesky, True), identity)
        log_det = -2.0 * jnp.sum(
            jnp.log(jnp.diagonal(cholesky, axis1=-2, axis2=-1)), axis=-1
        )

    coefficients = dpmixture.gaussian_coefficients(
        jnp.log(weights), scaled_means, precisions, log_det, covariance_type
    )
    num_codes, num_dims = codes.shape
    unused = jnp.zeros(num_codes, jnp.int32)
    features = dpmixture.features(
        (codes - center) / scale, unused, unused, Layout(num_dims, covariance_type)
    )
    return features @ coefficients.T - jnp.sum(jnp.log(scale))
