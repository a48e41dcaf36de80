"""Distillation: cluster misclassified latent codes with a Dirichlet-process mixture.

Defuse step 2 takes the latent codes whose decoded images the classifier gets
wrong and groups them into misclassification regions. Each region is one
Gaussian component of a truncated stick-breaking Dirichlet-process mixture
fitted with NumPyro's SVI. Callers later sample a region as
N(mean, tau * covariance).

The fit works on codes standardised per dimension. The returned `Mixture`
contains means and covariances in the original units of the codes.
"""

from __future__ import annotations

import functools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from absl import logging
from numpyro.handlers import replay, seed
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.elbo import ELBO
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import log_density

COVARIANCE_TYPES = ("diag", "full")

# Priors, in units of the standardised codes (each dimension has mean 0 and
# standard deviation 1 across the codes being fitted).
#
# Component means ~ Normal(0, 3): three data standard deviations, so the prior
# barely moves a mean that any data supports.
_MEAN_PRIOR_SCALE = 3.0
# Component precisions get the conjugate Gamma ("diag") or Wishart ("full")
# prior with a small pseudo-count and a prior scatter of 0.01 (1% of the data
# variance) per dimension. For "diag", a component with n members of variance
# var then has a conditional posterior mean precision of
# (n + 2) / (n * var + 0.01). Clusters much tighter than the whole data set
# therefore stay nearly unbiased, but no component can collapse onto one or two
# codes, where the density would grow without bound.
_PRIOR_SCATTER = 0.01
# Gamma(concentration=1, rate=0.01 / 2) is the one-dimensional Wishart with
# two degrees of freedom and the same scatter.
_GAMMA_CONCENTRATION = 1.0
# Smallest variance used to initialise the component precisions, so that an
# initial partition with zero spread (fewer codes than components) still
# gives finite precisions.
_MIN_INITIAL_VARIANCE = 1e-4
# The Adam step size follows a cosine decay from `learning_rate` to this
# fraction of it at the last step.
_FINAL_LEARNING_RATE_FRACTION = 0.01
# Initial standard deviation of every AutoNormal factor, in unconstrained
# coordinates. A small value starts the fit close to the k-means++ point
# estimate, and the optimiser widens the factors where the data allow.
_GUIDE_INIT_SCALE = 0.01


