"""The truncated stick-breaking Dirichlet-process Gaussian mixture and its mean-field posterior.

`model` and `guide` state the model and the variational family as NumPyro programs. The
rest of this module gives, in closed form, what `distill.fit_mixture` needs to fit that
guide to that model. Those are the expected sufficient statistics of the codes (one matrix
product per chunk of codes), the conjugate posterior they imply, and the evidence lower
bound.
Coordinate ascent on these closed forms is the exact optimiser of the guide's ELBO, and a
convex combination of statistics from a minibatch is a natural-gradient step, so both the
full-batch and the minibatch fit optimise the objective NumPyro's `Trace_ELBO` estimates
for `model` and `guide`.

Model, in units where the codes have mean 0 and unit variance per dimension:

    alpha ~ Gamma(shape, rate), or fixed
    v_k ~ Beta(1, alpha), k < K;  v_K = 1;  pi_k = v_k prod_{j<k} (1 - v_j)
    Lambda_k ~ Wishart(nu0, W0) ("full"), Gamma per dimension ("diag") or shared by all
        dimensions ("spherical");  mu_k | Lambda_k ~ Normal(0, (beta0 Lambda_k)^-1)
    theta_k, phi_k ~ Dirichlet(delta0)  (only with labels: source and predicted label)
    z_n ~ Categorical(pi);  x_n ~ Normal(mu_{z_n}, Lambda_{z_n}^-1)
    s_n ~ Categorical(theta_{z_n});  p_n ~ Categorical(phi_{z_n})  (only with labels)

The variational family keeps every conjugate block: Beta sticks, Normal-Wishart (or
Normal-Gamma) components, Dirichlet label distributions, Gamma alpha, and a categorical
responsibility per code.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import digamma, gammaln, multigammaln

COVARIANCE_TYPES = ("diag", "full", "spherical")

# Prior on each component, in standardised units. The precision prior has `dof` = L
# pseudo-observations with total scatter `_PRIOR_SCATTER` per dimension, so its mean
# precision is L per dimension (covariance 1/L of the whole data set's). The mean prior
# is Normal(0, (beta0 Lambda)^-1) with beta0 = 1: one component-width around the data
# centre. scikit-learn's BayesianGaussianMixture uses the same default strengths.
_PRIOR_SCATTER = 1.0
_MEAN_PRECISION = 1.0
# Dirichlet concentration of the per-component label distributions.
_LABEL_CONCENTRATION = 1.0
# Fixed-point rounds between the stick posteriors and q(alpha) in one update.
_ALPHA_ROUNDS = 5


class Layout(NamedTuple):
    """Static shape of a fit: code dimension, covariance type and label classes.

    num_classes is 0 when the fit does not model labels.
    """

    num_dims: int
    covariance_type: str
    num_classes: int = 0

    @property
    def num_second(self) -> int:
        """Number of second-moment features per code."""
        if self.covariance_type == "full":
            return self.num_dims * (self.num_dims + 1) // 2
        return self.num_dims if self.covariance_type == "diag" else 1

    @property
    def num_features(self) -> int:
        return self.num_second + self.num_dims + 1 + 2 * self.num_classes


class Posterior(NamedTuple):
    """Parameters of the mean-field posterior over the global variables.

    beta: [K] mean precision scale; mean: [K, L] posterior mean of mu.
    dof: [K] Wishart degrees of freedom ("full") or Gamma shape ("diag", "spherical").
    scatter: [K, L, L] inverse Wishart scale ("full"), [K, L] Gamma rates ("diag") or
        [K, 1] Gamma rates ("spherical").
    stick_a, stick_b: [K - 1] Beta parameters of the stick fractions.
    alpha_shape, alpha_rate: scalars of q(alpha); alpha_rate is 0 when alpha is fixed,
        and alpha_shape then is alpha.
    source, predicted: [K, C] Dirichlet parameters ([K, 0] without labels).
    precision: E[Lambda], shaped like `scatter`.
    log_det: [K] E[log |Lambda|].
    log_det_scatter: [K] log |scatter| ("full"; zeros otherwise).
    """

    beta: jax.Array
    mean: jax.Array
    dof: jax.Array
    scatter: jax.Array
    stick_a: jax.Array
    stick_b: jax.Array
    alpha_shape: jax.Array
    alpha_rate: jax.Array
    source: jax.Array
    predicted: jax.Array
    precision: jax.Array
    log_det: jax.Array
    log_det_scatter: jax.Array


def prior_dof(layout: Layout) -> float:
    """Prior degrees of freedom (or Gamma shape) of the precision."""
    dims = layout.num_dims
    if layout.covariance_type == "full":
        return float(dims)
    return dims / 2.0 if layout.covariance_type == "diag" else dims * dims / 2.0


def _prior_rate(layout: Layout) -> float:
    """Prior Gamma rate ("diag", "spherical"); the Wishart uses W0^-1 = scatter * I."""
    if layout.covariance_type == "spherical":
        return layout.num_dims * _PRIOR_SCATTER / 2.0
    return _PRIOR_SCATTER / 2.0


# --- Features and statistics ---------------------------------------------------


def features(
    codes: jax.Array, source: jax.Array, predicted: jax.Array, layout: Layout
) -> jax.Array:
    """Per-code sufficient statistics [M, F]: second moments, codes, 1, label one-hots.

    Second moments are x_i x_j for i <= j ("full"), x_i^2 ("diag") or |x|^2
    ("spherical"). Every expected log density is linear in these features, so one
    matrix product gives all M x K of them, and one more gives the statistics.
    """
    second = _second_moments(codes, layout)
    parts = [second, codes, jnp.ones((codes.shape[0], 1), codes.dtype)]
    if layout.num_classes:
        parts.append(jax.nn.one_hot(source, layout.num_classes, dtype=codes.dtype))
        parts.append(jax.nn.one_hot(predicted, layout.num_classes, dtype=codes.dtype))
    return jnp.concatenate(parts, axis=1)


def _second_moments(rows: jax.Array, layout: Layout) -> jax.Array:
    """Compute [M, S] second moments of [M, L] rows in the layout's feature form."""
    if layout.covariance_type == "full":
        first, second = np.triu_indices(layout.num_dims)
        return rows[:, first] * rows[:, second]
    if layout.covariance_type == "diag":
        return rows * rows
    return jnp.sum(rows * rows, axis=1, keepdims=True)


