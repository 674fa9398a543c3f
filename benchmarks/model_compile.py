"""Compile time and step time of every model's forward+backward, scanned vs unrolled blocks.

    python benchmarks/model_compile.py                              # all four models, 299 px, batch 8
    python benchmarks/model_compile.py --models=inception_resnet_v2 --image_size=96 --batch=32

Prints, per model: parameter count, compile time of jit(value_and_grad(loss)) and its steady-state time (median
of --repeats after a warm-up), for both block layouts, and the ratios scanned / unrolled. The persistent
compilation cache is disabled so that compile times are real. Targets (issue #2): the scanned IR-v2 compiles in
<= 20 s and <= 1/5 of the unrolled compile; the scanned step runs within 10 % of the unrolled one. The programs
are traced with the kernels a run on this platform gets (`--kernels`, inception_jax/cpu/backend.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from inception_jax.cpu import host_memory

if __name__ == "__main__":  # the allocator the main job runs with (inception_jax/cpu/host_memory.py)
    host_memory.reexec_with_huge_pages()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from inception_jax.cpu.backend import BACKEND_CHOICES, backend_for
from inception_jax.models import MODEL_NAMES, count_params, create_model, model_options

jax.config.update("jax_enable_compilation_cache", False)


def grad_fn(model, kernels):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, x, y):
        with kernels.tracing():
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits = m.forward(x, train=True, dropout_key=jax.random.key(0)).logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.value_and_grad(loss)), params, rest


def measure(name: str, scan: bool, args) -> dict:
    model = create_model(name, scan_blocks=scan, num_classes=1000, **args.knobs)
    fn, params, rest = grad_fn(model, backend_for(args.kernels, jax.devices()[0].platform))
    x = jax.random.uniform(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3), minval=-1, maxval=1)
    y = jnp.zeros((args.batch,), jnp.int32)
    begin = time.perf_counter()
    compiled = fn.lower(params, rest, x, y).compile()
    compile_s = time.perf_counter() - begin
    jax.block_until_ready(compiled(params, rest, x, y))  # warm-up
    times = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        jax.block_until_ready(compiled(params, rest, x, y))
        times.append(time.perf_counter() - begin)
    return {"compile_s": compile_s, "step_s": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--image_size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--kernels", default="auto", choices=BACKEND_CHOICES)
    args = parser.parse_args()
    args.knobs = {"width_multiplier": args.width_multiplier}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs); "
          f"{args.image_size} px, batch {args.batch}, forward+backward, median of {args.repeats}, "
          f"kernels {args.kernels}")
    header = (f"{'model':28s} {'params':>11s} {'compile scan':>12s} {'compile unroll':>14s} {'ratio':>6s} "
              f"{'step scan':>10s} {'step unroll':>11s} {'ratio':>6s}")
    print(header)
    for name in args.models.split(","):
        params = count_params(model_options(name, **args.knobs))
        scanned, unrolled = measure(name, True, args), measure(name, False, args)
        print(f"{name:28s} {params:11,d} {scanned['compile_s']:11.1f}s {unrolled['compile_s']:13.1f}s "
              f"{scanned['compile_s'] / unrolled['compile_s']:6.2f} {scanned['step_s'] * 1e3:8.0f}ms "
              f"{unrolled['step_s'] * 1e3:9.0f}ms {scanned['step_s'] / unrolled['step_s']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