class Mixture(NamedTuple):
    """Fitted Gaussian mixture over latent codes, in the codes' original units.

    Attributes:
        weights: [K] mixing weights, non-negative and summing to 1.
        means: [K, L] component means.
        covariances: [K, L, L] component covariance matrices. They are
            diagonal matrices when the fit used `covariance_type="diag"`.
        elbo_trace: [num_steps] evidence lower bound after each SVI step,
            estimated from one sample of the variational posterior.
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    elbo_trace: jax.Array


def fit_mixture(
    codes: jax.Array,
    key: jax.Array,
    *,
    truncation: int = 20,
    alpha: float = 1.0,
    covariance_type: str = "diag",
    num_steps: int = 2000,
    learning_rate: float = 0.05,
) -> Mixture:
    """Fit a truncated Dirichlet-process Gaussian mixture to latent codes.

    The model marginalises the component assignments and is fitted by SVI
    with an `AutoNormal` guide and Adam, starting from k-means++ seeds. The
    returned parameters are the medians of the variational posterior, mapped
    back to the units of `codes`. The result is a deterministic function of
    `codes`, `key` and the options on a given backend.

    NOTE: every new combination of code shape, `truncation`, `covariance_type`
    and `num_steps` compiles the SVI loop again. On a 2-core CPU this took
    about 7 to 15 s for 10,000 x 10 codes with K = 20, two to three times
    the run time of the 2,000 steps themselves.

    Args:
        codes: [M, L] latent codes, finite, with M >= 2.
        key: JAX PRNG key. It seeds the k-means++ initialisation and the
            Monte Carlo ELBO estimates.
        truncation: K, the number of mixture components (stick-breaking
            truncation level).
        alpha: Dirichlet-process concentration, > 0. Each stick fraction has
            the prior Beta(1, alpha), so a larger alpha spreads weight over
            more components.
        covariance_type: "diag" for diagonal covariances or "full" for full
            covariance matrices.
        num_steps: number of SVI steps.
        learning_rate: initial Adam step size, > 0. It decays along a cosine
            schedule to 1% of this value at the last step.

    Returns:
        The fitted `Mixture` with weights [K], means [K, L], covariances
        [K, L, L] and an ELBO trace [num_steps].

    Raises:
        ValueError: if an argument has an invalid value. The message names it.
        TypeError: if `truncation` or `num_steps` is not an int.
        FloatingPointError: if the ELBO became non-finite; the message names
            the first such SVI step.
    """
    codes = np.asarray(codes)
    _check_codes(codes)
    _check_fit_options(truncation, alpha, covariance_type, num_steps, learning_rate)
    if not np.issubdtype(codes.dtype, np.floating):
        codes = codes.astype(np.float32)

    num_codes, num_dims = codes.shape
    logging.info(
        "Fitting a Dirichlet-process mixture: %d codes of dimension %d, "
        "truncation %d, alpha %g, %s covariances, %d SVI steps.",
        num_codes,
        num_dims,
        truncation,
        alpha,
        covariance_type,
        num_steps,
    )
    constant = np.flatnonzero(np.all(codes == codes[0], axis=0))
    if constant.size:
        logging.warning(
            "Codes are constant in dimensions %s; the prior alone bounds their "
            "fitted variances.",
            constant.tolist(),
        )
    start = time.perf_counter()

    mixture = _fit(
        codes,
        key,
        alpha,
        learning_rate,
        truncation=truncation,
        covariance_type=covariance_type,
        num_steps=num_steps,
    )
    mixture = jax.block_until_ready(mixture)
    _check_elbo(np.asarray(mixture.elbo_trace), learning_rate)

    weights = np.asarray(mixture.weights)
    logging.info(
        "Fitted the mixture in %.2f s: final ELBO %.4g, %d of %d components "
        "with weight >= 0.01.",
        time.perf_counter() - start,
        float(mixture.elbo_trace[-1]),
        np.count_nonzero(weights >= 0.01),
        truncation,
    )
    return mixture


class _OrderedElbo(ELBO):
    """One-sample ELBO whose terms are summed in trace order.

    numpyro's Trace_ELBO sums the per-site terms in the order of a Python set, which
    follows the process's string hash seed. Its loss values then differ in the last bit
    from one process to the next, and so would the ELBO trace this module stores. This
    loss has the same value and gradients up to that rounding, in a fixed order.
    """

    def loss_with_mutable_state(
        self, rng_key, param_map, model, guide, *args, **kwargs
    ):
        model_seed, guide_seed = jax.random.split(rng_key)
        guide_log_density, guide_trace = log_density(
            seed(guide, guide_seed), args, kwargs, param_map
        )
        model_log_density, _ = log_density(
            replay(seed(model, model_seed), guide_trace), args, kwargs, param_map
        )
        return {"loss": guide_log_density - model_log_density, "mutable_state": None}


def _check_elbo(trace: np.ndarray, learning_rate: float) -> None:
    """Raise FloatingPointError naming the first SVI step whose ELBO is not finite."""
    bad = np.flatnonzero(~np.isfinite(trace))
    if bad.size:
        raise FloatingPointError(
            f"distill: the ELBO became {trace[bad[0]]} at SVI step {bad[0] + 1} of "
            f"{trace.size}; lower the learning rate (now {learning_rate:g}) or check "
            "the codes for extreme values."
        )


def log_likelihoods(mixture: Mixture, codes: jax.Array) -> jax.Array:
    """Compute log w_k + log N(x | mean_k, covariance_k) for every code and component.

    Args:
        mixture: fitted mixture with K components of dimension L.
        codes: [M, L] codes in the units of `mixture`.

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
    return _mixture_log_likelihoods(
        mixture.weights,
        mixture.means,
        mixture.covariances,
        codes,
        covariance_type="diag" if is_diagonal else "full",
    )


def responsibilities(mixture: Mixture, codes: jax.Array) -> jax.Array:
    """Compute the posterior probability of each component for each code.

    Args:
        mixture: fitted mixture with K components of dimension L.
        codes: [M, L] codes in the units of `mixture`.

    Returns:
        [M, K] responsibilities. Each row sums to 1.
    """
    return jax.nn.softmax(log_likelihoods(mixture, codes), axis=-1)


def assign(mixture: Mixture, codes: jax.Array) -> jax.Array:
    """Assign each code to its most probable component.

    Args:
        mixture: fitted mixture with K components of dimension L.
        codes: [M, L] codes in the units of `mixture`.

    Returns:
        [M] int32 component indices in [0, K).
    """
    return jnp.argmax(log_likelihoods(mixture, codes), axis=-1).astype(jnp.int32)


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
        raise ValueError(
            f"codes must be finite, but {num_bad} of {codes.shape[0]} rows contain "
            "NaN or infinity. Drop or repair those rows first."
        )


