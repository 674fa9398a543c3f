"""`init_from`: start a run from another run's checkpoint or from an exported model (fine-tuning), replacing
the classifier when the class count differs. Every other weight must fit exactly; mismatches are listed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from inception_jax.configuration import resolve_model_options
from inception_jax.models import ModelOptions
from inception_jax.models.blocks import CONSTANT_NAMES
from inception_jax.pretrained import model_io
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.optim import learning_rate_schedule, make_optimizer
from inception_jax.training.programs import init_state
from inception_jax.training.train_step import TrainState
from inception_jax.validation import ConfigError

log = logging.getLogger(__name__)
CLASSIFIERS = (("head", "fc"), ("aux", "fc"))


def resolve_source(path: str) -> tuple[str, str]:
    """('exported', dir) or ('run', run workdir) for a path given as `init_from`; a clear error otherwise."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(os.path.join(path, model_io.META_FILE)):
        return "exported", path
    if os.path.basename(path) == "checkpoints" and os.path.isfile(os.path.join(os.path.dirname(path), "config.json")):
        path = os.path.dirname(path)
    if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")):
        return "run", path
    raise ConfigError(f"init_from={path!r} is neither an exported model directory (with {model_io.META_FILE}) nor a "
                      "run workdir (with config.json and checkpoints/); give one of those")


def load_source(path: str, *, use_ema: bool) -> tuple[ModelOptions, dict[str, dict]]:
    """The source's options and {"params", "batch_stats"} pure dicts (host arrays, the source's layout)."""
    kind, path = resolve_source(path)
    if kind == "exported":
        return model_io.load_variables(path)
    return restore_run_weights(path, use_ema=use_ema)


def _merge(target: Any, loaded: Mapping, path: tuple, problems: list[str], *, optional: tuple[str, ...],
           skip: set[tuple]) -> Any:
    if not isinstance(target, Mapping):
        if np.shape(loaded) != np.shape(target):
            problems.append(f"{'/'.join(path)}: this model has {np.shape(target)}, the source {np.shape(loaded)}")
            return target
        return np.asarray(loaded)
    out = {}
    for key, value in target.items():
        here = (*path, str(key))
        if here in skip:
            out[key] = value
        elif key in loaded:
            out[key] = _merge(value, loaded[key], here, problems, optional=optional, skip=skip)
        elif key in optional:
            out[key] = value
        else:
            problems.append(f"{'/'.join(here)}: missing in the source")
    problems.extend(f"{'/'.join((*path, str(k)))}: in the source but not in this model"
                    for k in loaded if k not in target)
    return out


def merged_variables(target_params: Mapping, target_rest: Mapping, source: dict[str, dict],
                     *, replace_classifier: bool, where: str) -> tuple[dict, dict]:
    """The target's pure dicts with every weight taken from `source` (except the classifier when replaced)."""
    skip = {c for c in CLASSIFIERS} if replace_classifier else set()
    problems: list[str] = []
    params = _merge(target_params, source["params"], (), problems, optional=(), skip=skip)
    # Shortcut gains and constant residual scales are part of the target's own options, not of the weights.
    rest = _merge(target_rest, source["batch_stats"], (), problems, optional=CONSTANT_NAMES, skip=skip)
    if problems:
        raise ConfigError(f"{where}: the source does not fit this model ({len(problems)} problems): "
                          + "; ".join(problems[:10]) + ("; ..." if len(problems) > 10 else ""))
    return params, rest


def apply_init_from(state: Any, shardings: Any, opts: ModelOptions, init_from: str, *, use_ema: bool) -> Any:
    """`state` (fresh, sharded) with its weights replaced by those of `init_from`."""
    source_opts, source = load_source(init_from, use_ema=use_ema)
    source = model_io.relayout(source, source_opts.__class__(**{**source_opts.__dict__,
                                                                "scan_blocks": opts.scan_blocks}),
                               from_scanned=source_opts.scan_blocks)
    replace = source_opts.num_classes != opts.num_classes
    if replace:
        log.info("init_from: %s has %d classes, this model %d: the classifier is newly initialised",
                 init_from, source_opts.num_classes, opts.num_classes)
    params, rest = merged_variables(nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.rest), source,
                                    replace_classifier=replace, where=f"init_from={init_from!r}")
    nnx.replace_by_pure_dict(state.params, params)
    nnx.replace_by_pure_dict(state.rest, rest)
    placed = jax.device_put(state.replace(opt_state=None, ema_params=None),
                            shardings.replace(opt_state=None, ema_params=None))
    log.info("init_from: loaded %s", json.dumps({"source": init_from, "model": source_opts.name}))
    return placed


def restore_run_weights(run_dir: str, *, use_ema: bool) -> tuple[ModelOptions, dict[str, dict]]:
    """The weights of another run's latest checkpoint as {"params", "batch_stats"} host pure dicts."""
    source = prepare_source_layout(stored_config(run_dir))
    checkpoints = RunCheckpoints(os.path.join(run_dir, "checkpoints"), every_steps=1, keep=1, read_only=True)
    if checkpoints.latest_step() is None:
        raise ConfigError(f"init_from={run_dir!r}: the run has no complete checkpoint in {run_dir}/checkpoints")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract, opts = source
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    state, _ = checkpoints.restore(target)
    checkpoints.close()
    params = state.ema_params if (use_ema and state.ema_params is not None) else state.params
    variables = {"params": nnx.to_pure_dict(params), "batch_stats": _batch_stats(state.rest)}
    return opts, jax.tree.map(jax.device_get, variables)


def stored_config(run_dir: str) -> ml_collections.ConfigDict:
    """A run folder's config.json as a ConfigDict. Its `sweep` record is left out: a sweep row's overrides are keyed
    by dotted names (`model.use_residual`), which a ConfigDict refuses, and no weight depends on them (their
    values are in the config itself)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        record = json.load(f)
    record.pop("sweep", None)
    try:
        return ml_collections.ConfigDict(record)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"init_from={run_dir!r}: its config.json does not read as a config ({e})") from None


def _batch_stats(rest: nnx.State) -> dict:
    """The BatchNorm statistics of a `rest` state as a pure dict (constant scales dropped)."""
    return nnx.to_pure_dict(nnx.filter_state(rest, nnx.BatchStat))


def prepare_source_layout(source_cfg: ml_collections.ConfigDict) -> tuple[TrainState, ModelOptions]:
    """Abstract state of a stored run, rebuilt from its config.json (its optimizer decides opt_state's shape)."""
    derived = source_cfg.get("derived", {})
    opts = resolve_model_options(source_cfg, int(derived.get("num_classes") or source_cfg.model.num_classes))
    steps_per_epoch = int(derived.get("steps_per_epoch", 1))
    schedule = learning_rate_schedule(source_cfg.train, steps_per_epoch=steps_per_epoch,
                                      num_steps=int(derived.get("num_steps", 1)))
    tx = make_optimizer(source_cfg.train, schedule)
    abstract = jax.eval_shape(lambda: init_state(opts, tx, 0))
    if source_cfg.train.ema_decay:
        abstract = abstract.replace(ema_params=abstract.params)
    return abstract, opts
