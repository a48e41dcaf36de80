"""Defuse on scikit-learn's 1,797 UCI digits (8x8 pixels, 16 grey levels).

The images are small, so the VAE has fewer latent dimensions, and the data are few,
so both models train for more epochs. Select the CPU smoke-test variant with
`--config=experiments/configs/digits.py:test`.
"""

import ml_collections

from experiments.configs import mnist5k


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Return the config; `variant` "test" shrinks every stage to run in seconds."""
    config = mnist5k.get_config(variant)
    config.dataset.name = "digits"
    # 36 test images per class; 20 more per class are held out for validation,
    # which leaves 1,237 train images.
    config.dataset.test_size = 360
    if not variant:
        config.dataset.validation_size = 200
    config.vae.latent_dim = 6
    if not variant:
        config.classifier.num_epochs = 30.0
        config.vae.num_epochs = 60.0
    config.classifier.batch_size = 64
    return config
