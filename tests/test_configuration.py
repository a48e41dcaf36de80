"""Tests of config validation and fingerprints."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from defuse_jax import configuration, data
from defuse_jax import workdir as workdir_lib
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
        (
            "identify.noise",
            "cauchy",
            "use one of gaussian, beta, beta_uncentred, sparse",
        ),
        ("radius.num_images", -1, r"radius.num_images=-1 .* \[0, inf\]"),
        ("radius.num_perturbations", 0, r"num_perturbations=0 .* \[1, inf\]"),
        ("radius.smallest", 0.0, r"radius.smallest=0.0 .* \(0, inf\]"),
        ("radius.largest", 0.01, r"radius.largest=0.01 .* \[0.05, inf\]"),
        ("radius.largest", float("inf"), "radius.largest=inf must be a finite"),
        ("radius.steps", 0, r"radius.steps=0 .* \[1, inf\]"),
        ("radius.batch_size", 0, r"radius.batch_size=0 .* \[1, inf\]"),
        ("distill.covariance_type", "tied", "use one of diag, full"),
        ("classifier.features", (16, 0), "positive integers"),
        ("correct.lam", float("nan"), "config.correct.lam=nan must be a finite number"),
        ("annotate.annotator", "crowd", "use one of majority_source"),
        ("dataset.split_seed", -1, r"split_seed=-1 .* \[0, 4294967295\]"),
        ("dataset.validation_size", -5, r"validation_size=-5 .* \[0, inf\]"),
        ("dataset.validation_size", 0, "validation_size is 0.*lam_grid='\\(\\)'"),
        ("correct.lam_grid", (0.1, 1.5), r"lam_grid=\(0.1, 1.5\) is invalid"),
        ("correct.lam_grid", (0.1, "0.2"), "lam_grid=.* is invalid"),
        ("correct.lam_grid", (0.1, 0.1), "repeats a lambda"),
        ("correct.max_validation_drop", -0.1, r"max_validation_drop=-0.1 .* \[0, 1\]"),
    ],
)
def test_bad_values_raise_input_error(field, value, message):
    config = mnist5k.get_config()
    section, name = field.split(".")
    with config.unlocked():
        config[section][name] = value
    with pytest.raises(configuration.InputError, match=message):
        configuration.validate_config(config)


def test_fixed_lambda_needs_no_validation_split():
    config = mnist5k.get_config()
    config.correct.lam_grid = ()
    config.dataset.validation_size = 0
    configuration.validate_config(config)


def test_config_from_before_lambda_selection_is_accepted():
    config = mnist5k.get_config()
    with config.unlocked():
        del config.correct["lam_grid"]
        del config.correct["max_validation_drop"]
        del config.dataset["validation_size"]
    configuration.validate_config(config)


@pytest.mark.parametrize("kind", ["gaussian", "beta", "beta_uncentred", "sparse"])
def test_every_noise_kind_is_accepted(kind):
    config = mnist5k.get_config()
    config.identify.noise = kind
    configuration.validate_config(config)
    assert kind in configuration.NOISE_TYPES


def test_integer_radius_fields_reject_floats():
    config = mnist5k.get_config()
    config.radius = ml_collections.ConfigDict(
        {**config.radius.to_dict(), "num_perturbations": 4.0}
    )
    with pytest.raises(
        configuration.InputError, match="radius.num_perturbations must be an integer"
    ):
        configuration.validate_config(config)


def test_config_without_radius_section_raises():
    config = mnist5k.get_config()
    del config.radius
    with pytest.raises(
        configuration.InputError, match=r"missing the fields \['radius'\]"
    ):
        configuration.validate_config(config)


def test_test_variant_keeps_the_radius_small():
    radius = mnist5k.get_config("test").radius
    assert 0 < radius.num_images <= 64
    assert radius.num_perturbations * radius.steps <= 16


def test_workdir_without_radius_section_needs_allow_change(tmp_path):
    """A workdir written before the radius section existed names it in the error."""
    config = mnist5k.get_config()
    record = {"config": config.to_dict(), "dataset_digest": "abc"}
    old_record = {
        "config": {k: v for k, v in record["config"].items() if k != "radius"},
        "dataset_digest": "abc",
    }
    workdir = str(tmp_path / "old_run")
    workdir_lib.write_record(workdir, old_record, [])
    with pytest.raises(configuration.InputError) as raised:
        workdir_lib.check_workdir(workdir, record, allow_change=False)
    assert "config.radius.batch_size: '(missing)' -> 64" in str(raised.value)
    assert "--allow_config_change" in str(raised.value)
    changes = workdir_lib.check_workdir(workdir, record, allow_change=True)
    assert len(changes) == 6
    assert "config.radius.num_images: '(missing)' -> 1000" in changes
    assert all(change.startswith("config.radius.") for change in changes)


def test_unknown_variant_raises():
    with pytest.raises(ValueError, match="Unknown config variant 'huge'"):
        mnist5k.get_config("huge")


def test_fingerprint_changes_with_config():
    config = mnist5k.get_config()
    first = configuration.fingerprint(config.vae)
    assert first == configuration.fingerprint(mnist5k.get_config().vae)
    config.vae.beta = 2.0
    assert configuration.fingerprint(config.vae) != first


def _tiny_dataset(num_train=8, test_shape=(4, 4, 1)):
    return data.Dataset(
        name="tiny",
        train_images=np.zeros((num_train, 4, 4, 1), np.float32),
        train_labels=np.zeros(num_train, np.int32),
        test_images=np.zeros((3, *test_shape), np.float32),
        test_labels=np.zeros(3, np.int32),
        num_classes=2,
        class_names=("a", "b"),
    )


def test_batch_size_above_train_size_raises():
    with pytest.raises(
        configuration.InputError, match="classifier.batch_size=128 is larger"
    ):
        configuration.validate_against_dataset(mnist5k.get_config(), _tiny_dataset())


def test_split_shape_mismatch_raises():
    config = mnist5k.get_config()
    dataset = _tiny_dataset(num_train=500, test_shape=(2, 2, 1))
    with pytest.raises(configuration.InputError, match="same image shape"):
        configuration.validate_against_dataset(config, dataset)


def test_dataset_digest_changes_with_data():
    dataset = _tiny_dataset()
    first = configuration.dataset_digest(dataset)
    dataset.train_images[0, 0, 0, 0] = 1.0
    assert configuration.dataset_digest(dataset) != first


def _logits_fn(num_classes, dtype=jnp.float32, value=0.0):
    def apply_fn(params, images):
        return jnp.full((images.shape[0], num_classes), value, dtype)

    return apply_fn


def test_check_classifier_accepts_float_logits_of_every_class():
    configuration.check_classifier(_logits_fn(2), {}, _tiny_dataset())


@pytest.mark.parametrize(
    ("apply_fn", "message"),
    [
        (_logits_fn(3), r"logits of shape \(5, 3\) for 5 images; expected \(5, 2\)"),
        (lambda params, images: jnp.zeros((2, 2)), r"logits of shape \(2, 2\)"),
        (lambda params, images: np.asarray(images)[:, 0, 0], "failed under jax.jit"),
        (_logits_fn(2, jnp.int32), "dtype int32; expected a floating dtype"),
        (_logits_fn(2, value=jnp.nan), "non-finite logits"),
        (lambda params, images: params["missing"], "apply_fn failed.*KeyError"),
        (lambda params, images: jnp.argmax(images, axis=1), "logits of shape"),
    ],
)
def test_check_classifier_rejects_bad_outputs(apply_fn, message):
    with pytest.raises(configuration.InputError, match=message):
        configuration.check_classifier(apply_fn, {}, _tiny_dataset())


def test_classifier_digest_follows_outputs():
    dataset = _tiny_dataset()
    dataset.train_images[:] = 0.5
    first = configuration.check_classifier(_logits_fn(2), {}, dataset)
    assert configuration.check_classifier(_logits_fn(2), {}, dataset) == first
    other = configuration.check_classifier(_logits_fn(2, value=1.0), {}, dataset)
    assert other != first


def test_params_digest_follows_values():
    params = {"w": jnp.zeros(3)}
    assert configuration.params_digest(params) == configuration.params_digest(
        {"w": jnp.zeros(3)}
    )
    assert configuration.params_digest(params) != configuration.params_digest(
        {"w": jnp.ones(3)}
    )


def test_seed_above_uint32_raises():
    config = mnist5k.get_config()
    config.seed = 2**32
    with pytest.raises(
        configuration.InputError, match=r"seed=4294967296 .* 4294967295"
    ):
        configuration.validate_config(config)