def _dof_per_code(layout: Layout) -> float:
    """Return how much one code adds to the degrees of freedom (or Gamma shape)."""
    if layout.covariance_type == "full":
        return 1.0
    return 0.5 if layout.covariance_type == "diag" else 0.5 * layout.num_dims


def _split(stats: jax.Array, layout: Layout) -> tuple[jax.Array, ...]:
    """Split [K, F] statistics into second moments, sums, counts and label counts."""
    second_end = layout.num_second
    sums_end = second_end + layout.num_dims
    classes = layout.num_classes
    return (
        stats[:, :second_end],
        stats[:, second_end:sums_end],
        stats[:, sums_end],
        stats[:, sums_end + 1 : sums_end + 1 + classes],
        stats[:, sums_end + 1 + classes :],
    )


def _symmetric(packed: jax.Array, num_dims: int) -> jax.Array:
    """Unpack [K, L(L+1)/2] upper-triangle entries into [K, L, L] symmetric matrices."""
    rows, cols = np.triu_indices(num_dims)
    matrices = jnp.zeros((*packed.shape[:-1], num_dims, num_dims), packed.dtype)
    return matrices.at[..., rows, cols].set(packed).at[..., cols, rows].set(packed)


# --- Posterior -------------------------------------------------------------------


def posterior(
    stats: jax.Array, layout: Layout, alpha: float, alpha_prior: tuple[float, float]
) -> Posterior:
    """Compute the conjugate posterior implied by expected statistics [K, F].

    Args:
        stats: [K, F] responsibility-weighted sums of `features`.
        layout: the fit's static shape.
        alpha: concentration when it is fixed (alpha_prior[0] == 0).
        alpha_prior: (shape, rate) of a Gamma prior on alpha, or (0, 0) for fixed.
    """
    second, sums, counts, source, predicted = _split(stats, layout)
    beta = _MEAN_PRECISION + counts
    mean = sums / beta[:, None]
    dof = prior_dof(layout) + counts * _dof_per_code(layout)
    if layout.covariance_type == "full":
        scatter = (
            _PRIOR_SCATTER * jnp.eye(layout.num_dims, dtype=stats.dtype)
            + _symmetric(second, layout.num_dims)
            - beta[:, None, None] * mean[:, :, None] * mean[:, None, :]
        )
        scatter = 0.5 * (scatter + jnp.swapaxes(scatter, -1, -2))
    else:
        squares = _second_moments(mean, layout)
        # Rounding can push the centred scatter slightly below zero for tight
        # components; the true value is non-negative.
        centred = jnp.maximum(second - beta[:, None] * squares, 0.0)
        scatter = _prior_rate(layout) + 0.5 * centred

    # Stick k takes the counts of component k; the rest of the stick takes all later ones.
    tail = jnp.cumsum(counts[::-1])[::-1]
    stick_a = 1.0 + counts[:-1]
    if alpha_prior[0] > 0:
        shape = alpha_prior[0] + counts.shape[0] - 1.0
        rate = jnp.asarray(alpha_prior[1], stats.dtype)
        for _ in range(_ALPHA_ROUNDS):
            stick_b = shape / rate + tail[1:]
            rate = alpha_prior[1] - jnp.sum(
                digamma(stick_b) - digamma(stick_a + stick_b)
            )
        alpha_shape = jnp.asarray(shape, stats.dtype)
        alpha_rate = rate
    else:
        stick_b = alpha + tail[1:]
        alpha_shape = jnp.asarray(alpha, stats.dtype)
        alpha_rate = jnp.zeros((), stats.dtype)
    precision, log_det, log_det_scatter = _precision_terms(dof, scatter, layout)
    return Posterior(
        beta,
        mean,
        dof,
        scatter,
        stick_a,
        stick_b,
        alpha_shape,
        alpha_rate,
        _LABEL_CONCENTRATION + source,
        _LABEL_CONCENTRATION + predicted,
        precision,
        log_det,
        log_det_scatter,
    )


