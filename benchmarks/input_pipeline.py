"""Input-pipeline throughput next to what the model consumes, on this machine (prints figures, asserts nothing).

    TF_CPP_MIN_LOG_LEVEL=2 TF_ENABLE_ONEDNN_OPTS=0 python benchmarks/input_pipeline.py [--skip_full_model]

1. Prepares the embedded dataset (shapes_textures: the default config, and the main job's `easy` one) in a fresh
   temp dir, each in a fresh Python process (imports included), and reports the wall time and the size on disk.
2. Train-pipeline images/s (`TrainStream.iterator`, 2 threads) at the default CPU size, exactly as
   configs/ablation_scale.py feeds it (shapes_textures/easy, flip, 75 px, batch 32), and at 299 px (the default
   config, inception crop + flip, batch 8); single-threaded `batch()` too, and eval crops.
3. Model consumption, jitted `jax.value_and_grad` of the training forward pass (BatchNorm in train mode):
   - the main job's network (inception_resnet_v2_paper, width 0.125, blocks (1, 2, 2)), 75 px, batch 32;
   - inception_resnet_v2 (full), num_classes=10, 299 px, batch 8.
   Then the ratio pipeline / model (target >= 3x), and the small model fed by the pipeline vs on a resident batch.
Timings on a shared machine are noisy; compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from inception_jax.cpu import host_memory

if __name__ == "__main__":  # the allocator the main job runs with (inception_jax/cpu/host_memory.py)
    host_memory.reexec_with_huge_pages()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

FULL = dict(name="inception_resnet_v2", num_classes=10)


# Every image decoded: the rates are what a run's first read of each image costs (inception_jax/data/image_cache.py
# serves later reads; benchmarks/train_loop.py measures the loop both ways).
UNCACHED = {"cache_mb": 0}


def main_job_size() -> tuple[dict, dict, int]:
    """(model spec, DataConfig fields, batch) of configs/ablation_scale.py's default preset."""
    from inception_jax.config_files import load_config

    c = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "configs/ablation_scale.py"))
    spec = dict(name=c.model.name, num_classes=10, width_multiplier=c.model.width_multiplier,
                block_counts=tuple(c.model.block_counts))
    return spec, dict(name=c.data.name, augment=c.data.augment, image_size=c.data.image_size), c.train.batch_size


