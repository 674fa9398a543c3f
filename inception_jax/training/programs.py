"""The compiled programs of a run: initialisation, train step, evaluation step and the BatchNorm statistics pass,
shared by every run of the process that needs the same program, and compiled before the run's clock starts.

A sweep's rows mostly differ in values: the seed, plain or residual (a shortcut gain of 0 or 1), the residual
scale. Those are inputs of the programs (the seed and, for the init program, the gains and scales are arguments;
the train and eval steps read the gains and scales from the state), so a sweep compiles
once per network shape and recipe, and a later row reuses the executables without tracing anything again.
Compiling up front (ahead of time, on the run's first real batches) keeps compile time out of the wall-time axes:
a row that compiled and one that found its programs ready are timed alike.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from inception_jax.configuration import flatten, key_in
from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.cpu import host_memory
from inception_jax.cpu.backend import describe as describe_kernels
from inception_jax.models import VALUE_KNOBS, ModelOptions, block_values, build_model, grid_17, program_options
from inception_jax.training import sharding
from inception_jax.training.train_step import (
    LeafStep,
    TrainState,
    batch_norm_statistics,
    eval_step,
    split_model,
)

log = logging.getLogger(__name__)

# Config keys no program reads: values passed to the programs as arguments (the seed; plain or residual and the
# scales, models.VALUE_KNOBS), what only the loop, the data reader or the bookkeeping
# reads, and `kernels`, which enters as the kernels it resolves to. Every other key is part of a program's
# identity, so a key forgotten here costs a compile, never a wrong program.
NOT_PROGRAM_KEYS = (
    "seed", *(f"model.{knob}" for knob in VALUE_KNOBS), "kernels",
    "train.eval_every_steps", "train.probe_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.stop_when_dead_windows", "data.data_dir", "data.num_threads", "data.prefetch_batches", "data.cache_mb",
    "init_from", "init_from_ema", "compilation_cache_dir", "compile_only", "eval_only", "sweep.", "report.",
    "distributed.",
)


def program_key(run: Any) -> str:
    """What identifies a run's programs: its config without NOT_PROGRAM_KEYS, the network's program options, the
    kernels the programs are traced with, the schedule's length and the devices."""
    facts = {"config": program_config(run.config), "network": repr(program_options(run.opts)),
             "kernels": repr(run.step_cfg.kernels), "num_steps": run.num_steps, "steps_per_epoch": run.steps_per_epoch,
             "devices": [int(i) for i in run.mesh.device_ids.flat], "mesh": list(run.mesh.axis_names)}
    return json.dumps(facts, sort_keys=True, default=repr)


def program_config(config: Any) -> dict[str, Any]:
    """The config keys a run's programs depend on (all but NOT_PROGRAM_KEYS): runs whose program_config agree
    share their programs (a sweep's lanes group rows by it without preparing them)."""
    return {key: value for key, value in flatten(config.to_dict()).items() if not key_in(key, NOT_PROGRAM_KEYS)}


def compile_steps(run: Any, shardings: Any) -> tuple[LeafStep, Any]:
    """The jitted train step (state donated, explicit in/out shardings) and eval step, compiled on first call."""
    batch_sh = sharding.batch_sharding(run.mesh)
    replicated = sharding.replicated(run.mesh)
    options = compiler_options(run)
    train_fn = LeafStep(run.step_cfg, shardings, batch_sh, replicated, compiler_options=options)
    eval_fn = jax.jit(functools.partial(eval_step, cfg=run.step_cfg), compiler_options=options,
                      in_shardings=(shardings.params, shardings.rest, batch_sh), out_shardings=replicated)
    return train_fn, eval_fn