def expected_log_weights(post: Posterior) -> jax.Array:
    """E[log pi_k] under the Beta stick posteriors, [K]."""
    total = digamma(post.stick_a + post.stick_b)
    log_v = digamma(post.stick_a) - total
    log_rest = digamma(post.stick_b) - total
    zero = jnp.zeros(1, log_v.dtype)
    return jnp.concatenate([log_v, zero]) + jnp.concatenate(
        [zero, jnp.cumsum(log_rest)]
    )


def expected_weights(post: Posterior) -> jax.Array:
    """E[pi_k] (products of expected stick fractions), [K], summing to 1."""
    fraction = post.stick_a / (post.stick_a + post.stick_b)
    one = jnp.ones(1, fraction.dtype)
    return jnp.concatenate([fraction, one]) * jnp.concatenate(
        [one, jnp.cumprod(1.0 - fraction)]
    )


def inverse_and_log_det(matrices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Invert symmetric positive-definite [..., L, L] matrices by Cholesky.

    Returns:
        The inverses [..., L, L] and log determinants [...].

    NOTE: written with `fori_loop` over the L columns instead of
    `jnp.linalg.cholesky`. With jax 0.10.2 on CPU, batched LAPACK calls inside the
    vmapped fit loop left the process waiting forever (idle CPU, no result) for
    K = 100 components, L = 15 and 3 or more restarts. A gdb trace of a similar hang
    showed two batched LAPACK kernels waiting for each other's pool threads.
    """
    dims = matrices.shape[-1]
    index = jnp.arange(dims)

    def column(j, factor):
        # Row j of the factor has its entries left of the diagonal set, and zeros
        # elsewhere.
        row = factor[..., j, :]
        diagonal = jnp.sqrt(matrices[..., j, j] - jnp.sum(row * row, axis=-1))
        below = (matrices[..., :, j] - jnp.einsum("...ik,...k->...i", factor, row)) / (
            diagonal[..., None]
        )
        values = jnp.where(
            index > j, below, jnp.where(index == j, diagonal[..., None], 0)
        )
        return factor.at[..., :, j].set(values)

    factor = jax.lax.fori_loop(0, dims, column, jnp.zeros_like(matrices))

    def row(i, solved):
        # Forward substitution for factor @ solved = I, one row at a time.
        unit = (index == i).astype(matrices.dtype)
        value = (unit - jnp.einsum("...k,...kj->...j", factor[..., i, :], solved)) / (
            factor[..., i, i][..., None]
        )
        return solved.at[..., i, :].set(value)

    lower_inverse = jax.lax.fori_loop(0, dims, row, jnp.zeros_like(matrices))
    inverse = jnp.einsum("...ki,...kj->...ij", lower_inverse, lower_inverse)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
    return inverse, log_det


def _precision_terms(
    dof: jax.Array, scatter: jax.Array, layout: Layout
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """E[Lambda] (shaped like `scatter`), E[log |Lambda|] [K] and log |scatter| [K]."""
    dims = layout.num_dims
    if layout.covariance_type == "full":
        scale, log_det_scatter = inverse_and_log_det(scatter)
        expected = dof[:, None, None] * scale
        halves = 0.5 * (dof[:, None] - jnp.arange(dims, dtype=dof.dtype))
        log_det = (
            jnp.sum(digamma(halves), axis=-1) + dims * math.log(2.0) - log_det_scatter
        )
        expected = 0.5 * (expected + jnp.swapaxes(expected, -1, -2))
        return expected, log_det, log_det_scatter
    expected = dof[:, None] / scatter
    log_each = digamma(dof)[:, None] - jnp.log(scatter)
    zeros = jnp.zeros_like(dof)
    if layout.covariance_type == "spherical":
        return expected, dims * log_each[:, 0], zeros
    return expected, jnp.sum(log_each, axis=-1), zeros


def coefficients(post: Posterior, layout: Layout) -> jax.Array:
    """[K, F] coefficients with features @ coefficients.T = E[log pi_k + log p(x | k)]."""
    precision, log_det = post.precision, post.log_det
    # E[(x - mu)^T Lambda (x - mu)] adds L / beta to the plug-in quadratic form.
    weights = gaussian_coefficients(
        expected_log_weights(post) - 0.5 * layout.num_dims / post.beta,
        post.mean,
        precision,
        log_det,
        layout.covariance_type,
    )
    if not layout.num_classes:
        return weights
    return jnp.concatenate(
        [
            weights,
            _expected_log_probs(post.source),
            _expected_log_probs(post.predicted),
        ],
        axis=1,
    )


def gaussian_coefficients(
    log_weights: jax.Array,
    means: jax.Array,
    precisions: jax.Array,
    log_det: jax.Array,
    covariance_type: str,
) -> jax.Array:
    """[K, F'] coefficients with features @ coefficients.T = log w_k + log N(x | k).

    Args:
        log_weights: [K] log mixing weights.
        means: [K, L] component means.
        precisions: [K, L, L] ("full"), [K, L] ("diag") or [K, 1] ("spherical").
        log_det: [K] log determinants of the precisions.
        covariance_type: "full", "diag" or "spherical".

    Returns:
        Coefficients of the second-moment, code and constant features of `features`
        (without label features).
    """
    num_dims = means.shape[-1]
    if covariance_type == "full":
        rows, cols = np.triu_indices(num_dims)
        # x^T P x = sum_i P_ii x_i^2 + 2 sum_{i<j} P_ij x_i x_j.
        multiplicity = np.where(rows == cols, 1.0, 2.0)
        quadratic = -0.5 * precisions[:, rows, cols] * multiplicity
        linear = jnp.einsum("kij,kj->ki", precisions, means)
    else:
        quadratic = -0.5 * precisions
        linear = precisions * means
    constant = (
        log_weights
        + 0.5 * log_det
        - 0.5 * jnp.sum(linear * means, axis=-1)
        - 0.5 * num_dims * math.log(2 * math.pi)
    )
    return jnp.concatenate([quadratic, linear, constant[:, None]], axis=1)


def _expected_log_probs(concentration: jax.Array) -> jax.Array:
    return digamma(concentration) - digamma(
        jnp.sum(concentration, axis=-1, keepdims=True)
    )


# --- Evidence lower bound -----------------------------------------------------------


def kl_divergence(
    post: Posterior, layout: Layout, alpha_prior: tuple[float, float]
) -> jax.Array:
    """KL(q || p) summed over every global variable: sticks, alpha, components, labels."""
    dims = layout.num_dims
    dtype = post.mean.dtype
    # Sticks: E_q[log q(v)] - E_q[log p(v | alpha)], with log Beta(v | 1, alpha) =
    # log alpha + (alpha - 1) log(1 - v).
    a, b = post.stick_a, post.stick_b
    total = digamma(a + b)
    log_rest = digamma(b) - total
    neg_entropy = (
        -_log_beta(a, b)
        + (a - 1.0) * digamma(a)
        + (b - 1.0) * digamma(b)
        - (a + b - 2.0) * total
    )
    if alpha_prior[0] > 0:
        mean_alpha = post.alpha_shape / post.alpha_rate
        mean_log_alpha = digamma(post.alpha_shape) - jnp.log(post.alpha_rate)
        kl_alpha = _kl_gamma(
            post.alpha_shape, post.alpha_rate, alpha_prior[0], alpha_prior[1]
        )
    else:
        mean_alpha = post.alpha_shape
        mean_log_alpha = jnp.log(post.alpha_shape)
        kl_alpha = jnp.zeros((), dtype)
    kl_sticks = jnp.sum(neg_entropy - mean_log_alpha - (mean_alpha - 1.0) * log_rest)

    # Components: KL of the precision plus the expected KL of the mean given it.
    beta0 = _MEAN_PRECISION
    normal_part = 0.5 * (
        dims * beta0 / post.beta - dims + dims * jnp.log(post.beta / beta0)
    )
    precision = post.precision
    if layout.covariance_type == "full":
        mahalanobis = jnp.einsum("ki,kij,kj->k", post.mean, precision, post.mean)
        kl_precision = _kl_wishart(post, dims)
    else:
        mahalanobis = jnp.sum(precision * _second_moments(post.mean, layout), axis=-1)
        kl_precision = jnp.sum(
            _kl_gamma(
                post.dof[:, None], post.scatter, prior_dof(layout), _prior_rate(layout)
            ),
            axis=-1,
        )
    kl_components = jnp.sum(kl_precision + normal_part + 0.5 * beta0 * mahalanobis)

    kl_labels = jnp.zeros((), dtype)
    if layout.num_classes:
        kl_labels = jnp.sum(_kl_dirichlet(post.source)) + jnp.sum(
            _kl_dirichlet(post.predicted)
        )
    return kl_sticks + kl_alpha + kl_components + kl_labels


def _log_beta(a: jax.Array, b: jax.Array) -> jax.Array:
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def _kl_gamma(shape, rate, prior_shape, prior_rate) -> jax.Array:
    """KL(Gamma(shape, rate) || Gamma(prior_shape, prior_rate)), elementwise."""
    return (
        (shape - prior_shape) * digamma(shape)
        - gammaln(shape)
        + gammaln(prior_shape)
        + prior_shape * (jnp.log(rate) - math.log(prior_rate))
        + shape * (prior_rate - rate) / rate
    )


def _kl_wishart(post: Posterior, dims: int) -> jax.Array:
    """KL(Wishart(dof, scatter^-1) || Wishart(L, (prior scatter * I)^-1)), [K]."""
    prior = float(dims)
    log_det_scatter = post.log_det_scatter
    trace_scale = jnp.trace(post.precision, axis1=-2, axis2=-1) / post.dof
    halves = 0.5 * (post.dof[:, None] - jnp.arange(dims, dtype=post.dof.dtype))
    # log |W0^-1 W| = L log(prior scatter) - log |scatter|.
    log_det_ratio = dims * math.log(_PRIOR_SCATTER) - log_det_scatter
    return (
        0.5 * (post.dof - prior) * jnp.sum(digamma(halves), axis=-1)
        - 0.5 * prior * log_det_ratio
        + 0.5 * post.dof * (_PRIOR_SCATTER * trace_scale - dims)
        + multigammaln(0.5 * prior, dims)
        - multigammaln(0.5 * post.dof, dims)
    )


def _kl_dirichlet(concentration: jax.Array) -> jax.Array:
    """KL(Dirichlet(concentration) || Dirichlet(1, ..., 1)) per row."""
    prior = _LABEL_CONCENTRATION
    total = jnp.sum(concentration, axis=-1)
    classes = concentration.shape[-1]
    return (
        gammaln(total)
        - jnp.sum(gammaln(concentration), axis=-1)
        - gammaln(prior * classes)
        + classes * gammaln(prior)
        + jnp.sum(
            (concentration - prior)
            * (digamma(concentration) - digamma(total)[:, None]),
            axis=-1,
        )
    )


# --- NumPyro programs ---------------------------------------------------------------


def _precision_distribution(layout: Layout, dof, scatter) -> dist.Distribution:
    if layout.covariance_type == "full":
        return dist.Wishart(concentration=dof, rate_matrix=scatter)
    dof = jnp.asarray(dof)
    # A [K] shape per component pairs with the [K, L] or [K, 1] rates.
    return dist.Gamma(dof[..., None] if dof.ndim else dof, scatter).to_event(1)


def _covariance_of(layout: Layout, precision: jax.Array) -> dict[str, jax.Array]:
    """Keyword for dist.MultivariateNormal given a sampled precision."""
    if layout.covariance_type == "full":
        return {"precision_matrix": precision}
    eye = jnp.eye(layout.num_dims, dtype=precision.dtype)
    diagonal = jnp.broadcast_to(precision, (*precision.shape[:-1], layout.num_dims))
    return {"precision_matrix": diagonal[..., None] * eye}


def model(
    codes: jax.Array,
    source: jax.Array | None,
    predicted: jax.Array | None,
    *,
    layout: Layout,
    truncation: int,
    alpha: float,
    alpha_prior: tuple[float, float] = (0.0, 0.0),
    subsample_size: int | None = None,
) -> None:
    """Sample the mixture as a NumPyro program over standardised codes [M, L].

    The assignments z are explicit sites, so this program and `guide` give the same
    ELBO as the closed forms above. `subsample_size` gives the minibatch version.
    """
    dims = layout.num_dims
    dtype = codes.dtype
    if alpha_prior[0] > 0:
        alpha = numpyro.sample("alpha", dist.Gamma(alpha_prior[0], alpha_prior[1]))
    with numpyro.plate("sticks", truncation - 1):
        fractions = numpyro.sample("stick_fractions", dist.Beta(1.0, alpha))
    one = jnp.ones(1, dtype)
    weights = jnp.concatenate([fractions, one]) * jnp.concatenate(
        [one, jnp.cumprod(1.0 - fractions)]
    )
    with numpyro.plate("components", truncation):
        if layout.covariance_type == "full":
            prior_scatter = _PRIOR_SCATTER * jnp.eye(dims, dtype=dtype)
        else:
            prior_scatter = jnp.full(
                (dims if layout.covariance_type == "diag" else 1,),
                _prior_rate(layout),
                dtype,
            )
        precision = numpyro.sample(
            "precision",
            _precision_distribution(layout, prior_dof(layout), prior_scatter),
        )
        mean_precision = _covariance_of(layout, _MEAN_PRECISION * precision)
        means = numpyro.sample(
            "means",
            dist.MultivariateNormal(jnp.zeros(dims, dtype), **mean_precision),
        )
        if layout.num_classes:
            uniform = jnp.full(layout.num_classes, _LABEL_CONCENTRATION, dtype)
            source_probs = numpyro.sample("source_probs", dist.Dirichlet(uniform))
            predicted_probs = numpyro.sample("predicted_probs", dist.Dirichlet(uniform))
    with numpyro.plate("data", codes.shape[0], subsample_size=subsample_size) as index:
        component = numpyro.sample("component", dist.Categorical(weights))
        numpyro.sample(
            "codes",
            dist.MultivariateNormal(
                means[component], **_covariance_of(layout, precision[component])
            ),
            obs=codes[index],
        )
        if layout.num_classes:
            numpyro.sample(
                "source", dist.Categorical(source_probs[component]), obs=source[index]
            )
            numpyro.sample(
                "predicted",
                dist.Categorical(predicted_probs[component]),
                obs=predicted[index],
            )


def guide(
    codes: jax.Array,
    source: jax.Array | None,
    predicted: jax.Array | None,
    *,
    layout: Layout,
    truncation: int,
    alpha: float,
    alpha_prior: tuple[float, float] = (0.0, 0.0),
    subsample_size: int | None = None,
    post: Posterior,
    responsibilities: jax.Array,
) -> None:
    """Sample the mean-field family of `model` at `post` and `responsibilities`."""
    del alpha, truncation
    if alpha_prior[0] > 0:
        numpyro.sample("alpha", dist.Gamma(post.alpha_shape, post.alpha_rate))
    with numpyro.plate("sticks", post.stick_a.shape[0]):
        numpyro.sample("stick_fractions", dist.Beta(post.stick_a, post.stick_b))
    with numpyro.plate("components", post.beta.shape[0]):
        precision = numpyro.sample(
            "precision", _precision_distribution(layout, post.dof, post.scatter)
        )
        mean_precision = _covariance_of(
            layout,
            post.beta[:, None, None] * precision
            if layout.covariance_type == "full"
            else post.beta[:, None] * precision,
        )
        numpyro.sample("means", dist.MultivariateNormal(post.mean, **mean_precision))
        if layout.num_classes:
            numpyro.sample("source_probs", dist.Dirichlet(post.source))
            numpyro.sample("predicted_probs", dist.Dirichlet(post.predicted))
    with numpyro.plate("data", codes.shape[0], subsample_size=subsample_size) as index:
        numpyro.sample("component", dist.Categorical(responsibilities[index]))
