"""Every check of a config against its dataset and devices, building nothing (`check_run`), and the check that
a workdir can be written. prepared_run.prepare_run runs them first; a sweep runs them on every row before the
first one trains.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import ml_collections
from jax.sharding import Mesh

from inception_jax.configuration import num_train_steps, resolve_model_options, validate_static
from inception_jax.data import input_pipeline
from inception_jax.data.input_pipeline import DataConfig
from inception_jax.data.sources import open_split
from inception_jax.models import ModelOptions
from inception_jax.training import sharding
from inception_jax.training.warm_start import resolve_source
from inception_jax.validation import ConfigError


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
    input_pipeline.check_batch_fits(f"train.batch_size={t.batch_size}", t.batch_size,
                                    f"data.train_split={data.train_split!r}", data, train_examples, error=ConfigError)
    # The eval stream is opened at the first evaluation, long after training started: check its split now.
    eval_batch = (f"train.eval_batch_size={eval_batch_size}" if t.eval_batch_size else
                  f"train.batch_size={eval_batch_size} (the eval batch too, as train.eval_batch_size is None)")
    input_pipeline.check_batch_fits(eval_batch, eval_batch_size, f"data.eval_split={data.eval_split!r}", data,
                                    eval_examples, error=ConfigError)
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
