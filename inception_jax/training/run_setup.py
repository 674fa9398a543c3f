"""Everything a run decides before its first step: the validated config, the dataset facts, the model options,
the training length, the mesh, the optimizer, and the train state (fresh, from `init_from`, or restored).

Every check that can fail happens in `prepare_run`, before anything compiles or a file is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import platform
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from inception_jax.configuration import ConfigError, num_train_steps, resolve_model_options, validate_static
from inception_jax.cpu.kernels import kernels_for
from inception_jax.data import input_pipeline
from inception_jax.data.input_pipeline import DataConfig
from inception_jax.data.sources import open_split, resolve_data_dir
from inception_jax.models import ModelOptions, build_model, program_options
from inception_jax.models.variants import variant_name
from inception_jax.training import sharding
from inception_jax.training.checkpointing import RunCheckpoints, abstract_with_shardings
from inception_jax.training.optim import learning_rate_schedule, make_optimizer
from inception_jax.training.programs import programs_for
from inception_jax.training.train_step import StepConfig, TrainState, split_model
from inception_jax.training.warm_start import apply_init_from, resolve_source

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Run:
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
    widths = {"a": int(model.stem.out_channels), "b": int(model.reduction_a.mixed_channels),
              "c": int(model.reduction_b.mixed_channels)}
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    return ModelFacts(graphdef, params, rest, count, widths, model.stacked_counts())


@dataclasses.dataclass(frozen=True)
class CheckedRun:
    """What `check_run` resolved: everything a run is checked against, nothing built yet."""

    data: DataConfig
    info: Any  # input_pipeline.DatasetInfo
    opts: ModelOptions
    mesh: Mesh
    steps_per_epoch: int
    num_steps: int
    eval_batch_size: int


def check_run(config: ml_collections.ConfigDict, datasets: dict | None = None) -> CheckedRun:
    """Every check of a config against its dataset and devices, building nothing: the first half of prepare_run,
    and what a sweep runs on each row before the first one trains. `datasets` caches what was read per dataset
    and splits (a sweep's rows mostly share one)."""
    validate_static(config)
    data = DataConfig.from_config(config.data)
    # First what the config and the devices decide alone: a dataset is prepared (minutes, for a large one) only
    # for a config that passes them.
    opts = resolve_model_options(config, config.model.num_classes or 1)  # the knobs; the class count comes later
    if data.image_size < opts.min_image_size:
        raise ConfigError(f"data.image_size={data.image_size} is below {opts.min_image_size}, the smallest input "
                          f"{opts.name} accepts{' with the aux head' if opts.aux_head else ''}")
    mesh = sharding.make_mesh(config.mesh)
    t = config.train
    sharding.check_batch_divisible("train.batch_size", t.batch_size, mesh)
    eval_batch_size = t.eval_batch_size or t.batch_size
    sharding.check_batch_divisible("train.eval_batch_size", eval_batch_size, mesh)
    num_train_steps(t, steps_per_epoch=1)  # exactly one length, positive; in steps it needs the dataset's size
    if t.num_steps is not None:
        check_eval_every_steps(t, t.num_steps)
    if config.init_from:
        resolve_source(config.init_from)
    info, train_examples, eval_examples = dataset_facts(data, {} if datasets is None else datasets)
    opts = resolve_model_options(config, check_num_classes(config.model.num_classes, info))
    check_batch_fits("train.batch_size", "", t.batch_size, data, "train_split", train_examples)
    # The eval stream is opened at the first evaluation, long after training started: check its split now.
    check_batch_fits(*(("train.eval_batch_size", "") if t.eval_batch_size else
                       ("train.batch_size", " (the eval batch too, as train.eval_batch_size is None)")),
                     eval_batch_size, data, "eval_split", eval_examples)
    steps_per_epoch = train_examples // t.batch_size
    num_steps = num_train_steps(t, steps_per_epoch)
    check_eval_every_steps(t, num_steps)
    return CheckedRun(data=data, info=info, opts=opts, mesh=mesh, steps_per_epoch=steps_per_epoch,
                      num_steps=num_steps, eval_batch_size=eval_batch_size)


def check_eval_every_steps(t: Any, num_steps: int) -> None:
    if t.eval_every_steps is not None and t.eval_every_steps > num_steps:
        raise ConfigError(f"train.eval_every_steps={t.eval_every_steps} is larger than the run ({num_steps} steps); "
                          f"use at most {num_steps}, or None to evaluate only at the end")


def dataset_facts(data: DataConfig, cache: dict) -> tuple[Any, int, int]:
    """(DatasetInfo, train split examples, eval split examples), the splits as sliced ('validation[:1000]')."""
    key = (data.name, data.data_dir, data.train_split, data.eval_split)
    if key not in cache:
        info = input_pipeline.dataset_info(data)
        sizes = [len(open_split(data.name, data.data_dir, split, origin=f"DataConfig.{field}"))
                 for field, split in (("train_split", data.train_split), ("eval_split", data.eval_split))]
        cache[key] = (info, *sizes)
    return cache[key]


def check_batch_fits(key: str, note: str, batch_size: int, data: DataConfig, split_field: str, examples: int
                     ) -> None:
    if batch_size > examples:
        split = getattr(data, split_field)
        raise ConfigError(f"{key}={batch_size}{note} is larger than data.{split_field}={split!r} of {data.name!r} "
                          f"({examples} examples in {resolve_data_dir(data.data_dir)}); use at most {examples}")


def check_num_classes(num_classes: Any, info: Any) -> int:
    """model.num_classes: None takes the dataset's count. A larger head is allowed on purpose (one kept from
    init_from's model, e.g. ImageNet's 1000 classes, or room for classes added later); zero, negative and fewer
    classes than the dataset's labels are refused (0 used to mean "the dataset's" silently)."""
    if num_classes is None:
        return info.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < info.num_classes:
        raise ConfigError(f"model.num_classes={num_classes!r} does not fit dataset {info.name!r}, whose labels take "
                          f"{info.num_classes} classes; use None (the dataset's count) or a count >= "
                          f"{info.num_classes} (a larger head, e.g. one kept from init_from)")
    return num_classes


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
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
        kernels=kernels_for(config.kernels, mesh.devices.flat[0].platform, config.xla_cpu_codegen),
        statistics_graphdef=model_facts(statistics_opts).graphdef if t.precise_bn_batches else None)
    return Run(config=config, workdir=os.path.abspath(workdir), opts=opts, data=data, info=checked.info,
               train_stream=stream, steps_per_epoch=stream.steps_per_epoch, num_steps=num_steps,
               eval_batch_size=checked.eval_batch_size, mesh=mesh, step_cfg=step_cfg, model_facts=facts)


