"""The run configuration: its schema with defaults, strict validation before anything compiles, and the few
derived values (model knobs, training length) every part of the library reads the same way.

Config files in `configs/` start from `base_config()` and change what they need; loading them and parsing their
`:arg` is config_files.py's job, and nothing here reads flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from inception_jax import validation
from inception_jax.cpu.backend import BACKEND_CHOICES
from inception_jax.cpu.codegen import CODEGENS
from inception_jax.data.data_config import DataConfig
from inception_jax.models import KNOB_DEFAULTS, MODEL_NAMES, ModelOptions, model_options
from inception_jax.validation import ConfigError

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
LR_SCHEDULES = ("staircase", "cosine", "constant")
# Knobs whose natural value is a tuple or "model default" are typed `object`, so that
# `--config.model.residual_scale=0.1`, `=(0.1,0.2,0.3)` and `--config.model.filters="(('final_conv', 512),)"`
# all parse. (filters are (key, count) pairs: config values cannot be dicts with dotted keys.)
POLYMORPHIC_KNOBS = ("use_residual", "residual_scale", "residual_scale_mode", "plain_scale", "final_block_linear",
                     "filters", "block_counts", "bn_group_size")
# Keys a resumed run may change (how long, how often, where from); anything else must match the stored run.
RESUMABLE_KEYS = ("train.num_steps", "train.num_epochs", "train.num_examples", "train.log_every_steps",
                  "train.log_dense_steps", "train.eval_every_steps", "train.probe_every_steps",
                  "train.checkpoint_every_steps", "train.keep_checkpoints", "data.data_dir", "data.num_threads",
                  "data.prefetch_batches", "data.cache_mb", "mesh.", "distributed.", "compilation_cache_dir",
                  "xla_cpu_codegen", "kernels", "compile_only", "eval_only", "train.precise_bn_batches",
                  "init_from", "init_from_ema", "sweep.", "report.")


def base_config() -> ml_collections.ConfigDict:
    """Every key a run reads, with the defaults of docs/architecture.md §6.3 (the paper's recipe)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.model.name = "inception_resnet_v2"
    c.model.num_classes = config_dict.placeholder(int)  # None: the dataset's class count
    for knob, default in KNOB_DEFAULTS.items():
        if knob in POLYMORPHIC_KNOBS:
            c.model[knob] = config_dict.placeholder(object)
            if default is not None:
                c.model[knob] = default
        else:
            c.model[knob] = default

    c.data = ml_collections.ConfigDict()
    for field in dataclasses.fields(DataConfig):  # the data defaults' one home is DataConfig
        c.data[field.name] = config_dict.placeholder(str) if field.name == "data_dir" else field.default
    c.model.image_size = c.data.get_ref("image_size")  # the aux head's kernel follows the training size

    c.train = ml_collections.ConfigDict()
    t = c.train
    t.batch_size = 32  # global
    t.num_steps = config_dict.placeholder(int)  # exactly one of num_steps / num_epochs / num_examples
    t.num_epochs = config_dict.placeholder(float)
    t.num_examples = config_dict.placeholder(int)
    t.optimizer = "rmsprop"
    t.learning_rate = 0.045
    t.lr_schedule = "staircase"  # lr * decay_rate ** floor(epoch / decay_epochs)
    t.lr_decay_rate = 0.94
    t.lr_decay_epochs = 2.0
    t.warmup_steps = 0
    t.rmsprop_decay = 0.9
    t.rmsprop_momentum = 0.9
    t.rmsprop_eps = 1.0  # inside the square root, accumulator initialised to 1 (TF1 RMSPropOptimizer)
    t.momentum = 0.9  # sgd
    t.adamw_b1 = 0.9
    t.adamw_b2 = 0.999
    t.adamw_eps = 1e-8
    t.grad_clip_norm = 2.0  # global norm; 0 disables
    t.weight_decay = 4e-5  # on conv / dense kernels only
    t.label_smoothing = 0.1
    t.aux_loss_weight = 0.4  # only when model.aux_head
    t.ema_decay = 0.9999  # 0 disables; TF's num_updates warm-up: min(decay, (1 + step) / (10 + step))
    t.log_every_steps = 10
    t.log_dense_steps = 200  # log every step before this (docs/dying.md: deaths happen early)
    t.eval_every_steps = config_dict.placeholder(int)  # None: only at the end
    t.probe_every_steps = 50
    t.checkpoint_every_steps = 500
    t.keep_checkpoints = 3
    t.eval_batch_size = config_dict.placeholder(int)  # None: train.batch_size
    # >0: before each evaluation, recompute every BatchNorm's statistics as the mean over this many training
    # batches of their own statistics in train mode ("precise BN", pycls / detectron2), and log the accuracy those
    # batches get with batch statistics (bn_batch_top1). 0: evaluate with the running averages.
    t.precise_bn_batches = 0
    t.diagnostics = True  # the dying diagnostics, computed inside the step
    t.stop_when_dead_windows = 0  # >0: end a run early once it has been dead for this many windows

    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = -1  # -1: every device of every process; N: the first N (single process only)
    c.mesh.data = -1  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1  # >1 shards large parameters and optimizer state
    c.mesh.fsdp_min_size = 2**18  # leaves smaller than this stay replicated

    c.init_from = ""  # a run workdir, its checkpoints/ dir, or an exported model dir (pretrained/model_io.py)
    c.init_from_ema = True
    c.distributed = ml_collections.ConfigDict()
    c.distributed.enabled = False  # jax.distributed.initialize(); auto-detects SLURM / TPU / cloud when no address
    c.distributed.coordinator_address = ""
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.compilation_cache_dir = "~/.cache/inception_jax/xla"
    c.xla_cpu_codegen = "tuned"  # CPU: convolutions on XLA's kernels; or "xla_default" (cpu/codegen.py)
    # How the models' ops are computed: "auto" = the CPU backend's forms on CPU, stock JAX on GPU / TPU;
    # "stock" or "cpu" forces one on any platform, for A/Bs (inception_jax/cpu/backend.py).
    c.kernels = "auto"
    # XLA:CPU's threads for this run's computations: N pins the process to N of the cores it may use before JAX
    # starts (XLA sizes its thread pool from them); 0: every core the process may use. Part of the run's identity:
    # float sums split over another thread count round differently, and a short run's numbers move with them
    # (one row: 0.754 eval top-1 on 2 threads, 0.634 on 1). A sweep with N > 0 trains rows side by side, one
    # process per N cores (sweeps/lanes.py).
    c.cpu_threads = 0
    c.compile_only = False  # compile the train step, report time and memory, exit
    c.eval_only = False  # evaluate this workdir's checkpoint (or init_from) on the eval split, write result.json
    c.report = ml_collections.ConfigDict()
    c.report.thresholds = (0.3, 0.4, 0.5)  # accuracies for the steps-to-threshold columns of results.csv / report
    c.sweep = ml_collections.ConfigDict()  # filled in by the sweep runner for each row (recorded, not read)
    c.sweep.name = ""
    c.sweep.row = ""
    c.sweep.overrides_json = ""
    c.sweep.command = ""  # the command that started the run: config.json says which command produced a folder
    return c


def model_knobs(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`config.model` -> the keyword arguments of `create_model` (None means: the architecture's default)."""
    knobs = {k: v for k, v in dict(model_cfg).items() if k not in ("name", "num_classes") and v is not None}
    for key in ("block_counts", "residual_scale"):
        if isinstance(knobs.get(key), list):
            knobs[key] = tuple(knobs[key])
    if isinstance(knobs.get("filters"), ml_collections.ConfigDict):
        knobs["filters"] = knobs["filters"].to_dict()
    return knobs


def num_train_steps(train_cfg: Any, steps_per_epoch: int) -> int:
    """The one way to say how long: exactly one of num_steps, num_epochs, num_examples (big_vision `u.steps`)."""
    given = {k: train_cfg[k] for k in ("num_steps", "num_epochs", "num_examples") if train_cfg[k] is not None}
    if len(given) != 1:
        raise ConfigError(f"train: set exactly one of num_steps, num_epochs, num_examples; got {given or 'none'}")
    (key, value), = given.items()
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"train.{key}={value!r} must be a positive number")
    if key == "num_steps":
        return int(value)
    if key == "num_epochs":
        return max(1, round(value * steps_per_epoch))
    return max(1, math.ceil(value / train_cfg.batch_size))


check_choice = functools.partial(validation.check_choice, error=ConfigError)
check_positive = functools.partial(validation.check_number, error=ConfigError)


def validate_static(config: ml_collections.ConfigDict) -> None:
    """Checks that need no dataset or devices; `training/run_checks.check_run` adds the ones that do."""
    check_choice("model.name", config.model.name, MODEL_NAMES)
    t = config.train
    check_choice("train.optimizer", t.optimizer, OPTIMIZERS)
    check_choice("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)
    check_choice("xla_cpu_codegen", config.xla_cpu_codegen, CODEGENS)
    check_choice("kernels", config.kernels, BACKEND_CHOICES)
    check_positive("cpu_threads", config.cpu_threads, integer=True, allow_zero=True)
    check_positive("train.batch_size", t.batch_size, integer=True)
    check_positive("train.learning_rate", t.learning_rate, allow_zero=True)
    for key in ("grad_clip_norm", "weight_decay", "label_smoothing", "aux_loss_weight", "ema_decay", "lr_decay_rate",
                "rmsprop_decay", "rmsprop_momentum", "rmsprop_eps", "momentum", "adamw_b1", "adamw_b2", "adamw_eps"):
        check_positive(f"train.{key}", t[key], allow_zero=True)
    check_positive("train.lr_decay_epochs", t.lr_decay_epochs)
    for key in ("warmup_steps", "stop_when_dead_windows", "precise_bn_batches"):
        check_positive(f"train.{key}", t[key], integer=True, allow_zero=True)
    for key in ("log_every_steps", "probe_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        check_positive(f"train.{key}", t[key], integer=True)
    if t.eval_every_steps is not None:
        check_positive("train.eval_every_steps", t.eval_every_steps, integer=True)
    if t.eval_batch_size is not None:
        check_positive("train.eval_batch_size", t.eval_batch_size, integer=True)
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay={t.ema_decay!r} must be in [0, 1) (0 disables the EMA)")
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing={t.label_smoothing!r} must be in [0, 1)")
    if config.mesh.fsdp < 1 or (config.mesh.data < 1 and config.mesh.data != -1):
        raise ConfigError(f"mesh.data={config.mesh.data}, mesh.fsdp={config.mesh.fsdp}: fsdp must be >= 1 and data "
                          "either -1 (all remaining devices) or >= 1")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'train.batch_size': 32, ...} (the spreadsheet's column names)."""
    out: dict[str, Any] = {}
    for key, value in dict(config).items():
        if isinstance(value, Mapping) and not (prefix + key).endswith("filters"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def key_in(key: str, keys: Sequence[str]) -> bool:
    """Whether dotted config `key` is one of `keys`, where an entry ending in "." names a whole section."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def resume_conflicts(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between a stored run's config and this one, other than RESUMABLE_KEYS. A key
    the stored config lacks (a knob added to the package since) is no conflict while it has its default value,
    which is what the stored run ran with."""
    a, b = flatten(stored), flatten(current)
    defaults = flatten(base_config().to_dict())
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key_in(key, RESUMABLE_KEYS):
            continue
        va, vb = a.get(key), b.get(key)
        if key not in a and key in defaults and _normalise(vb) == _normalise(defaults[key]):
            continue
        if _normalise(va) != _normalise(vb):
            diffs.append(f"{key}: stored {va!r}, now {vb!r}")
    return diffs


def _normalise(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _normalise(v)) for k, v in value.items()))
    return value


def resolve_model_options(config: ml_collections.ConfigDict, num_classes: int) -> ModelOptions:
    classes = config.model.num_classes or num_classes
    try:
        return model_options(config.model.name, num_classes=classes, **model_knobs(config.model))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model: {e}") from e