def prepare(data_dir: str, name: str) -> tuple[float, float]:
    code = ("from inception_jax.data.input_pipeline import DataConfig, dataset_info; "
            f"print(dataset_info(DataConfig(name={name!r}, data_dir={data_dir!r})).split_sizes)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(data_dir) for f in files)
    return seconds, size / 1e6


def pipeline_rate(data_dir: str, batch: int, num_batches: int, **cfg_kwargs) -> float:
    from inception_jax.data import input_pipeline as ip

    cfg = ip.DataConfig(**{**UNCACHED, "data_dir": data_dir, **cfg_kwargs})
    it = ip.create_train_stream(cfg, global_batch_size=batch, seed=0).iterator(0)
    next(it)  # threads started, first epoch's permutation drawn
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch / (time.perf_counter() - start)


def serial_rate(data_dir: str, batch: int, num_batches: int, **cfg_kwargs) -> float:
    from inception_jax.data import input_pipeline as ip

    stream = ip.create_train_stream(ip.DataConfig(**{**UNCACHED, "data_dir": data_dir, **cfg_kwargs}),
                                    global_batch_size=batch, seed=0)
    stream.batch(0)
    start = time.perf_counter()
    for step in range(1, num_batches + 1):
        stream.batch(step)
    return num_batches * batch / (time.perf_counter() - start)


def eval_rate(data_dir: str, crops: str, batch: int, num_batches: int, **cfg_kwargs) -> float:
    from inception_jax.data import input_pipeline as ip

    stream = ip.create_eval_stream(ip.DataConfig(**{**UNCACHED, "data_dir": data_dir, "eval_crops": crops,
                                                    **cfg_kwargs}),
                                   global_batch_size=batch)
    it = iter(stream)
    next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    return num_batches * batch / (time.perf_counter() - start)


def make_step(spec: dict, image_size: int, batch: int):
    """(jitted value_and_grad step, its arguments) for a model spec."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from inception_jax.models import create_model

    model = create_model(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, x, y, key):
        m = nnx.merge(graphdef, params, rest, copy=True)
        logits = m.forward(x, train=True, dropout_key=key).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
    y = jnp.zeros((batch,), jnp.int32)
    return step, (params, rest, x, y, jax.random.key(0))


def model_rate(spec: dict, image_size: int, batch: int, steps: int) -> tuple[float, float]:
    """(images/s, compile + first step seconds)."""
    import jax

    step, args = make_step(spec, image_size, batch)
    start = time.perf_counter()
    jax.block_until_ready(step(*args))
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(*args))
    return steps * batch / (time.perf_counter() - start), first


def fed_model_rate(data_dir: str, spec: dict, data: dict, batch: int, steps: int) -> tuple[float, float]:
    """Small model consuming the pipeline's batches (as training does) vs the same model on one resident batch."""
    import jax

    from inception_jax.data import input_pipeline as ip
    from inception_jax.training.train_step import model_input

    step, (params, rest, x, y, key) = make_step(spec, data["image_size"], batch)
    jax.block_until_ready(step(params, rest, x, y, key))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(step(params, rest, x, y, key))
    resident = steps * batch / (time.perf_counter() - start)
    it = ip.create_train_stream(ip.DataConfig(**{**UNCACHED, "data_dir": data_dir, **data}), global_batch_size=batch,
                                seed=0).iterator(0)
    model_input(next(it)["image"])  # compiles the uint8 -> [-1, 1] table lookup before the clock starts
    start = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        jax.block_until_ready(step(params, rest, model_input(b["image"]), b["label"], key))
    return steps * batch / (time.perf_counter() - start), resident


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip_full_model", action="store_true", help="skip the full IR-v2 at 299 (minutes)")
    parser.add_argument("--full_steps", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    spec, data, batch = main_job_size()
    size = data["image_size"]
    with tempfile.TemporaryDirectory() as data_dir:
        for name in ("shapes_textures", data["name"]):
            seconds, megabytes = prepare(data_dir, name)
            print(f"prepare {name} (16,000 + 2,000 images, fresh process incl. imports): {seconds:.1f} s, "
                  f"{megabytes:.0f} MB on disk in all (target <= 60 s)", flush=True)

        rates = {size: pipeline_rate(data_dir, batch, 80, **data),
                 299: pipeline_rate(data_dir, 8, 60, image_size=299)}
        print(f"train pipeline, 2 threads: {size} px ({data['name']}, {data['augment']}) {rates[size]:.0f} img/s, "
              f"299 px (inception crop) {rates[299]:.0f} img/s", flush=True)
        print(f"train pipeline, batch() on 1 thread: {size} px {serial_rate(data_dir, batch, 20, **data):.0f} img/s; "
              f"inception crop + color_distort: "
              f"{pipeline_rate(data_dir, batch, 20, image_size=size, color_distort=True):.0f} img/s", flush=True)
        print(f"eval pipeline at {size} px, 2 threads: " + ", ".join(
            f"{crops} crop(s) {eval_rate(data_dir, crops, b, n, name=data['name'], image_size=size):.0f} img/s"
            for crops, b, n in (("single", 100, 10), ("12", 16, 6), ("144", 2, 4))), flush=True)

        small, compile_small = model_rate(spec, size, batch, steps=10)
        print(f"model {spec} at {size} px, batch {batch}: {small:.1f} img/s (compile + first step "
              f"{compile_small:.0f} s)", flush=True)
        fed, resident = fed_model_rate(data_dir, spec, data, batch, steps=20)
        print(f"small model fed by the pipeline: {fed:.1f} img/s vs {resident:.1f} img/s on a resident batch "
              f"({100 * (1 - fed / resident):+.0f} % slower)", flush=True)
        print(f"\n{size} px : pipeline {rates[size]:8.0f} img/s / model {small:8.1f} img/s = "
              f"{rates[size] / small:6.1f}x (target >= 3x)", flush=True)
        if not args.skip_full_model:
            full, compile_full = model_rate(FULL, 299, 8, steps=args.full_steps)
            print(f"model {FULL} at 299 px, batch 8: {full:.2f} img/s (compile + first step {compile_full:.0f} s)")
            print(f"299 px: pipeline {rates[299]:8.0f} img/s / model {full:8.2f} img/s = {rates[299] / full:6.1f}x "
                  f"(target >= 3x)", flush=True)

if __name__ == "__main__":
    main()