def compiler_options(run: Any) -> dict[str, Any]:
    platform = run.mesh.devices.flat[0].platform
    return cpu_codegen.step_compiler_options(run.config.xla_cpu_codegen, platform, grid=grid_17(run.data.image_size),
                                             per_device_batch=run.config.train.batch_size // run.mesh.devices.size)


@dataclasses.dataclass
class Programs:
    """One program family. `init(seed, opts)` builds a fresh state of the variant `opts` (no EMA);
    `train` is the step; `evaluate(params, rest, batch)` the eval sums; `statistics(params, rest, batch)` one
    batch's BatchNorm statistics (None without precise BN). Train, evaluate and statistics compile on the first
    `prepare` and are executables from then on."""

    key: str
    init: Callable[[Any], TrainState]
    train: LeafStep
    evaluate: Any
    statistics: Any | None
    compiled: bool = False

    def prepare(self, state: Any, train_batch: dict, eval_batch: dict) -> None:
        """Compile the steps for these batches' shapes, unless an earlier run of this process did."""
        if self.compiled:
            log.info("the train and eval steps are an earlier run's: nothing to compile")
            return
        begin = time.perf_counter()
        self.train.compile(state, train_batch)
        self.evaluate = self.evaluate.lower(state.params, state.rest, eval_batch).compile()
        if self.statistics is not None:
            self.statistics = self.statistics.lower(state.params, state.rest, train_batch).compile()
        self.compiled = True
        log.info("compiled the train, eval%s steps in %.1f s", " and BatchNorm statistics"
                 if self.statistics is not None else "", time.perf_counter() - begin)


_PROGRAMS: dict[str, Programs] = {}
_PROGRAMS_LOCK = threading.Lock()  # sweeps/compile_ahead.py builds several families at once


def programs_for(run: Any, shardings: TrainState) -> Programs:
    """The run's programs: this process's earlier ones when the program key matches, else new ones (whose init
    is compiled here, the steps by `Programs.prepare`)."""
    key = program_key(run)
    with _PROGRAMS_LOCK:
        if key in _PROGRAMS:
            return _PROGRAMS[key]
    train_fn, eval_fn = compile_steps(run, shardings)
    statistics = None
    if run.step_cfg.statistics_graphdef is not None:
        statistics = jax.jit(functools.partial(batch_norm_statistics, cfg=run.step_cfg),
                             in_shardings=(shardings.params, shardings.rest, sharding.batch_sharding(run.mesh)),
                             out_shardings=sharding.replicated(run.mesh), compiler_options=compiler_options(run))
    log.info("%s", describe_kernels(run.step_cfg.kernels, run.mesh.devices.flat[0].platform))
    programs = Programs(key, _compiled_init(run, shardings), train_fn, eval_fn, statistics)
    with _PROGRAMS_LOCK:
        return _PROGRAMS.setdefault(key, programs)


def forget_programs() -> None:
    """Drop every compiled program this process holds (a sweep's are no use to the next one)."""
    with _PROGRAMS_LOCK:
        _PROGRAMS.clear()


def init_state(opts: ModelOptions, tx: optax.GradientTransformation, seed: int | jax.Array, values: Any = None
               ) -> TrainState:
    """A fresh state (run under `jax.jit` with out_shardings, it is created already sharded; `seed` and the block
    `values`, network.block_values' form, may be traced). The EMA starts as None here and is copied from the
    parameters by the caller: aliased buffers must not be donated (T2)."""
    _, params, rest = split_model(build_model(opts, rngs=nnx.Rngs(jax.random.key(seed)), values=values))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=tx.init(params),
                      ema_params=None)


def _compiled_init(run: Any, shardings: TrainState) -> Callable[[Any, ModelOptions], TrainState]:
    """init_state of the program's network, compiled once (on CPU without LLVM's optimisations:
    cpu_codegen.init_compiler_options). `init(seed, opts)` creates the state of the variant `opts` at once: its
    shortcut gains and scales (network.block_values) are arguments of the program, not constants of it, so every
    variant of the shape runs this one executable."""
    opts = program_options(run.opts)
    tx = run.step_cfg.tx
    no_ema = shardings.replace(ema_params=None)
    options = cpu_codegen.init_compiler_options(run.mesh.devices.flat[0].platform)
    init = jax.jit(lambda seed, values: init_state(opts, tx, seed, values), out_shardings=no_ema)
    values = jax.tree.map(lambda _: jax.ShapeDtypeStruct((), np.float32), block_values(opts))
    compiled = init.lower(jax.ShapeDtypeStruct((), np.int32), values).compile(compiler_options=options)
    return lambda seed, variant: compiled(seed, jax.tree.map(np.float32, block_values(variant)))


def release_compiler_memory(what: str) -> None:
    """glibc keeps what XLA's compiler freed (docs/performance.md §3.8); give it back (cpu/host_memory.py)."""
    released = host_memory.release_freed_memory()
    if released >= 64 << 20:
        log.info("after the %s: %d MiB of freed host memory returned to the system", what, released >> 20)
