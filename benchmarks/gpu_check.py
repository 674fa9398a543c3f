"""The GPU check for a session lent an accelerator (the device tool): one prepared run, under 8 minutes.

    python3 benchmarks/gpu_check.py              # from the repository root, on the GPU machine (PYTHONPATH=.)
    python3 benchmarks/gpu_check.py --dry_run    # any machine: every part on a tiny network, in a minute or two

1. Training in bfloat16 works: each model (inception_resnet_v2, inception_v4, and the paper's IR-v1 / IR-v2) takes
   30 steps of the library's train step (stock kernels, as a run on a GPU gets them; RMSProp recipe, float32
   parameters, bf16 compute) on one fixed batch of random images at 299 px, batch 32; the loss must stay finite
   and fall (a network that can fit a batch trains).
2. Stock XLA against the CPU backend's forms on the GPU: the train step of inception_resnet_v2 and inception_v4 at
   299 px, batch 64, bf16, traced with the stock kernels and with the CPU kernels (`config.kernels="cpu"`: per-tap
   kernel-gradient matmuls, hand-written pooling and BatchNorm backwards), one after the other; ms per step and the
   ratio cpu / stock (above 1: stock is faster there).
3. Speed next to timm on that GPU: benchmarks/speed_vs_timm.py with bf16 compute against timm under AMP
   (bfloat16 autocast) in channels-last, 299 px, batch 64, for inception_resnet_v2 and inception_v4; it gets what
   is left of the time budget, and is skipped (not failed) when too little is left.
Prints figures and "GPU CHECK PASSED" or the failures; exits 1 on a failure. Needs only what the GPU image has
(jax with CUDA, flax, optax, torch, timm): the script avoids TensorFlow, TFDS, grain and ml_collections. Without a
GPU it says so and runs the dry run: parts 1 and 2 on a tiny network at 75 px, part 3 skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("inception_resnet_v2", "inception_v4", "inception_resnet_v1", "inception_resnet_v2_paper")
KERNEL_MODELS = ("inception_resnet_v2", "inception_v4")
BUDGET_SECONDS = 450  # the whole check, on one H100; part 3 takes what parts 1 and 2 left
TIMM_MIN_SECONDS = 120  # below this, part 3 is skipped


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs: the real check's sizes, or the dry run's tiny network."""

    train_size: int = 299
    train_batch: int = 32
    train_steps: int = 30
    kernel_size: int = 299
    kernel_batch: int = 64
    kernel_steps: int = 10
    knobs: tuple[tuple[str, object], ...] = ()
    dry_run: bool = False


DRY_RUN = Sizes(train_size=75, train_batch=8, train_steps=12, kernel_size=75, kernel_batch=8, kernel_steps=3,
                knobs=(("width_multiplier", 0.125), ("block_counts", (1, 2, 2))), dry_run=True)


def train_check(name: str, sizes: Sizes) -> tuple[bool, str]:
    import jax
    from bench_step import build_train_step

    step, state, batch_data, compile_seconds = build_train_step(
        name, size=sizes.train_size, batch=sizes.train_batch, num_classes=10, dtype="bfloat16", learning_rate=0.01,
        weight_decay=4e-5, grad_clip_norm=2.0, diagnostics=True, bn_momentum=0.9, **dict(sizes.knobs))
    begin = time.perf_counter()
    losses = []
    for _ in range(sizes.train_steps):
        state, metrics = step(state, batch_data)
        losses.append(float(metrics["loss"]))
    seconds = time.perf_counter() - begin
    ok = all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state.params)}
    return ok, (f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {sizes.train_steps} steps ({seconds:.1f} s; "
                f"compile {compile_seconds:.1f} s), parameters {sorted(dtypes)}, prepool zero fraction "
                f"{float(metrics['prepool_zero_frac']):.3f}, device {jax.devices()[0].device_kind}")


def step_milliseconds(name: str, kernels: str, sizes: Sizes) -> tuple[float, float, float]:
    """(median ms per step, compile seconds, last loss) of the bf16 train step traced with `kernels`."""
    import jax
    from bench_step import build_train_step

    step, state, batch_data, compile_seconds = build_train_step(
        name, size=sizes.kernel_size, batch=sizes.kernel_batch, dtype="bfloat16", kernels=kernels,
        **dict(sizes.knobs))
    for _ in range(3):  # warm-up
        state, metrics = step(state, batch_data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(sizes.kernel_steps):
        begin = time.perf_counter()
        state, metrics = step(state, batch_data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - begin)
    return statistics.median(times) * 1e3, compile_seconds, float(metrics["loss"])


def kernels_check(name: str, sizes: Sizes) -> tuple[bool, str]:
    """The same network and batch, stock kernels against the CPU backend's; both must train (finite loss)."""
    (stock_ms, stock_compile, stock_loss), (cpu_ms, cpu_compile, cpu_loss) = (
        step_milliseconds(name, kernels, sizes) for kernels in ("stock", "cpu"))
    ok = bool(np.isfinite(stock_loss) and np.isfinite(cpu_loss))
    return ok, (f"{name}, {sizes.kernel_size} px, batch {sizes.kernel_batch}, bf16: stock {stock_ms:.1f} ms/step "
                f"(compile {stock_compile:.0f} s), CPU forms {cpu_ms:.1f} ms/step (compile {cpu_compile:.0f} s): "
                f"cpu / stock = {cpu_ms / stock_ms:.2f}x")


def timm_check(seconds_left: float) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "speed_vs_timm.py"), "--device=gpu", "--dtype=bfloat16",
           "--batch=64", "--sizes=299", "--repeats=10", "--warmup=3"]
    try:
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=seconds_left)
    except subprocess.TimeoutExpired as e:
        return False, f"speed_vs_timm timed out after {seconds_left:.0f} s:\n{e.stdout or ''}"
    return proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry_run", action="store_true", help="every part on a tiny network (any machine)")
    args = parser.parse_args()
    sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]  # this checkout's library and bench_step
    import jax

    begin = time.perf_counter()
    platform = jax.devices()[0].platform
    sizes = DRY_RUN if args.dry_run or platform != "gpu" else Sizes()
    print(f"jax {jax.__version__}: {jax.devices()}" + ("" if platform == "gpu" or args.dry_run else
                                                        "; no GPU here: running the dry run"), flush=True)
    failures = []
    for name in MODELS:
        ok, line = train_check(name, sizes)
        print(("ok    " if ok else "FAIL  ") + line, flush=True)
        if not ok:
            failures.append(name)
    for name in KERNEL_MODELS:
        ok, line = kernels_check(name, sizes)
        print(("ok    " if ok else "FAIL  ") + line, flush=True)
        if not ok:
            failures.append(f"{name} kernels")
    left = BUDGET_SECONDS - (time.perf_counter() - begin)
    if sizes.dry_run:
        print("skip  speed_vs_timm (dry run)")
    elif left < TIMM_MIN_SECONDS:
        print(f"skip  speed_vs_timm: {left:.0f} s of the {BUDGET_SECONDS} s budget left")
    else:
        ok, text = timm_check(left)
        print(text, flush=True)
        if not ok:
            failures.append("speed_vs_timm")
    print(f"({time.perf_counter() - begin:.0f} s)")
    print("GPU CHECK PASSED" if not failures else f"GPU CHECK FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
