"""Latent perturbation families for the identification search.

Every family is drawn in two steps: `unit_noise` draws the noise at scale 1, and
`scale_noise` turns it into the noise at a chosen scale. Searching one image at several
scales with the same unit draws (as the minimal flip radius does) then perturbs it in the
same directions at every scale.

Families, with `scale` the standard deviation per latent dimension:
- "gaussian": N(0, scale^2) in every dimension.
- "beta": Beta(a, a) in every dimension, centred (minus 0.5) and rescaled to standard
  deviation `scale`. Beta(a, a) has variance 1 / (4 (2a + 1)), so large `a` gives noise
  close to Gaussian and small `a` gives flatter, bounded noise.
- "beta_uncentred": the noise of the public Defuse reference code, kept only to compare
  with it. It is "beta" shifted by +0.5 in every dimension, so every perturbation also
  moves the code by about +0.5 per dimension, which is a bias, not a search. With
  a = 50 and scale = 1 / sqrt(404) (about 0.0497) it equals raw Beta(50, 50) draws,
  which is what the reference adds.
- "sparse": one coordinate per perturbation, chosen uniformly, gets N(0, scale^2); the
  others are 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax

NOISE_TYPES = ("gaussian", "beta", "beta_uncentred", "sparse")

# The reference code's Beta shape: it adds raw Beta(50, 50) draws to the latent code.
REFERENCE_BETA_A = 50.0


class NoiseConfig(NamedTuple):
    """Latent noise family.

    kind: One of NOISE_TYPES; see the module docstring.
    scale: Standard deviation per latent dimension (of the one perturbed coordinate for
        "sparse").
    beta_a: The shape a of Beta(a, a); used by "beta" and "beta_uncentred".
    """

    kind: str = "gaussian"
    scale: float = 1.0
    beta_a: float = 2.0


def check_noise(noise: NoiseConfig) -> None:
    """Raise ValueError naming the bad field of `noise`."""
    if noise.kind not in NOISE_TYPES:
        raise ValueError(
            f"Unknown noise kind {noise.kind!r}; use one of {NOISE_TYPES}."
        )
    if not (math.isfinite(noise.scale) and noise.scale >= 0):
        raise ValueError(
            f"noise scale {noise.scale!r} is invalid; use a finite number >= 0 "
            "(the standard deviation per latent dimension)."
        )
    if noise.kind.startswith("beta") and not (
        math.isfinite(noise.beta_a) and noise.beta_a > 0
    ):
        raise ValueError(
            f"beta_a {noise.beta_a!r} is invalid for {noise.kind!r} noise; use a "
            "finite number > 0, such as 2.0."
        )


def beta_std(beta_a: float) -> float:
    """Standard deviation of Beta(a, a)."""
    return 1.0 / math.sqrt(4.0 * (2.0 * beta_a + 1.0))


def unit_noise(key: jax.Array, shape: tuple[int, ...], noise: NoiseConfig) -> jax.Array:
    """Draw the family's noise at scale 1 (zero mean, unit std per dimension).

    For "sparse" the last axis is the latent axis: one entry per row along it is
    non-zero, with unit standard deviation.
    """
    if noise.kind == "gaussian":
        return jax.random.normal(key, shape)
    if noise.kind in ("beta", "beta_uncentred"):
        draws = jax.random.beta(key, noise.beta_a, noise.beta_a, shape)
        return (draws - 0.5) / beta_std(noise.beta_a)
    if noise.kind == "sparse":
        coordinate_key, value_key = jax.random.split(key)
        coordinate = jax.random.randint(coordinate_key, shape[:-1], 0, shape[-1])
        values = jax.random.normal(value_key, shape[:-1])
        one_hot = jax.nn.one_hot(coordinate, shape[-1], dtype=values.dtype)
        return one_hot * values[..., None]
    raise ValueError(f"Unknown noise kind {noise.kind!r}; use one of {NOISE_TYPES}.")


def scale_noise(unit: jax.Array, scale: jax.Array | float, kind: str) -> jax.Array:
    """Turn `unit_noise` draws into the noise at `scale`."""
    scaled = unit * scale
    if kind == "beta_uncentred":
        return scaled + 0.5
    return scaled


def sample_noise(
    key: jax.Array, shape: tuple[int, ...], noise: NoiseConfig
) -> jax.Array:
    """Draw noise of the given shape from `noise`'s family at `noise.scale`."""
    return scale_noise(unit_noise(key, shape, noise), noise.scale, noise.kind)
