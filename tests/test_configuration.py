"""Tests of config validation and fingerprints."""

import pytest

from defuse_jax import configuration
from experiments.configs import mnist5k


@pytest.mark.parametrize("variant", ["", "test"])
def test_shipped_configs_are_valid(variant):
    configuration.validate_config(mnist5k.get_config(variant))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "correct.lam",
            1.5,
            r"config.correct.lam=1.5 is out of range; allowed range is \[0, 1\]",
        ),
        ("distill.truncation", 0, r"config.distill.truncation=0 .* \[1, inf\]"),
        ("identify.num_perturbations", 0, r"num_perturbations=0 .* \[1, inf\]"),
        ("vae.latent_dim", -3, r"latent_dim=-3 .* \[1, inf\]"),
        ("identify.noise_scale", 0.0, r"noise_scale=0.0 .* \(0, inf\]"),
        ("identify.noise", "cauchy", "use one of gaussian, beta"),
        ("distill.covariance_type", "tied", "use one of diag, full"),
        ("classifier.features", (16, 0), "positive integers"),
    ],
)
def test_bad_values_raise_input_error(field, value, message):
    config = mnist5k.get_config()
    section, name = field.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(configuration.InputError, match=message):
        configuration.validate_config(config)


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="Unknown config variant 'huge'"):
        mnist5k.get_config("huge")


def test_fingerprint_changes_with_config():
    config = mnist5k.get_config()
    first = configuration.fingerprint(config.vae)
    assert first == configuration.fingerprint(mnist5k.get_config().vae)
    config.vae.beta = 2.0
    assert configuration.fingerprint(config.vae) != first
