"""Everything a run decides before its first step: the checked config (run_checks), the model options and the
network's facts, the training length, the mesh, the optimizer and the step's settings, gathered in PreparedRun.

Every check that can fail happens in `prepare_run`, before anything compiles or a file is written.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from inception_jax.cpu.backend import backend_for
from inception_jax.data import input_pipeline
from inception_jax.data.input_pipeline import DataConfig
from inception_jax.models import ModelOptions, build_model, program_options
from inception_jax.models.variants import variant_name
from inception_jax.training.optim import learning_rate_schedule, make_optimizer
from inception_jax.training.run_checks import check_run
from inception_jax.training.train_step import StepConfig


@dataclasses.dataclass
class PreparedRun:
    """What `prepare_run` resolved for one run: everything the loop, the state and the programs read (analysis
    has its own `Run`: a finished run folder read back)."""

    config: ml_collections.ConfigDict
    workdir: str
    opts: ModelOptions
    data: DataConfig
    info: Any  # input_pipeline.DatasetInfo
    train_stream: Any
    steps_per_epoch: int
    num_steps: int
    eval_batch_size: int
    mesh: Mesh
    step_cfg: StepConfig
    model_facts: ModelFacts

    @property
    def derived(self) -> dict[str, Any]:
        """The facts analysis needs that no config key states directly (run_folder.md: config.json 'derived')."""
        o = self.opts
        variant = variant_name(model_name=o.name, use_residual=o.use_residual,
                               residual_scale_mode=o.residual_scale_mode, residual_scale=o.residual_scale)
        widths = self.model_facts.stage_widths
        return {"stage_widths": widths, "deepest_width": widths["c"], "variant": variant,
                "num_params": self.model_facts.num_params, "num_classes": o.num_classes,
                "steps_per_epoch": self.steps_per_epoch, "num_steps": self.num_steps,
                "devices": jax.device_count(), "processes": jax.process_count(),
                "bn_group": o.bn_group_size or self.config.train.batch_size, "machine": machine_description()}


def machine_description() -> str:
    """What ran the run, for the report: the devices' kind and count, and on CPU the processor and its cores."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{jax.device_count()} x {device.device_kind}"
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """Everything a run reads off the network before it exists, from one abstract trace (tracing a full network
    takes seconds, and a sweep does it per row)."""

    graphdef: Any
    abstract_params: nnx.State
    abstract_rest: nnx.State
    num_params: int
    stage_widths: dict[str, int]  # residual-stream (block input) width per stage
    stacked_counts: dict[str, int]


@functools.cache
def model_facts(opts: ModelOptions) -> ModelFacts:
    """Cached: the rows of a sweep ask for the same network again and again (ModelOptions is a frozen dataclass)."""
    model = nnx.eval_shape(lambda: build_model(opts))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    widths = model.stage_widths()
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    return ModelFacts(graphdef, params, rest, count, widths, model.stacked_counts())


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> PreparedRun:
    """Validate the whole config against the dataset and devices (check_run), and resolve what the run needs."""
    checked = check_run(config)
    data, opts, mesh, t = checked.data, checked.opts, checked.mesh, config.train
    stream = input_pipeline.create_train_stream(data, global_batch_size=t.batch_size, seed=config.seed,
                                                process_index=jax.process_index(),
                                                process_count=jax.process_count())
    num_steps = checked.num_steps
    schedule = learning_rate_schedule(t, steps_per_epoch=stream.steps_per_epoch, num_steps=num_steps)
    # The programs are built from the network with its value knobs at fixed values; the run's own values (plain
    # or residual, the scales) are state (fresh_state), so variants of one shape share their programs.
    shape_opts = program_options(opts)
    facts = model_facts(shape_opts)
    statistics_opts = dataclasses.replace(shape_opts, bn_momentum=0.0, dropout_rate=0.0)
    step_cfg = StepConfig(
        graphdef=facts.graphdef, tx=make_optimizer(t, schedule), schedule=schedule,
        num_classes=opts.num_classes, label_smoothing=float(t.label_smoothing),
        aux_loss_weight=float(t.aux_loss_weight), ema_decay=float(t.ema_decay), diagnostics=bool(t.diagnostics),
        learnable_scales=opts.residual_scale_mode != "constant", log_schedule=log_schedule(t, num_steps),
        kernels=backend_for(config.kernels, mesh.devices.flat[0].platform, config.xla_cpu_codegen),
        statistics_graphdef=model_facts(statistics_opts).graphdef if t.precise_bn_batches else None)
    return PreparedRun(config=config, workdir=os.path.abspath(workdir), opts=opts, data=data, info=checked.info,
               train_stream=stream, steps_per_epoch=stream.steps_per_epoch, num_steps=num_steps,
               eval_batch_size=checked.eval_batch_size, mesh=mesh, step_cfg=step_cfg, model_facts=facts)


def log_schedule(t: Any, num_steps: int) -> tuple[int, int, int]:
    """The steps that log (train_step.is_log_step): the first `train.log_dense_steps`, every
    `train.log_every_steps`-th, and the last."""
    return int(t.log_dense_steps), int(t.log_every_steps), int(num_steps)
