"""Flax Linen modules: a convolutional VAE and a small CNN classifier.

Both take float32 NHWC images in [0, 1]. The convolutional stacks downsample by 4, so
image height and width need not be multiples of 4: the decoder builds the next multiple
of 4 and crops to the requested size.

Convolutions go through `Conv` and `ConvTranspose`, which have the parameters of
`flax.linen.Conv` and `flax.linen.ConvTranspose` (so checkpoints are interchangeable)
but compute one-channel layers differently, because XLA's CPU convolution handles one
channel poorly. A convolution of a one-channel input (the first layer on grey images)
is a sum of shifted copies of the input: on 512 images of 28 x 28 the 3 x 3 layer takes
40 ms as `lax.conv` and 5 ms this way. A 4 x 4, stride-2 transposed convolution to one
channel (the decoder's last layer) multiplies every input pixel by all 16 taps in one
matmul and adds the shifted products: 6 to 9 ms against 12 to 16 ms for
`lax.conv_transpose`, with equal results. See BUILD_NOTES.md, "Identification benchmark".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """Return the (low, high) padding of XLA's "SAME" for one spatial axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def shifted_sum_conv(
    images: jax.Array, kernel: jax.Array, strides: tuple[int, int]
) -> jax.Array:
    """Convolve one-channel images [N, H, W, 1] with kernel [kh, kw, 1, F], "SAME" padding.

    Equal to `lax.conv_general_dilated` up to float rounding: every output is the sum,
    tap by tap, of a strided view of the padded input times that tap's F weights.
    """
    _, height, width, _ = images.shape
    window_h, window_w = kernel.shape[:2]
    pad_h = _same_padding(height, window_h, strides[0])
    pad_w = _same_padding(width, window_w, strides[1])
    padded = jnp.pad(images, ((0, 0), pad_h, pad_w, (0, 0)))
    out_h, out_w = -(-height // strides[0]), -(-width // strides[1])
    total = None
    for dy in range(window_h):
        for dx in range(window_w):
            view = padded[
                :,
                dy : dy + (out_h - 1) * strides[0] + 1 : strides[0],
                dx : dx + (out_w - 1) * strides[1] + 1 : strides[1],
                :,
            ]
            term = view * kernel[dy, dx, 0]
            total = term if total is None else total + term
    return total


class Conv(nn.Module):
    """A "SAME" 2-D convolution with the parameters of `flax.linen.Conv`.

    One-channel inputs use `shifted_sum_conv`; others use `lax.conv_general_dilated`.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        in_features = images.shape[-1]
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, in_features, self.features),
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if in_features == 1:
            out = shifted_sum_conv(images, kernel, self.strides)
        else:
            out = lax.conv_general_dilated(
                images,
                kernel,
                self.strides,
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return out + bias


# For output phase p (0 for even, 1 for odd output rows or columns) of a 4-tap,
# stride-2 "SAME" transposed convolution: the input offsets it reads and the kernel taps
# that weight them. Output 2m reads inputs m - 1 and m through taps 0 and 2; output
# 2m + 1 reads inputs m and m + 1 through taps 1 and 3.
_PHASE_TAPS = {0: ((-1, 0), (0, 2)), 1: ((0, 1), (1, 3))}


def scatter_conv_transpose(images: jax.Array, kernel: jax.Array) -> jax.Array:
    """`lax.conv_transpose(images, kernel, (2, 2), "SAME")` for a [4, 4, C, F] kernel.

    One matmul gives every input pixel times every tap, [N, H, W, 4, 4, F]; each of the
    four output phases is then the sum of four shifted slices of it.
    """
    num, height, width, channels = images.shape
    features = kernel.shape[3]
    taps = kernel.transpose(2, 0, 1, 3).reshape(channels, 16 * features)
    products = (images.reshape(-1, channels) @ taps).reshape(
        num, height, width, 4, 4, features
    )
    padded = jnp.pad(products, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    rows = []
    for phase_y in (0, 1):
        columns = []
        for phase_x in (0, 1):
            total = None
            for dy, tap_y in zip(*_PHASE_TAPS[phase_y], strict=True):
                for dx, tap_x in zip(*_PHASE_TAPS[phase_x], strict=True):
                    term = padded[
                        :,
                        1 + dy : 1 + dy + height,
                        1 + dx : 1 + dx + width,
                        tap_y,
                        tap_x,
                    ]
                    total = term if total is None else total + term
            columns.append(total)
        rows.append(jnp.stack(columns, axis=3))  # [N, H, W, 2, F]
    return jnp.stack(rows, axis=2).reshape(num, 2 * height, 2 * width, features)


class ConvTranspose(nn.Module):
    """A "SAME" transposed convolution with the parameters of `flax.linen.ConvTranspose`.

    A 4 x 4, stride-2 layer with one output feature uses `scatter_conv_transpose`;
    others use `lax.conv_transpose`.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, images.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        if self.features == 1 and self.kernel_size == (4, 4) and self.strides == (2, 2):
            out = scatter_conv_transpose(images, kernel)
        else:
            out = lax.conv_transpose(
                images,
                kernel,
                self.strides,
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        return out + bias


class Encoder(nn.Module):
    """Map images [N, H, W, C] to the mean and log-variance [N, L] of q(z | x)."""

    latent_dim: int
    features: Sequence[int] = (32, 64)
    hidden_dim: int = 256

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = images
        for index, width in enumerate(self.features):
            x = nn.relu(Conv(width, (4, 4), (2, 2), name=f"Conv_{index}")(x))
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
        for index, width_out in enumerate(self.features[1:]):
            x = ConvTranspose(width_out, (4, 4), (2, 2), name=f"ConvTranspose_{index}")(
                x
            )
            x = nn.relu(x)
        last = len(self.features) - 1
        x = ConvTranspose(channels, (4, 4), (2, 2), name=f"ConvTranspose_{last}")(x)
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
        for index, width in enumerate(self.features):
            x = nn.relu(Conv(width, (3, 3), name=f"Conv_{index}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden_dim)(x))
        return nn.Dense(self.num_classes)(x)
