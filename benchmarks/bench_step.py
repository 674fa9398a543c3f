"""The library's jitted train step on a random resident batch, as the benchmarks time it (no data pipeline).

Plain attributes instead of an ml_collections config, so the GPU check also runs on an image that lacks it.
"""

from __future__ import annotations

import time
import types
from typing import Any

import numpy as np

from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.cpu import host_memory


def build_train_step(name: str, *, size: int, batch: int, num_classes: int = 1000, dtype: str = "float32",
                     learning_rate: float = 0.045, weight_decay: float = 0.0, grad_clip_norm: float = 0.0,
                     diagnostics: bool = False, logs: bool = False, codegen: str = "tuned", kernels: str = "auto",
                     **model_knobs: Any):
    """(compiled step, state, batch, compile seconds) for the recipe's RMSProp (TF settings) on model `name`.

    EMA, label smoothing and the aux loss are off, so the step does what a plain framework's training step does.
    `logs=False` times a step that does not log (most of a run's steps: the default config logs every 10th after
    the first 200), which skips the global norms of the logged metrics (train_step.py). `codegen` is the config's
    `xla_cpu_codegen` (cpu/codegen.py) and `kernels` its `kernels` ("auto": the CPU backend's on CPU, stock JAX
    elsewhere; cpu/backend.py), as the training loop compiles with them. Single-device steps run inline on CPU, as
    in the main job (host_memory.run_cpu_steps_inline), when this is the process's first use of JAX.
    """
    host_memory.run_cpu_steps_inline()  # as the main job runs its steps (runtime.setup); before JAX's backends exist
    import jax
    import optax
    from flax import nnx

    from inception_jax.cpu.backend import backend_for
    from inception_jax.models import build_model, grid_17, model_options
    from inception_jax.training.optim import make_optimizer
    from inception_jax.training.programs import init_state
    from inception_jax.training.train_step import StepConfig, train_step

    t = types.SimpleNamespace(optimizer="rmsprop", rmsprop_decay=0.9, rmsprop_momentum=0.9, rmsprop_eps=1.0,
                              weight_decay=weight_decay, grad_clip_norm=grad_clip_norm)
    opts = model_options(name, num_classes=num_classes, dtype=dtype, dropout_rate=0.0, image_size=size,
                         **model_knobs)
    schedule = optax.constant_schedule(learning_rate)
    tx = make_optimizer(t, schedule)
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(opts)), nnx.Param, ...)[0]
    cfg = StepConfig(graphdef=graphdef, tx=tx, schedule=schedule, num_classes=num_classes, label_smoothing=0.0,
                     aux_loss_weight=0.0, ema_decay=0.0, diagnostics=diagnostics, learnable_scales=False,
                     log_schedule=(0, 1, 0) if logs else (0, 2**31 - 1, -1),
                     kernels=backend_for(kernels, jax.devices()[0].platform, codegen))
    state = jax.jit(lambda: init_state(opts, tx, 0))()
    rng = np.random.default_rng(0)
    data = jax.device_put({"image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
                           "label": rng.integers(0, num_classes, batch).astype(np.int32)})
    begin = time.perf_counter()
    options = cpu_codegen.step_compiler_options(codegen, jax.devices()[0].platform, per_device_batch=batch,
                                                grid=grid_17(size))  # as the training loop compiles
    step = jax.jit(lambda state, batch: train_step(state, batch, 0, cfg), donate_argnums=0,
                   compiler_options=options).lower(state, data).compile()
    seconds = time.perf_counter() - begin
    host_memory.release_freed_memory()  # what the training loop does after compiling (programs.release_compiler_memory)
    return step, state, data, seconds
