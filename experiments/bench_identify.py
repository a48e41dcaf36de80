r"""Benchmark the identification search: throughput, FLOP efficiency and memory.

One run measures, side by side on the same machine:
  (a) the batched search (`identify.identify`, B images x Q perturbations per jitted
      call) in decoded-and-classified samples per second, at each Q of
      --num_perturbations;
  (b) the same search with one image per jitted call, the shape of the public Defuse
      reference code;
  (c) the machine's dense float32 matmul rate (a jitted 2048 x 2048 `jnp.dot`) and the
      batched search's achieved FLOP/s as a fraction of it. FLOPs per sample are counted
      from the models' jaxprs: encoder / Q + decoder + classifier, with a transposed
      convolution counted without the zeros its input dilation inserts;
  (d) the peak resident memory of a streamed search over each of --rss_images source
      images, each in a fresh subprocess. The images are Fashion-MNIST's training set
      from Debian's dataset-fashion-mnist package when its files are in --fashion_dir,
      otherwise synthetic images of the same shape (the output says which).

The models are those of experiments/configs/mnist5k.py with random weights: the cost of
a search does not depend on the weights.

  python -m experiments.bench_identify
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from defuse_jax import classifier, identify, idx_stream, models, vae
from experiments.configs import mnist5k

_NUM_PERTURBATIONS = flags.DEFINE_list(
    "num_perturbations", ["10", "100"], "Values of Q for the batched search."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Source images per jitted call of the batched search."
)
_SAMPLES = flags.DEFINE_integer(
    "samples",
    25600,
    "Decoded samples per batched measurement (images = samples / Q).",
)
_SINGLE_SAMPLES = flags.DEFINE_integer(
    "single_samples",
    3200,
    "Decoded samples per one-image-per-call measurement.",
)
_ROUNDS = flags.DEFINE_integer(
    "rounds",
    3,
    "Rounds of (matmul, batched, one image per call) measurements, interleaved; the "
    "table gives the median of each figure and of each round's ratios.",
)
_RSS_IMAGES = flags.DEFINE_list(
    "rss_images", ["5000", "60000"], "Source image counts for the memory measurement."
)
_RSS_PERTURBATIONS = flags.DEFINE_integer(
    "rss_num_perturbations", 10, "Q for the memory measurement."
)
_FASHION_DIR = flags.DEFINE_string(
    "fashion_dir",
    "/usr/share/datasets/fashion-mnist",
    "Folder of Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz]).",
)
_OUTPUT = flags.DEFINE_string(
    "output", "", "Optional JSON file for the results; the table is always printed."
)
_RSS_CHILD = flags.DEFINE_integer(
    "rss_child", 0, "Internal: measure the memory of one search of this many images."
)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", "", "Internal: folder for decompressed or synthetic image files."
)

_MATMUL_SIZE = 2048
_NOISE = identify.NoiseConfig("gaussian", 0.5)


def _models() -> tuple[Any, ...]:
    config = mnist5k.get_config()
    image_shape = (28, 28, 1)
    vae_model = models.VAE(image_shape, config.vae.latent_dim)
    cnn = models.CNN(
        10, tuple(config.classifier.features), config.classifier.hidden_dim
    )
    example = jnp.zeros((1, *image_shape), jnp.float32)
    generator_params = vae_model.init(
        {"params": jax.random.key(0), "noise": jax.random.key(1)}, example
    )["params"]
    classifier_params = cnn.init(jax.random.key(2), example)["params"]
    return (
        vae.make_generator(vae_model),
        classifier.make_apply_fn(cnn),
        generator_params,
        classifier_params,
        config.vae.latent_dim,
    )


def _source_images(cache_dir: str) -> tuple[Any, np.ndarray, str]:
    """Fashion-MNIST train images as a lazy reader, or a synthetic file of that shape."""
    for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"):
        path = os.path.join(_FASHION_DIR.value, name)
        if os.path.isfile(path):
            images = idx_stream.open_idx_images(path, cache_dir)
            labels = np.arange(len(images), dtype=np.int32) % 10
            return images, labels, f"Fashion-MNIST train images from {path}"
    path = os.path.join(cache_dir, "synthetic-images-idx3-ubyte")
    if not os.path.isfile(path):
        rng = np.random.default_rng(0)
        with open(path + ".partial", "wb") as stream:
            stream.write(bytes([0, 0, 8, 3]))
            stream.write(np.asarray([60000, 28, 28], ">u4").tobytes())
            # 1,000 images at a time, so memory stays small.
            stream.writelines(
                rng.integers(0, 256, (1000, 28, 28), np.uint8).tobytes()
                for _ in range(60)
            )
        os.replace(path + ".partial", path)
    images = idx_stream.open_idx_images(path)
    labels = np.arange(len(images), dtype=np.int32) % 10
    return (
        images,
        labels,
        f"synthetic uniform images (no Fashion-MNIST in {_FASHION_DIR.value})",
    )


def _search(setup, images, labels, *, num_perturbations, batch_size, count):
    """Search the first `count` images, read one batch at a time."""
    generator, apply_fn, generator_params, classifier_params, _ = setup
    return identify.identify(
        generator_params,
        classifier_params,
        _Head(images, count),
        labels[:count],
        jax.random.key(0),
        generator=generator,
        apply_fn=apply_fn,
        num_perturbations=num_perturbations,
        max_flips_per_image=4,
        noise=_NOISE,
        batch_size=batch_size,
        log_every_seconds=60.0,
    )


class _Head:
    """The first `count` rows of a lazy image reader."""

    def __init__(self, images: Any, count: int):
        self._images, self.shape = images, (count, *images.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self._images[rows]


def _samples_per_second(setup, images, labels, *, num_perturbations, batch_size, count):
    """Time one search of `count` images; its compilation was cached by a warm-up."""
    start = time.perf_counter()
    _search(
        setup,
        images,
        labels,
        num_perturbations=num_perturbations,
        batch_size=batch_size,
        count=count,
    )
    return count * num_perturbations / (time.perf_counter() - start)


def _make_matmul() -> Any:
    keys = jax.random.split(jax.random.key(0))
    left = jax.random.normal(keys[0], (_MATMUL_SIZE, _MATMUL_SIZE), jnp.float32)
    right = jax.random.normal(keys[1], (_MATMUL_SIZE, _MATMUL_SIZE), jnp.float32)
    matmul = jax.jit(jnp.dot)
    matmul(left, right).block_until_ready()

    def rate() -> float:
        repeats = 10
        start = time.perf_counter()
        for _ in range(repeats):
            matmul(left, right).block_until_ready()
        return repeats * 2 * _MATMUL_SIZE**3 / (time.perf_counter() - start)

    return rate


def _layer_flops(module: Any, inputs: jax.Array, outputs: jax.Array) -> float:
    """Useful FLOPs (2 per multiply-add) of one Dense, Conv or ConvTranspose call."""
    if isinstance(module, nn.Dense):
        return 2.0 * math.prod(outputs.shape) * inputs.shape[-1]
    if isinstance(module, models.Conv | nn.Conv):
        window = math.prod(module.kernel_size)
        return 2.0 * math.prod(outputs.shape) * inputs.shape[-1] * window
    if isinstance(module, models.ConvTranspose | nn.ConvTranspose):
        # Each output reads kernel_size / strides taps of the undilated input. The
        # zeros that XLA inserts between input pixels are not counted.
        window = math.prod(module.kernel_size) / math.prod(module.strides)
        return 2.0 * math.prod(outputs.shape) * inputs.shape[-1] * window
    return 0.0


def _model_flops(fn: Any, *args: Any) -> float:
    """FLOPs of the matmul and convolution layers that `fn` calls, per its batch."""
    total = 0.0

    def count(next_fun, call_args, call_kwargs, context):
        nonlocal total
        outputs = next_fun(*call_args, **call_kwargs)
        if context.method_name == "__call__":
            total += _layer_flops(context.module, call_args[0], outputs)
        return outputs

    with nn.intercept_methods(count):
        jax.eval_shape(fn, *args)
    return total


def _layer_profile(setup, samples: int, repeats: int = 20) -> list[dict[str, Any]]:
    """Time every Dense and convolution layer of decoder + classifier alone, jitted.

    Each layer runs on the input it gets when `samples` codes are decoded and
    classified; the best of `repeats` calls is kept. The sum over layers, against the
    whole forward pass, shows what the activations, pooling and fusion cost besides.
    """
    generator, apply_fn, generator_params, classifier_params, latent_dim = setup
    captured: list[tuple[str, Any, Any, jax.Array]] = []

    def capture(next_fun, call_args, call_kwargs, context):
        outputs = next_fun(*call_args, **call_kwargs)
        module = context.module
        if context.method_name == "__call__" and _layer_flops(
            module, *call_args, outputs
        ):
            captured.append(
                (
                    "/".join(module.scope.path),
                    module.clone(parent=None),
                    {"params": module.variables["params"]},
                    call_args[0],
                )
            )
        return outputs

    codes = jax.random.normal(jax.random.key(0), (samples, latent_dim))
    with nn.intercept_methods(capture):
        apply_fn(classifier_params, generator.decode(generator_params, codes))

    def best_seconds(fn, *args) -> float:
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
        return min(times)

    rows = []
    for path, module, variables, inputs in captured:
        seconds = best_seconds(jax.jit(module.apply), variables, inputs)
        outputs = module.apply(variables, inputs)
        flops = _layer_flops(module, inputs, outputs)
        rows.append(
            {"layer": path, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9}
        )
    whole = best_seconds(
        jax.jit(lambda g, c, z: apply_fn(c, generator.decode(g, z))),
        generator_params,
        classifier_params,
        codes,
    )
    rows.append(
        {"layer": "whole decoder + classifier", "ms": whole * 1e3, "gflops": None}
    )
    return rows


def _flops_per_sample(setup) -> dict[str, float]:
    generator, apply_fn, generator_params, classifier_params, latent_dim = setup
    images = jnp.zeros((1, 28, 28, 1), jnp.float32)
    codes = jnp.zeros((1, latent_dim), jnp.float32)
    return {
        "encoder": _model_flops(generator.encode, generator_params, images),
        "decoder": _model_flops(generator.decode, generator_params, codes),
        "classifier": _model_flops(apply_fn, classifier_params, images),
    }


def _rss_child(count: int, cache_dir: str) -> None:
    setup = _models()
    images, labels, source = _source_images(cache_dir)
    if count > len(images):
        raise app.UsageError(f"--rss_child={count} exceeds the {len(images)} images.")
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    flips = _search(
        setup,
        images,
        labels,
        num_perturbations=_RSS_PERTURBATIONS.value,
        batch_size=_BATCH_SIZE.value,
        count=count,
    )
    result = {
        "images": count,
        "source": source,
        "num_perturbations": _RSS_PERTURBATIONS.value,
        "seconds": time.perf_counter() - start,
        "flips": flips.size,
        "rss_before_search_mb": baseline,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix="bench_identify_")
    if _RSS_CHILD.value:
        _rss_child(_RSS_CHILD.value, cache_dir)
        return
    setup = _models()
    images, labels, source = _source_images(cache_dir)
    print(
        f"Source images: {source}; {jax.device_count()} {jax.default_backend()} device(s)."
    )
    batch = _BATCH_SIZE.value
    results: dict[str, Any] = {"source": source, "batch_size": batch}

    matmul_rate = _make_matmul()
    flops = _flops_per_sample(setup)
    results["flops_per_sample"] = flops
    settings = [int(value) for value in _NUM_PERTURBATIONS.value]
    for q in settings:  # Compile every (B, Q) before any timing.
        for size in (batch, 1):
            _search(
                setup, images, labels, num_perturbations=q, batch_size=size, count=size
            )
    rounds: dict[str, list[float]] = {"matmul": []}
    for round_index in range(_ROUNDS.value):
        rounds["matmul"].append(matmul_rate())
        for q in settings:
            for name, size, samples in (
                ("batched", batch, _SAMPLES.value),
                ("single", 1, _SINGLE_SAMPLES.value),
            ):
                rate = _samples_per_second(
                    setup,
                    images,
                    labels,
                    num_perturbations=q,
                    batch_size=size,
                    count=max(samples // q, size),
                )
                rounds.setdefault(f"{name}_{q}", []).append(rate)
        logging.info(
            "bench_identify: round %d of %d done.", round_index + 1, _ROUNDS.value
        )
    median = {name: float(np.median(values)) for name, values in rounds.items()}
    results["rounds"] = rounds
    results["matmul_gflops"] = median["matmul"] / 1e9
    print(
        f"(c) {_MATMUL_SIZE}x{_MATMUL_SIZE} float32 matmul: {median['matmul'] / 1e9:.1f} "
        f"GFLOP/s (median of {_ROUNDS.value}; rounds "
        + ", ".join(f"{value / 1e9:.1f}" for value in rounds["matmul"])
        + f"). Model MFLOPs per image: encoder {flops['encoder'] / 1e6:.2f}, decoder "
        f"{flops['decoder'] / 1e6:.2f}, classifier {flops['classifier'] / 1e6:.2f}."
    )
    rows = []
    for q in settings:
        per_sample = flops["encoder"] / q + flops["decoder"] + flops["classifier"]
        batched, single = rounds[f"batched_{q}"], rounds[f"single_{q}"]
        fractions = [
            rate * per_sample / matmul
            for rate, matmul in zip(batched, rounds["matmul"], strict=True)
        ]
        speedups = [b / s for b, s in zip(batched, single, strict=True)]
        rows.append(
            {
                "num_perturbations": q,
                "flops_per_sample": per_sample,
                "batched_samples_per_second": median[f"batched_{q}"],
                "one_image_samples_per_second": median[f"single_{q}"],
                "speedup": float(np.median(speedups)),
                "speedup_rounds": speedups,
                "achieved_gflops": median[f"batched_{q}"] * per_sample / 1e9,
                "fraction_of_matmul": float(np.median(fractions)),
                "fraction_rounds": fractions,
            }
        )
    results["throughput"] = rows
    print(f"\n(a, b, c) B = {batch} images per call; medians of {_ROUNDS.value} rounds")
    print(
        "| Q | batched samples/s | one image per call | speed-up (rounds) | GFLOP/s "
        "| of matmul (rounds) |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['num_perturbations']} | {row['batched_samples_per_second']:,.0f} | "
            f"{row['one_image_samples_per_second']:,.0f} | {row['speedup']:.1f}x ("
            + ", ".join(f"{value:.1f}" for value in row["speedup_rounds"])
            + f") | {row['achieved_gflops']:.1f} | {row['fraction_of_matmul']:.0%} ("
            + ", ".join(f"{value:.0%}" for value in row["fraction_rounds"])
            + ") |"
        )

    profile = _layer_profile(setup, identify.CPU_SAMPLES_PER_STEP)
    results["layer_profile"] = profile
    print(
        f"\nLayer profile: each layer alone on the input of one "
        f"{identify.CPU_SAMPLES_PER_STEP}-sample step, best of 20"
    )
    print("| layer | ms | GFLOP/s |")
    print("|---|---|---|")
    for row in profile:
        rate = "" if row["gflops"] is None else f"{row['gflops']:.1f}"
        print(f"| {row['layer']} | {row['ms']:.1f} | {rate} |")
    print(f"| sum of layers | {sum(row['ms'] for row in profile[:-1]):.1f} | |")

    memory = []
    for count in (int(value) for value in _RSS_IMAGES.value):
        command = [
            sys.executable,
            "-m",
            "experiments.bench_identify",
            f"--rss_child={count}",
            f"--cache_dir={cache_dir}",
            f"--batch_size={batch}",
            f"--fashion_dir={_FASHION_DIR.value}",
            f"--rss_num_perturbations={_RSS_PERTURBATIONS.value}",
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [
            line for line in output.stdout.splitlines() if line.startswith("RESULT ")
        ]
        if output.returncode or not lines:
            raise RuntimeError(
                f"The memory measurement for {count} images failed:\n{output.stderr[-3000:]}"
            )
        memory.append(json.loads(lines[-1].removeprefix("RESULT ")))
    results["memory"] = memory
    print(
        f"\n(d) Streamed search, Q = {_RSS_PERTURBATIONS.value}, one fresh process each"
    )
    print("| source images | seconds | flips | RSS before search MB | peak RSS MB |")
    print("|---|---|---|---|---|")
    for row in memory:
        print(
            f"| {row['images']:,} | {row['seconds']:.1f} | {row['flips']:,} | "
            f"{row['rss_before_search_mb']:.0f} | {row['peak_rss_mb']:.0f} |"
        )
    if len(memory) > 1:
        ratio = memory[-1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
        results["peak_rss_ratio"] = ratio
        print(
            f"Peak RSS ratio, {memory[-1]['images']:,} to {memory[0]['images']:,} "
            f"images: {ratio:.2f}"
        )
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w", encoding="utf-8") as stream:
            json.dump(results, stream, indent=2)
    logging.info("bench_identify done.")


if __name__ == "__main__":
    app.run(main)
