"""VAE objective, jitted train step, and the encode/decode functions of the generator.

The loss is the negative ELBO per example: reconstruction log-likelihood (Bernoulli on
pixel intensities, or Gaussian with a fixed scale) minus beta times the analytic KL
divergence from the diagonal Gaussian posterior to the standard normal prior. Every term
is written for one example and vmapped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from defuse_jax import models

LIKELIHOODS = ("bernoulli", "gaussian")


class Generator(NamedTuple):
    """The two functions of a generator, both pure in (params, arrays).

    encode: `(params, images [N, H, W, C]) -> (mean [N, L], log_variance [N, L])`.
    decode: `(params, codes [N, L]) -> images [N, H, W, C]` in [0, 1].
    """

    encode: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
    decode: Callable[[Any, jax.Array], jax.Array]


class VaeTrainState(train_state.TrainState):
    """TrainState of the VAE; the likelihood settings are static fields."""

    likelihood: str = struct.field(pytree_node=False, default="bernoulli")
    gaussian_scale: float = struct.field(pytree_node=False, default=0.1)
    beta: float = struct.field(pytree_node=False, default=1.0)


def gaussian_kl(mean: jax.Array, log_variance: jax.Array) -> jax.Array:
    """KL(N(mean, exp(log_variance)) || N(0, I)) for one example.

    Args:
        mean: [L] posterior mean.
        log_variance: [L] posterior log-variance.

    Returns:
        Scalar KL divergence in nats.
    """
    return 0.5 * jnp.sum(jnp.exp(log_variance) + mean**2 - 1.0 - log_variance)


def bernoulli_log_likelihood(logits: jax.Array, image: jax.Array) -> jax.Array:
    """Sum over pixels of log Bernoulli(image | sigmoid(logits)), for image in [0, 1]."""
    return jnp.sum(
        image * jax.nn.log_sigmoid(logits) + (1 - image) * jax.nn.log_sigmoid(-logits)
    )


def gaussian_log_likelihood(
    logits: jax.Array, image: jax.Array, scale: float
) -> jax.Array:
    """Sum over pixels of log N(image | sigmoid(logits), scale^2)."""
    residual = (image - jax.nn.sigmoid(logits)) / scale
    return jnp.sum(-0.5 * residual**2 - math.log(scale) - 0.5 * math.log(2 * math.pi))


def elbo_terms(
    logits: jax.Array,
    image: jax.Array,
    mean: jax.Array,
    log_variance: jax.Array,
    *,
    likelihood: str,
    gaussian_scale: float,
) -> tuple[jax.Array, jax.Array]:
    """Return (reconstruction log-likelihood, KL) for one example, both scalars in nats."""
    if likelihood == "bernoulli":
        reconstruction = bernoulli_log_likelihood(logits, image)
    elif likelihood == "gaussian":
        reconstruction = gaussian_log_likelihood(logits, image, gaussian_scale)
    else:
        raise ValueError(
            f"Unknown VAE likelihood {likelihood!r}; use one of {LIKELIHOODS}."
        )
    return reconstruction, gaussian_kl(mean, log_variance)


def create_state(
    model: models.VAE,
    key: jax.Array,
    *,
    learning_rate: float,
    likelihood: str = "bernoulli",
    gaussian_scale: float = 0.1,
    beta: float = 1.0,
) -> VaeTrainState:
    """Initialise VAE parameters and an Adam optimiser."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(
            f"Unknown VAE likelihood {likelihood!r}; use one of {LIKELIHOODS}."
        )
    images = jnp.zeros((1, *model.image_shape), jnp.float32)
    params_key, noise_key = jax.random.split(key)
    params = model.init({"params": params_key, "noise": noise_key}, images)["params"]
    return VaeTrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.adam(learning_rate),
        likelihood=likelihood,
        gaussian_scale=gaussian_scale,
        beta=beta,
    )


def _train_step(
    state: VaeTrainState, batch: tuple[jax.Array, ...], key: jax.Array
) -> tuple[VaeTrainState, dict[str, jax.Array]]:
    """Take one Adam step on the negative ELBO of a batch `(images [B, H, W, C],)`."""
    images = batch[0]

    def loss_fn(params):
        logits, mean, log_variance = state.apply_fn(
            {"params": params}, images, rngs={"noise": key}
        )
        terms = functools.partial(
            elbo_terms, likelihood=state.likelihood, gaussian_scale=state.gaussian_scale
        )
        reconstruction, kl = jax.vmap(terms)(logits, images, mean, log_variance)
        loss = -jnp.mean(reconstruction - state.beta * kl)
        metrics = {
            "elbo": jnp.mean(reconstruction - kl),
            "reconstruction": jnp.mean(reconstruction),
            "kl": jnp.mean(kl),
        }
        return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, **metrics}


train_step = jax.jit(_train_step)


def make_generator(model: models.VAE) -> Generator:
    """Return the pure encode/decode functions of `model` (decode maps to [0, 1])."""

    def encode(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        return model.apply({"params": params}, images, method=models.VAE.encode)

    def decode(params: Any, codes: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, codes, method=models.VAE.decode)
        return jax.nn.sigmoid(logits)

    return Generator(encode=encode, decode=decode)
