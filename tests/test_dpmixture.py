"""Tests for defuse_jax.dpmixture: the closed-form ELBO against NumPyro's estimate.

`distill.fit_mixture` maximises the closed-form ELBO of `dpmixture`. These tests check
that it equals the ELBO that NumPyro's `Trace_ELBO` estimates for `dpmixture.model`
and `dpmixture.guide` at the same posterior, for every covariance type, for a fixed
and a Gamma-distributed alpha, and with and without labels.

The guide's samples come from NumPy and SciPy samplers of the distributions that the
`Posterior` fields describe, and `numpyro.handlers.substitute` feeds them to the guide,
which scores them. Compiling NumPyro's own Gamma and Wishart samplers took 12 to 20 s
per configuration in a trial on two CPU cores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Trace_ELBO
from scipy import stats

from defuse_jax import dpmixture
from defuse_jax.dpmixture import Layout

NUM_CODES = 30
NUM_DIMS = 2
NUM_COMPONENTS = 3
NUM_CLASSES = 3
NUM_PARTICLES = 4000
ALPHA = 1.5
FIXED = (0.0, 0.0)
GAMMA_PRIOR = (2.0, 1.0)


def _sample_guide(
    rng: np.random.Generator,
    post: dpmixture.Posterior,
    responsibilities: np.ndarray,
    layout: Layout,
    alpha_prior: tuple[float, float],
) -> dict[str, jax.Array]:
    """Draw NUM_PARTICLES samples of every guide site from the mean-field posterior.

    Returns:
        Site name -> [NUM_PARTICLES, ...] values, in the shapes the guide samples.
    """
    post = jax.tree.map(lambda value: np.asarray(value, np.float64), post)
    num_components, num_dims = post.mean.shape
    size = NUM_PARTICLES
    samples = {}
    if alpha_prior[0] > 0:
        samples["alpha"] = rng.gamma(post.alpha_shape, 1.0 / post.alpha_rate, size)
    samples["stick_fractions"] = rng.beta(
        post.stick_a, post.stick_b, (size, num_components - 1)
    )
    if layout.covariance_type == "full":
        # Wishart with `dof` degrees of freedom and scale matrix scatter^-1.
        precision = np.stack(
            [
                stats.wishart(df=dof, scale=np.linalg.inv(scatter)).rvs(
                    size, random_state=rng
                )
                for dof, scatter in zip(post.dof, post.scatter)
            ],
            axis=1,
        )
        precision_matrix = precision
    else:
        # Gamma with shape `dof` and rate `scatter`, per dimension or shared.
        precision = rng.gamma(
            post.dof[:, None], 1.0 / post.scatter, (size, *post.scatter.shape)
        )
        diagonal = np.broadcast_to(precision, (size, num_components, num_dims))
        precision_matrix = diagonal[..., None] * np.eye(num_dims)
    samples["precision"] = precision
    # means_k ~ Normal(mean_k, (beta_k precision_k)^-1), drawn through the Cholesky
    # factor of the precision.
    factor = np.linalg.cholesky(post.beta[:, None, None] * precision_matrix)
    noise = rng.normal(size=(size, num_components, num_dims, 1))
    samples["means"] = (
        post.mean + np.linalg.solve(np.swapaxes(factor, -1, -2), noise)[..., 0]
    )
    if layout.num_classes:
        for name in ("source", "predicted"):
            concentration = getattr(post, name)
            draws = rng.gamma(concentration, size=(size, *concentration.shape))
            samples[f"{name}_probs"] = draws / draws.sum(axis=-1, keepdims=True)
    uniform = rng.random((size, responsibilities.shape[0], 1))
    below = np.cumsum(responsibilities, axis=1) < uniform
    samples["component"] = np.minimum(below.sum(axis=-1), num_components - 1)
    return {
        name: jnp.asarray(value, jnp.int32 if name == "component" else jnp.float32)
        for name, value in samples.items()
    }


def _estimate(
    covariance_type: str, alpha_prior: tuple[float, float], num_classes: int
) -> tuple[float, float, float]:
    """Compute the closed-form ELBO and NumPyro's Monte Carlo estimate of it.

    Returns:
        The closed-form ELBO, the mean of NUM_PARTICLES single-particle
        `Trace_ELBO` estimates and its standard error, all in nats.
    """
    rng = np.random.default_rng(0)
    layout = Layout(NUM_DIMS, covariance_type, num_classes)
    codes = jnp.asarray(rng.normal(size=(NUM_CODES, NUM_DIMS)), jnp.float32)
    source = jnp.asarray(rng.integers(0, NUM_CLASSES, NUM_CODES), jnp.int32)
    predicted = jnp.asarray(rng.integers(0, NUM_CLASSES, NUM_CODES), jnp.int32)
    features = dpmixture.features(codes, source, predicted, layout)
    # Statistics of random soft assignments give a posterior away from any optimum.
    logits = 2.0 * rng.normal(size=(NUM_CODES, NUM_COMPONENTS))
    statistics = jax.nn.softmax(jnp.asarray(logits, jnp.float32)).T @ features
    post = dpmixture.posterior(statistics, layout, ALPHA, alpha_prior)
    scores = features @ dpmixture.coefficients(post, layout).T
    responsibilities = jax.nn.softmax(scores, axis=1)
    data_term = jnp.sum(jax.scipy.special.logsumexp(scores, axis=1))
    closed_form = data_term - dpmixture.kl_divergence(post, layout, alpha_prior)

    samples = _sample_guide(
        rng, post, np.asarray(responsibilities, np.float64), layout, alpha_prior
    )
    guide = functools.partial(
        dpmixture.guide, post=post, responsibilities=responsibilities
    )
    labels = (source, predicted) if num_classes else (None, None)
    options = {
        "layout": layout,
        "truncation": NUM_COMPONENTS,
        "alpha": ALPHA,
        "alpha_prior": alpha_prior,
    }

    def loss(sample: dict[str, jax.Array]) -> jax.Array:
        # Every guide site is substituted, so the key draws nothing.
        return Trace_ELBO().loss(
            jax.random.key(0),
            {},
            dpmixture.model,
            handlers.substitute(guide, data=sample),
            codes,
            *labels,
            **options,
        )

    # NOTE: `lax.map` evaluates one particle at a time on purpose. Under `vmap`,
    # NumPyro's Wishart and MultivariateNormal densities make batched LAPACK calls.
    # With jax 0.10.2 on two CPU cores, two such calls running at once deadlocked,
    # because each split its batch over XLA's thread pool and waited for workers
    # that were all blocked.
    elbos = -np.asarray(jax.jit(lambda s: jax.lax.map(loss, s))(samples), np.float64)
    standard_error = elbos.std(ddof=1) / np.sqrt(NUM_PARTICLES)
    return float(closed_form), float(elbos.mean()), float(standard_error)


# Six cases cover every pair of option values (covariance x alpha, covariance x
# labels, alpha x labels) at half the run time of all twelve.
@pytest.mark.parametrize(
    ("covariance_type", "alpha_prior", "num_classes"),
    [
        ("full", FIXED, 0),
        ("full", GAMMA_PRIOR, NUM_CLASSES),
        ("diag", FIXED, NUM_CLASSES),
        ("diag", GAMMA_PRIOR, 0),
        ("spherical", FIXED, 0),
        ("spherical", GAMMA_PRIOR, NUM_CLASSES),
    ],
)
def test_closed_form_elbo_matches_numpyro(covariance_type, alpha_prior, num_classes):
    closed_form, estimate, standard_error = _estimate(
        covariance_type, alpha_prior, num_classes
    )

    # The estimate must be precise enough to expose an error of half a nat.
    assert standard_error < 0.1
    assert abs(estimate - closed_form) <= 4.0 * standard_error, (
        f"closed form {closed_form:.4f}, NumPyro {estimate:.4f} "
        f"+- {standard_error:.4f} nats"
    )