def _check_fit_options(
    truncation: int,
    alpha: float,
    covariance_type: str,
    num_steps: int,
    learning_rate: float,
) -> None:
    if isinstance(truncation, bool) or not isinstance(truncation, (int, np.integer)):
        raise TypeError(f"truncation must be an int, got {truncation!r}.")
    if truncation < 1:
        raise ValueError(
            f"truncation must be >= 1, got {truncation}. Pass the maximum number "
            "of components to fit, e.g. 20."
        )
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(
            f"alpha must be a finite number > 0, got {alpha}. 1.0 is a common choice."
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got "
            f"{covariance_type!r}."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {num_steps!r}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(
            f"learning_rate must be a finite number > 0, got {learning_rate}."
        )


def _check_codes_match(mixture: Mixture, codes: jax.Array) -> None:
    num_dims = mixture.means.shape[-1]
    if codes.ndim != 2 or codes.shape[1] != num_dims:
        raise ValueError(
            f"codes must have shape [num_codes, {num_dims}] to match the mixture, "
            f"got {codes.shape}."
        )


# --- Model --------------------------------------------------------------------


def _stick_breaking_log_weights(fractions: jax.Array) -> jax.Array:
    """Map [K - 1] stick fractions to [K] log weights. The last takes the rest."""
    log_fractions = jnp.concatenate([jnp.log(fractions), jnp.zeros(1, fractions.dtype)])
    log_remaining = jnp.concatenate(
        [jnp.zeros(1, fractions.dtype), jnp.cumsum(jnp.log1p(-fractions))]
    )
    return log_fractions + log_remaining


def _quadratic_features(codes: jax.Array, covariance_type: str) -> jax.Array:
    """Build the features whose linear map gives every Gaussian log density.

    For "diag" the features are [x^2, x, 1] ([M, 2L + 1]). For "full" they are
    [x_i x_j for i <= j, x, 1] ([M, L(L + 1)/2 + L + 1]). A [K, F] matrix from
    `_log_density_coefficients` then gives all M x K log densities in one
    matrix product without forming an [M, K, L] difference tensor.

    NOTE: the expanded quadratic loses precision by cancellation when codes lie
    far from a component mean relative to its width, so callers pass codes
    centred and scaled to about unit spread.
    """
    num_codes, num_dims = codes.shape
    if covariance_type == "diag":
        squares = codes * codes
    else:
        rows, cols = np.triu_indices(num_dims)
        squares = codes[:, rows] * codes[:, cols]
    ones = jnp.ones((num_codes, 1), codes.dtype)
    return jnp.concatenate([squares, codes, ones], axis=1)


def _log_density_coefficients(
    log_weights: jax.Array,
    means: jax.Array,
    precisions: jax.Array,
    log_det: jax.Array,
    covariance_type: str,
) -> jax.Array:
    """Build [K, F] coefficients so that features @ coefficients.T = log w + log N.

    Args:
        log_weights: [K] log mixing weights.
        means: [K, L] component means.
        precisions: [K, L] precisions for "diag", [K, L, L] precision matrices
            for "full".
        log_det: [K] log determinants of the precision matrices.
        covariance_type: "diag" or "full".

    Returns:
        The [K, F] coefficients matching `_quadratic_features`.
    """
    num_dims = means.shape[-1]
    if covariance_type == "diag":
        quadratic = -0.5 * precisions
        linear = precisions * means
    else:
        rows, cols = np.triu_indices(num_dims)
        # x^T P x = sum_i P_ii x_i^2 + 2 sum_{i<j} P_ij x_i x_j.
        multiplicity = np.where(rows == cols, 1.0, 2.0)
        quadratic = -0.5 * precisions[:, rows, cols] * multiplicity
        linear = jnp.einsum("kij,kj->ki", precisions, means)
    constant = (
        log_weights
        + 0.5 * log_det
        - 0.5 * jnp.sum(linear * means, axis=-1)
        - 0.5 * num_dims * math.log(2 * math.pi)
    )
    return jnp.concatenate([quadratic, linear, constant[:, None]], axis=1)


def _model(
    features: jax.Array,
    alpha: jax.Array,
    *,
    num_dims: int,
    truncation: int,
    covariance_type: str,
) -> None:
    """Truncated stick-breaking DP Gaussian mixture with marginalised assignments.

    Args:
        features: [M, F] output of `_quadratic_features` for standardised codes.
        alpha: scalar Dirichlet-process concentration.
        num_dims: L, the code dimension.
        truncation: K, the number of components.
        covariance_type: "diag" or "full".
    """
    dtype = features.dtype
    if truncation > 1:
        with numpyro.plate("sticks", truncation - 1):
            fractions = numpyro.sample("stick_fractions", dist.Beta(1.0, alpha))
        log_weights = _stick_breaking_log_weights(fractions)
    else:
        log_weights = jnp.zeros(1, dtype)

    with numpyro.plate("components", truncation):
        means = numpyro.sample(
            "means",
            dist.Normal(jnp.zeros(num_dims, dtype), _MEAN_PRIOR_SCALE).to_event(1),
        )
        if covariance_type == "diag":
            precisions = numpyro.sample(
                "precisions",
                dist.Gamma(
                    jnp.full(num_dims, _GAMMA_CONCENTRATION, dtype),
                    0.5 * _PRIOR_SCATTER,
                ).to_event(1),
            )
            log_det = jnp.sum(jnp.log(precisions), axis=-1)
        else:
            # The site is the lower Cholesky factor U of the precision matrix
            # P = U U^T, with a Wishart prior on P: rate matrix 0.01 * I and
            # L + 1 degrees of freedom (NumPyro 0.22 documents that
            # WishartCholesky needs a concentration above L). Parametrising the
            # precision rather than the covariance keeps the log density linear
            # in P, which the matrix-product form needs, and the Wishart rate
            # keeps P finite.
            precision_tril = numpyro.sample(
                "precision_tril",
                dist.WishartCholesky(
                    concentration=num_dims + 1.0,
                    scale_tril=jnp.eye(num_dims, dtype=dtype)
                    / math.sqrt(_PRIOR_SCATTER),
                ),
            )
            precisions = precision_tril @ jnp.swapaxes(precision_tril, -1, -2)
            log_det = 2.0 * jnp.sum(
                jnp.log(jnp.diagonal(precision_tril, axis1=-2, axis2=-1)), axis=-1
            )

    coefficients = _log_density_coefficients(
        log_weights, means, precisions, log_det, covariance_type
    )
    joint = features @ coefficients.T
    with numpyro.plate("data", features.shape[0]):
        numpyro.factor("log_likelihood", jax.nn.logsumexp(joint, axis=-1))


# --- Fit ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_seeds",))
def _kmeans_plus_plus(key: jax.Array, points: jax.Array, num_seeds: int) -> jax.Array:
    """Choose [num_seeds] row indices of `points` by k-means++ seeding.

    The first seed is uniform over the points. Each further seed is drawn with
    probability proportional to the squared distance to its nearest chosen
    seed. When every point coincides with a seed, the draw is uniform.
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


def _initial_values(
    key: jax.Array, codes: jax.Array, truncation: int, covariance_type: str
) -> dict[str, jax.Array]:
    """Initial site values: k-means++ means, pooled precisions, equal weights."""
    num_dims = codes.shape[1]
    means = codes[_kmeans_plus_plus(key, codes, truncation)]

    # One within-cluster spread shared by every component: the per-dimension
    # variance of the codes around their nearest seed, pooled over all seeds.
    squared_distances = (
        jnp.sum(codes * codes, axis=1)[:, None]
        - 2.0 * codes @ means.T
        + jnp.sum(means * means, axis=1)[None, :]
    )
    nearest = jnp.argmin(squared_distances, axis=1)
    variance = jnp.mean((codes - means[nearest]) ** 2, axis=0)
    variance = jnp.maximum(variance, _MIN_INITIAL_VARIANCE)

    values = {"means": means}
    if covariance_type == "diag":
        values["precisions"] = jnp.broadcast_to(1.0 / variance, (truncation, num_dims))
    else:
        values["precision_tril"] = jnp.broadcast_to(
            jnp.diag(1.0 / jnp.sqrt(variance)), (truncation, num_dims, num_dims)
        )
    if truncation > 1:
        # Fractions 1/K, 1/(K-1), ..., 1/2 give every component weight 1/K.
        values["stick_fractions"] = 1.0 / (
            truncation - jnp.arange(truncation - 1, dtype=codes.dtype)
        )
    return values


@functools.partial(
    jax.jit, static_argnames=("truncation", "covariance_type", "num_steps")
)
def _fit(
    codes: jax.Array,
    key: jax.Array,
    alpha: float,
    learning_rate: float,
    *,
    truncation: int,
    covariance_type: str,
    num_steps: int,
) -> Mixture:
    """Standardise the codes, run SVI and map the fit back to the codes' units."""
    center = jnp.mean(codes, axis=0)
    # A constant dimension keeps unit scale instead of dividing by zero or by
    # the rounding error of its mean.
    constant = jnp.all(codes == codes[0], axis=0)
    scale = jnp.where(constant, 1.0, jnp.std(codes, axis=0))
    standardized = (codes - center) / scale

    log_weights, means, precisions, losses = _fit_standardized(
        standardized,
        key,
        alpha,
        learning_rate,
        truncation=truncation,
        covariance_type=covariance_type,
        num_steps=num_steps,
    )
    covariances = _precision_to_covariance(precisions, covariance_type)
    return Mixture(
        weights=jnp.exp(log_weights),
        means=center + scale * means,
        # The outer product is exactly symmetric, so the covariances stay so.
        covariances=covariances * jnp.outer(scale, scale),
        elbo_trace=-losses,
    )


def _fit_standardized(
    codes: jax.Array,
    key: jax.Array,
    alpha: float,
    learning_rate: float,
    *,
    truncation: int,
    covariance_type: str,
    num_steps: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Run SVI on standardised codes.

    Returns:
        Log weights [K], means [K, L], precisions ([K, L] for "diag",
        [K, L, L] for "full") as variational posterior medians, and the
        [num_steps] SVI losses (negative ELBO).
    """
    init_key, svi_key = jax.random.split(key)
    num_dims = codes.shape[1]
    features = _quadratic_features(codes, covariance_type)
    model = functools.partial(
        _model,
        num_dims=num_dims,
        truncation=truncation,
        covariance_type=covariance_type,
    )

    # AutoNormal rather than AutoDelta. With marginalised assignments, splitting
    # one cluster's weight between two near-identical components leaves the
    # likelihood unchanged, and the MAP objective under Beta(1, alpha) sticks
    # does not penalise the split. A MAP fit therefore keeps most of the K
    # components. The variational posterior over each component's mean and
    # precision charges every used component a KL cost (an Occam penalty),
    # which empties the redundant components and leaves about one per cluster.
    guide = AutoNormal(
        model,
        init_loc_fn=init_to_value(
            values=_initial_values(init_key, codes, truncation, covariance_type)
        ),
        init_scale=_GUIDE_INIT_SCALE,
    )
    # Decaying the step size damps the jitter that the one-sample gradient
    # noise causes around the optimum, which otherwise limits the precision
    # of the fitted means and variances.
    schedule = optax.cosine_decay_schedule(
        learning_rate, num_steps, alpha=_FINAL_LEARNING_RATE_FRACTION
    )
    svi = SVI(model, guide, optax.adam(schedule), _OrderedElbo())
    result = svi.run(svi_key, num_steps, features, alpha, progress_bar=False)

    medians = guide.median(result.params)
    if truncation > 1:
        log_weights = _stick_breaking_log_weights(medians["stick_fractions"])
        # The stick-breaking weights sum to 1 in exact arithmetic, so
        # re-normalising only removes rounding error.
        log_weights = log_weights - jax.nn.logsumexp(log_weights)
    else:
        log_weights = jnp.zeros(1, codes.dtype)
    if covariance_type == "diag":
        precisions = medians["precisions"]
    else:
        tril = medians["precision_tril"]
        precisions = tril @ jnp.swapaxes(tril, -1, -2)
    return log_weights, medians["means"], precisions, result.losses


def _precision_to_covariance(precisions: jax.Array, covariance_type: str) -> jax.Array:
    """Invert [K, L] diagonal or [K, L, L] full precisions to [K, L, L] covariances."""
    if covariance_type == "diag":
        return jax.vmap(jnp.diag)(1.0 / precisions)
    cholesky = jnp.linalg.cholesky(precisions)
    identity = jnp.broadcast_to(
        jnp.eye(precisions.shape[-1], dtype=precisions.dtype), precisions.shape
    )
    covariances = jax.scipy.linalg.cho_solve((cholesky, True), identity)
    return 0.5 * (covariances + jnp.swapaxes(covariances, -1, -2))


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

    coefficients = _log_density_coefficients(
        jnp.log(weights), scaled_means, precisions, log_det, covariance_type
    )
    features = _quadratic_features((codes - center) / scale, covariance_type)
    return features @ coefficients.T - jnp.sum(jnp.log(scale))
