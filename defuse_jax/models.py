"""Flax Linen modules: a convolutional VAE and a small CNN classifier.

Both take float32 NHWC images in [0, 1]. The convolutional stacks downsample by 4, so
image height and width need not be multiples of 4: the decoder builds the next multiple
of 4 and crops to the requested size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Encoder(nn.Module):
    """Map images [N, H, W, C] to the mean and log-variance [N, L] of q(z | x)."""

    latent_dim: int
    features: Sequence[int] = (32, 64)
    hidden_dim: int = 256

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = images
        for width in self.features:
            x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding="SAME")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden_dim)(x))
        mean = nn.Dense(self.latent_dim, name="mean")(x)
        log_variance = nn.Dense(self.latent_dim, name="log_variance")(x)
        return mean, log_variance


class Decoder(nn.Module):
    """Map latent codes [N, L] to image logits [N, H, W, C] (pixel means before sigmoid)."""

    image_shape: tuple[int, int, int]
    features: Sequence[int] = (32, 16)
    hidden_dim: int = 256

    @nn.compact
    def __call__(self, codes: jax.Array) -> jax.Array:
        height, width, channels = self.image_shape
        scale = 2 ** len(self.features)
        base_height = math.ceil(height / scale)
        base_width = math.ceil(width / scale)
        x = nn.relu(nn.Dense(self.hidden_dim)(codes))
        x = nn.relu(nn.Dense(base_height * base_width * self.features[0])(x))
        x = x.reshape((codes.shape[0], base_height, base_width, self.features[0]))
        for width_out in self.features[1:]:
            x = nn.ConvTranspose(width_out, (4, 4), strides=(2, 2), padding="SAME")(x)
            x = nn.relu(x)
        x = nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME")(x)
        return x[:, :height, :width, :]


class VAE(nn.Module):
    """Convolutional VAE with a diagonal Gaussian posterior and a standard normal prior."""

    image_shape: tuple[int, int, int]
    latent_dim: int = 10

    def setup(self) -> None:
        self.encoder = Encoder(self.latent_dim)
        self.decoder = Decoder(self.image_shape)

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encode, draw z ~ q(z | x) with the "noise" RNG stream, and decode.

        Returns:
            Image logits [N, H, W, C], posterior mean [N, L] and log-variance [N, L].
        """
        mean, log_variance = self.encoder(images)
        noise = jax.random.normal(self.make_rng("noise"), mean.shape, mean.dtype)
        codes = mean + jnp.exp(0.5 * log_variance) * noise
        return self.decoder(codes), mean, log_variance

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(images)

    def decode(self, codes: jax.Array) -> jax.Array:
        return self.decoder(codes)


class CNN(nn.Module):
    """Two conv + max-pool blocks and a dense head; returns logits [N, num_classes]."""

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden_dim: int = 128

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = images
        for width in self.features:
            x = nn.relu(nn.Conv(width, (3, 3), padding="SAME")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden_dim)(x))
        return nn.Dense(self.num_classes)(x)