def check_workdir_writable(workdir: str) -> None:
    """A workdir where nothing can be written (a read-only file system, no permission) is refused in one line
    before anything runs; the check leaves nothing behind (a probe folder, removed)."""
    existing = os.path.abspath(workdir)
    while not os.path.isdir(existing):
        if os.path.exists(existing):
            raise ConfigError(f"--workdir={workdir}: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=existing))
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} cannot be written: creating a folder in {existing} failed "
                          f"({e.strerror}); use a --workdir on a writable file system") from None


def config_record(config: ml_collections.ConfigDict, *, run_id: str, num_classes: int) -> dict:
    """config.json less `derived`: the resolved config as a run stores it, and as a rerun compares it."""
    record = json.loads(config.to_json())
    record.setdefault("run_id", run_id)
    record["model"]["num_classes"] = num_classes
    sweep = record.pop("sweep", {})
    if sweep.get("row"):
        record["run_id"] = sweep["row"]
        record["sweep"] = {"name": sweep["name"], "row": sweep["row"], "overrides": json.loads(sweep["overrides_json"])}
    return record


# ------------------------------------------------------------------------------------------------ train state
def state_layout(run: Run) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings), the EMA included when the run keeps one."""
    facts = run.model_facts
    opt_state = jax.eval_shape(run.step_cfg.tx.init, facts.abstract_params)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=facts.abstract_params,
                          rest=facts.abstract_rest, opt_state=opt_state,
                          ema_params=facts.abstract_params if run.step_cfg.ema_decay else None)
    return abstract, sharding.state_shardings(run.mesh, abstract, run.config.mesh.fsdp_min_size)


def fresh_state(run: Run, shardings: TrainState) -> TrainState:
    """A new state created already sharded (big_vision style: the full state never sits on one device).

    The initialisation is the compiled one of the run's programs (programs.py): the network with its value knobs
    at fixed values, which draws the same random numbers as the run's own (values draw none). The run's shortcut
    gains and scales are written in afterwards (with_block_values)."""
    init = programs_for(run, shardings).init
    state = with_block_values(init(np.int32(run.config.seed)), run)
    if run.config.init_from:

        state = apply_init_from(state, shardings, run.opts, run.config.init_from, use_ema=run.config.init_from_ema)
        opt_state = jax.jit(run.step_cfg.tx.init, out_shardings=shardings.opt_state)(state.params)
        state = state.replace(opt_state=opt_state)
    if run.step_cfg.ema_decay:
        # A real copy: aliased buffers in a donated state crash multi-device runs (docs/libraries.md T2).
        state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
    return state


def with_block_values(state: TrainState, run: Run) -> TrainState:
    """The state with the run's own shortcut gains and residual / plain scales in every block."""
    model = nnx.merge(run.step_cfg.graphdef, state.params, state.rest)
    model.set_block_values(run.opts)
    _, params, rest = split_model(model)
    return state.replace(params=params, rest=rest)



def restore_or_init(run: Run, checkpoints: RunCheckpoints) -> tuple[TrainState, TrainState, dict | None]:
    """(state, shardings, checkpoint meta or None). This workdir's checkpoint wins over init_from."""
    abstract, shardings = state_layout(run)
    if not (checkpoints.read_only or run.config.eval_only):
        checkpoints.check_free_space(abstract)
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore(abstract_with_shardings(abstract, shardings))
        log.info("resumed from %s at step %d", checkpoints.directory, int(meta["step"]))
        return state, shardings, meta
    return fresh_state(run, shardings), shardings, None


def log_schedule(t: Any, num_steps: int) -> tuple[int, int, int]:
    """The steps that log (train_step.is_log_step): the first `train.log_dense_steps`, every
    `train.log_every_steps`-th, and the last."""
    return int(t.log_dense_steps), int(t.log_every_steps), int(num_steps)
