"""What the training loop costs on top of the bare model, on this machine (prints figures, asserts nothing).

    python benchmarks/train_loop.py                   # the default CPU size and 299 px
    python benchmarks/train_loop.py --sizes=cpu       # only the default CPU size (about two minutes)

For each size it reports images/s of
  1. the bare forward+backward (jit(value_and_grad(loss)) on a batch already on the device),
  2. the train step without diagnostics (optimizer, clipping, EMA, BatchNorm updates), same batch,
  3. the train step with the dying diagnostics (what every log step computes),
  4. the training loop itself: the step fed by the real input pipeline with device prefetch, metrics fetched
     and written every log step as `train_and_evaluate` does; once with every image decoded (a run's first
     read of it), once with the decoded images cached (inception_jax/data/image_cache.py: a sweep's later runs, later
     epochs),
and how long an async checkpoint save blocks the loop. Targets (issue #4): the loop within 10 % of the bare
forward+backward, diagnostics within 5 % of a plain step, a save blocking for 1 s or less.

Sizes: `cpu` = configs/ablation_scale.py (inception_resnet_v2_paper, width 0.125, blocks (1, 2, 2), 75 px,
batch 32); `299` = the full inception_resnet_v2 at 299 px, batch 8, on the embedded dataset upscaled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from inception_jax.cpu import host_memory

if __name__ == "__main__":  # the allocator the main job runs with (inception_jax/cpu/host_memory.py)
    host_memory.reexec_with_huge_pages()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax.config_files import load_config
from inception_jax.data import image_cache
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.clock import Clock
from inception_jax.training.loop import TrainLog
from inception_jax.training.metrics import RunWriter
from inception_jax.training.prefetch import DevicePrefetch
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import compile_steps
from inception_jax.training.sharding import global_batch
from inception_jax.training.state import restore_or_init
from inception_jax.training.train_step import cross_entropy, is_log_step, model_input

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(size: str):
    c = load_config(os.path.join(ROOT, "configs/ablation_scale.py"))
    c.compilation_cache_dir = ""
    c.train.num_steps = 100_000
    if size == "299":
        c.model.name = "inception_resnet_v2"
        c.model.width_multiplier = 1.0
        c.model.block_counts = None
        c.model.filters = None
        c.data.image_size = 299
        c.train.batch_size = 8
    return c


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each `fn()`, timed in turns: one round runs every fn once, so the machine's drift (a
    shared, noisy host) hits every variant alike. A fn blocks until its work is done; one that returns a float
    has timed itself (the part of its work that counts, after an untimed warm-up of its own).

    Each fn that does not time itself runs once untimed right before its timed call. On these VMs memory left
    untouched for a few seconds is slow to touch again: the 299 px train step timed right after the bare
    forward+backward (its state idle for those 3 s) read 1.43-1.48x, and 3.15x with 3 s more of sleep in
    between; timed right after itself, 0.93-0.97x of the bare step."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds = fn()
            if not isinstance(seconds, float):  # that call touched its memory again: time the next one
                begin = time.perf_counter()
                fn()
                seconds = time.perf_counter() - begin
            times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def bare_grad(run, holder: dict, batch):
    graphdef = run.step_cfg.graphdef

    def loss(params, rest):
        out = nnx.merge(graphdef, params, rest, copy=True).forward(model_input(batch["image"]), train=True,
                                                                   dropout_key=jax.random.key(0))
        return jnp.mean(cross_entropy(out.logits, batch["label"], run.opts.num_classes, 0.0))

    # Over leaves (its own copies: the train steps donate theirs), as the loop calls its step
    # (train_step.LeafStep): jit's Python flattening of ~240 nnx Variables is not what either side computes.
    state = holder["train_fn"].state(holder["leaves"])
    params_def, rest_def = jax.tree.structure(state.params), jax.tree.structure(state.rest)
    params, rest = ([jnp.copy(x) for x in jax.tree.leaves(tree)] for tree in (state.params, state.rest))
    fn = jax.jit(lambda p, r: jax.value_and_grad(loss)(jax.tree.unflatten(params_def, p),
                                                       jax.tree.unflatten(rest_def, r)))
    return lambda: jax.block_until_ready(fn(params, rest))


def stepper(train_fn, holder: dict, batch: dict):
    def step():
        holder["leaves"], metrics = train_fn.step_leaves(holder["leaves"], batch, np.int32(0))
        jax.block_until_ready(metrics)
    return step


def measure(size: str, repeats: int, loop_steps: int) -> None:
    workdir = tempfile.mkdtemp(prefix=f"bench_loop_{size}_")
    runs = {}
    for diagnostics in (False, True):
        config = config_for(size)
        config.train.diagnostics = diagnostics
        run = prepare_run(config, os.path.join(workdir, f"diag{int(diagnostics)}"))
        checkpoints = RunCheckpoints(os.path.join(run.workdir, "checkpoints"), every_steps=10**9, keep=2)
        state, shardings, _ = restore_or_init(run, checkpoints)
        train_fn, _ = compile_steps(run, shardings)
        runs[diagnostics] = (run, checkpoints, train_fn, {"leaves": jax.tree.leaves(state), "train_fn": train_fn})
    run, checkpoints, train_fn, holder = runs[True]
    batch = global_batch(run.train_stream.batch(0), run.mesh)

    def cold_loop() -> float:
        image_cache.clear()
        return run_loop(run, holder, train_fn, loop_steps)

    figures = interleaved({
        "bare forward+backward": bare_grad(run, runs[False][3], batch),
        "train step, diagnostics off": stepper(runs[False][2], runs[False][3], batch),
        "train step, diagnostics on": stepper(train_fn, holder, batch),
        "training loop, every image decoded": cold_loop,
        # The same steps again: what a sweep's later runs (same seed, same images) and later epochs see.
        "training loop, images cached": lambda: run_loop(run, holder, train_fn, loop_steps)}, repeats)
    for name in ("training loop, every image decoded", "training loop, images cached"):
        figures[name] /= loop_steps
    begin = time.perf_counter()
    checkpoints.save(1, train_fn.state(holder["leaves"]), {"step": 1, "elapsed": 0.0}, force=True)
    blocked = time.perf_counter() - begin
    checkpoints.wait()
    total = time.perf_counter() - begin
    for _, manager, _, _ in runs.values():
        manager.close()
    bare = figures["bare forward+backward"]
    batch_size = config_for(size).train.batch_size
    print(f"\n== {size}: {run.opts.name}, {run.data.image_size} px, batch {batch_size}, "
          f"{jax.device_count()} device(s), median of {repeats} interleaved rounds (loops: {loop_steps} steps each)")
    for name, seconds in figures.items():
        print(f"  {name:46s} {batch_size / seconds:8.1f} img/s   {seconds * 1e3:8.1f} ms/step   "
              f"x{seconds / bare:5.2f} of bare")
    diag = figures["train step, diagnostics on"] / figures["train step, diagnostics off"]
    print(f"  diagnostics cost on a log step: {100 * (diag - 1):+.1f} %")
    print(f"  async checkpoint save: blocked the loop {blocked:.3f} s (write finished after {total:.2f} s)")


def run_loop(run, holder, train_fn, steps: int) -> float:
    """`steps` steps of the loop as train_and_evaluate runs them: batches from the input pipeline through device
    prefetch, each log step's metrics fetched after the next step is dispatched and written (TrainLog). The
    pipeline's start and one step to fill it are not timed. Returns the seconds of the `steps` steps."""
    writer = RunWriter(run.workdir, resume_step=0)
    batches = DevicePrefetch(run.train_stream.iterator(1), run.mesh)
    holder["leaves"], _ = train_fn.step_leaves(holder["leaves"], next(batches), np.int32(0))
    jax.block_until_ready(holder["leaves"])
    train_log = TrainLog(writer, run, Clock(0.0), [], 1, fetch=train_fn.metrics)
    begin = time.perf_counter()
    for step in range(2, steps + 2):
        holder["leaves"], metrics = train_fn.step_leaves(holder["leaves"], next(batches), np.int32(0))
        train_log.flush()
        if is_log_step(step, run.step_cfg.log_schedule):
            train_log.pending = (step, metrics, time.perf_counter())
    train_log.flush()
    jax.block_until_ready(holder["leaves"])
    seconds = time.perf_counter() - begin
    batches.close()
    writer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="cpu,299")
    parser.add_argument("--repeats", type=int, default=6, help="interleaved rounds (a third of it at 299 px)")
    parser.add_argument("--loop_steps", type=int, default=30, help="steps per timed loop (a quarter at 299 px)")
    args = parser.parse_args()
    print(host_memory.run_cpu_steps_inline())  # as the main job does (runtime.setup), before JAX's backends exist
    for size in args.sizes.split(","):
        repeats = args.repeats if size == "cpu" else max(2, args.repeats // 3)
        measure(size, repeats, args.loop_steps if size == "cpu" else max(3, args.loop_steps // 4))


if __name__ == "__main__":
    main()
