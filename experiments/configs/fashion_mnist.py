"""Defuse on Fashion-MNIST, read from Debian's dataset-fashion-mnist package.

Install the data with `sudo apt-get install dataset-fashion-mnist`. The run keeps a
stratified 6,000 of the 60,000 train images, so that one run takes minutes on a 2-core
CPU (2 to 8 on the machines measured), and tests on all 10,000 test images. Raise `dataset.train_size` (0 keeps
every train image) on a machine with an accelerator.

Select the CPU smoke-test variant with `--config=experiments/configs/fashion_mnist.py:test`.
"""

import ml_collections

from experiments.configs import mnist5k


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Return the config; `variant` "test" shrinks every stage to run in seconds."""
    config = mnist5k.get_config(variant)
    config.dataset.name = "fashion_mnist"
    config.dataset.train_size = 6000 if not variant else 1000
    # Drawn from the 54,000 train images that train_size leaves out, so it costs the
    # models no training data.
    if not variant:
        config.dataset.validation_size = 5000
    # The VAE trains on 1.5 times the images of mnist5k, so fewer epochs give about the
    # same number of steps.
    if not variant:
        config.vae.num_epochs = 15.0
    return config
