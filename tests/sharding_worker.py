"""Search on a 4-device mesh and on 1 device, and save both results (for test_sharding).

Run as `python tests/sharding_worker.py OUTPUT.npz` with
XLA_FLAGS=--xla_force_host_platform_device_count=4 and JAX_PLATFORMS=cpu. The models
are the package's VAE and CNN with random weights: the check compares two searches of
the same models, so the weights need not be trained.
"""

import functools
import sys

import jax
import numpy as np

from defuse_jax import classifier, identify, models, vae

NUM_IMAGES, NUM_PERTURBATIONS, BATCH_SIZE = 20, 8, 8
# The default config's models. NOTE: with a 12 x 12 VAE of latent size 4 the two
# searches' codes differed in the last bit (jax 0.10.2 on CPU). The encoder ran on 2
# rows per device against 8 on one device, and rounded differently.
IMAGE_SHAPE, LATENT_DIM = (28, 28, 1), 10


def random_params(module, rng, *inputs):
    """Params of `module` with N(0, 1 / fan_in) kernels and zero biases.

    Drawn in NumPy from the shapes, because compiling `VAE.init` of the default config
    took 14 s on a 2-core CPU, longer than a search.
    """
    shapes = jax.eval_shape(
        module.init, {"params": jax.random.key(0), "noise": jax.random.key(1)}, *inputs
    )["params"]

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['bias']"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logit_statistics(generator, apply_fn, vae_params, cnn_params, codes, images):
    """Return the per-class mean and std of the logits of decoded `codes`, and the
    logits of the reconstructions of `images`.

    One jitted call: called op by op, JAX would compile each operation on its own.
    """
    logits = apply_fn(cnn_params, generator.decode(vae_params, codes))
    means = generator.encode(vae_params, images)[0]
    reconstructed = apply_fn(cnn_params, generator.decode(vae_params, means))
    return logits.mean(axis=0), logits.std(axis=0), reconstructed


def main(output: str) -> None:
    rng = np.random.default_rng(0)
    example = np.zeros((1, *IMAGE_SHAPE), np.float32)
    vae_model = models.VAE(IMAGE_SHAPE, LATENT_DIM)
    cnn = models.CNN(10, (16, 32), 128)
    vae_params = random_params(vae_model, rng, example)
    cnn_params = random_params(cnn, rng, example)
    generator = vae.make_generator(vae_model)
    apply_fn = classifier.make_apply_fn(cnn)
    images = rng.uniform(0.0, 1.0, (NUM_IMAGES, *IMAGE_SHAPE)).astype(np.float32)

    # A random CNN gives every image the same class. Standardising each logit over
    # decoded random codes makes the prediction depend on the image, so the search
    # finds flips at some scales and not at others.
    codes = rng.normal(0.0, 2.0, (64, LATENT_DIM)).astype(np.float32)
    mean, std, logits = _logit_statistics(
        generator, apply_fn, vae_params, cnn_params, codes, images
    )
    head = max(name for name in cnn_params if name.startswith("Dense"))  # The logits.
    cnn_params[head]["kernel"] = cnn_params[head]["kernel"] / np.asarray(std)
    cnn_params[head]["bias"] = -np.asarray(mean / std)
    # Source labels: the prediction on each image's reconstruction, so that no image
    # flips at zero noise.
    labels = np.asarray(np.argmax((logits - mean) / std, axis=-1), np.int32)

    options = {
        "generator": generator,
        "apply_fn": apply_fn,
        "num_perturbations": NUM_PERTURBATIONS,
        "noise": identify.NoiseConfig("gaussian", 1.0, 2.0),
        "batch_size": BATCH_SIZE,
    }
    scales = identify.radius_scales(0.1, 4.0, 5)
    search_key = jax.random.key(2)
    results = {"device_count": np.asarray(len(jax.devices()))}
    for name, mesh in (
        ("sharded", identify.data_mesh()),
        ("single", identify.data_mesh(jax.devices()[:1])),
    ):
        results[f"{name}_mesh_size"] = np.asarray(mesh.size)
        flips = identify.identify(
            vae_params,
            cnn_params,
            images,
            labels,
            search_key,
            max_flips_per_image=3,
            mesh=mesh,
            **options,
        )
        for field, values in flips._asdict().items():
            results[f"{name}_{field}"] = values
        results[f"{name}_radius"] = identify.minimal_radius(
            vae_params,
            cnn_params,
            images,
            labels,
            search_key,
            scales=scales,
            mesh=mesh,
            **options,
        )
    np.savez(output, **results)


if __name__ == "__main__":
    main(sys.argv[1])
