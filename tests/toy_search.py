"""A toy generator and classifier for search tests, with results known in closed form.

The toy generator encodes an image to its flattened pixel values and decodes a code to
a [1, 1, L] image. The toy classifier predicts class 1 exactly when the first pixel is
positive, so a flip happens exactly when the noise moves the first code coordinate
across 0. tests/multihost_worker.py imports this file too, so it contains no test.
"""

import jax
import jax.numpy as jnp
import numpy as np

from defuse_jax import identify
from defuse_jax.vae import Generator


def _encode(params, images):
    codes = images.reshape(images.shape[0], -1)
    return codes, jnp.zeros_like(codes)


def _decode(params, codes):
    return codes.reshape(codes.shape[0], 1, 1, -1)


def classify(params, images):
    """Logits [0, first pixel]: class 1 exactly when the first pixel is positive."""
    first = images.reshape(images.shape[0], -1)[:, 0]
    return jnp.stack([jnp.zeros_like(first), first], axis=-1)


TOY = Generator(encode=_encode, decode=_decode)


def toy_data(count, *, seed=0, low=0.2, high=1.0):
    """Images [count, 1, 1, 2] with first pixel magnitude in [low, high), and labels."""
    rng = np.random.default_rng(seed)
    first = rng.choice([-1.0, 1.0], count) * rng.uniform(low, high, count)
    images = np.stack([first, rng.normal(size=count)], axis=-1).reshape(count, 1, 1, 2)
    return images.astype(np.float32), (first > 0).astype(np.int32)


def search_options(*, scale=1.0, q=32, k=3, batch_size=4, kind="gaussian"):
    """Keyword arguments of `identify.identify` for the toy model."""
    return {
        "generator": TOY,
        "apply_fn": classify,
        "num_perturbations": q,
        "max_flips_per_image": k,
        "noise": identify.NoiseConfig(kind, scale, 2.0),
        "batch_size": batch_size,
    }


SEARCH_KEY = 7


def search(images, labels, **options):
    """Run `identify.identify` on the toy model with key SEARCH_KEY."""
    return identify.identify(
        None,
        None,
        images,
        labels,
        jax.random.key(SEARCH_KEY),
        **search_options(**options),
    )
