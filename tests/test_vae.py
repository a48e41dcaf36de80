"""Tests of the VAE objective and train step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions.kl import kl_divergence

from defuse_jax import models, training, vae


def test_gaussian_kl_matches_closed_form():
    mean = jnp.array([0.0, 1.5, -2.0, 0.3])
    log_variance = jnp.array([0.0, -1.0, 0.7, 2.0])
    std = jnp.exp(0.5 * log_variance)
    # Per dimension: KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2) / 2 - 1/2.
    closed_form = jnp.sum(-jnp.log(std) + (std**2 + mean**2) / 2 - 0.5)
    numpyro_kl = jnp.sum(kl_divergence(dist.Normal(mean, std), dist.Normal(0.0, 1.0)))
    np.testing.assert_allclose(
        vae.gaussian_kl(mean, log_variance), closed_form, rtol=1e-6
    )
    np.testing.assert_allclose(
        vae.gaussian_kl(mean, log_variance), numpyro_kl, rtol=1e-6
    )


def test_gaussian_kl_zero_at_prior():
    assert float(vae.gaussian_kl(jnp.zeros(5), jnp.zeros(5))) == pytest.approx(
        0.0, abs=1e-7
    )


def test_kl_gradient_reaches_encoder_outputs():
    grads = jax.grad(lambda m, lv: vae.gaussian_kl(m, lv), argnums=(0, 1))(
        jnp.array([1.0, -2.0]), jnp.array([0.5, -0.5])
    )
    np.testing.assert_allclose(grads[0], [1.0, -2.0], rtol=1e-6)
    np.testing.assert_allclose(grads[1], 0.5 * (np.exp([0.5, -0.5]) - 1.0), rtol=1e-6)


def test_bernoulli_log_likelihood_matches_direct_formula():
    logits = jnp.array([[-2.0, 0.5], [1.0, 3.0]])
    image = jnp.array([[0.0, 1.0], [0.25, 1.0]])
    p = jax.nn.sigmoid(logits)
    direct = jnp.sum(image * jnp.log(p) + (1 - image) * jnp.log(1 - p))
    np.testing.assert_allclose(
        vae.bernoulli_log_likelihood(logits, image), direct, rtol=1e-5
    )


def test_gaussian_log_likelihood_matches_numpyro():
    logits = jnp.array([0.3, -1.0, 2.0])
    image = jnp.array([0.5, 0.1, 0.9])
    expected = jnp.sum(dist.Normal(jax.nn.sigmoid(logits), 0.2).log_prob(image))
    np.testing.assert_allclose(
        vae.gaussian_log_likelihood(logits, image, 0.2), expected, rtol=1e-5
    )


def test_unknown_likelihood_raises():
    model = models.VAE((8, 8, 1), latent_dim=2)
    with pytest.raises(ValueError, match="Unknown VAE likelihood 'poisson'"):
        vae.create_state(
            model, jax.random.key(0), learning_rate=1e-3, likelihood="poisson"
        )


def test_train_step_compiles_once_and_improves_elbo():
    chex.clear_trace_counter()
    model = models.VAE((8, 8, 1), latent_dim=3)
    initial = vae.create_state(model, jax.random.key(0), learning_rate=3e-3)
    step = jax.jit(chex.assert_max_traces(vae._train_step, n=1))
    images = np.asarray(
        jax.random.uniform(jax.random.key(1), (64, 8, 8, 1)) > 0.5, np.float32
    )
    state = training.train_loop(
        initial,
        step,
        (images,),
        key=jax.random.key(2),
        num_steps=60,
        batch_size=16,
        name="vae_test",
        log_every=20,
    )
    _, first = step(initial, (images[:16],), jax.random.key(3))
    _, last = step(state, (images[:16],), jax.random.key(3))
    assert float(last["elbo"]) > float(first["elbo"])


def test_generator_shapes_and_range():
    model = models.VAE((28, 28, 1), latent_dim=4)
    state = vae.create_state(model, jax.random.key(0), learning_rate=1e-3)
    generator = vae.make_generator(model)
    mean, log_variance = generator.encode(state.params, jnp.zeros((5, 28, 28, 1)))
    chex.assert_shape([mean, log_variance], (5, 4))
    decoded = generator.decode(state.params, mean)
    chex.assert_shape(decoded, (5, 28, 28, 1))
    assert float(decoded.min()) >= 0.0
    assert float(decoded.max()) <= 1.0


def test_decoder_crops_sizes_not_divisible_by_four():
    model = models.VAE((10, 6, 3), latent_dim=2)
    state = vae.create_state(model, jax.random.key(0), learning_rate=1e-3)
    decoded = vae.make_generator(model).decode(state.params, jnp.zeros((2, 2)))
    chex.assert_shape(decoded, (2, 10, 6, 3))
