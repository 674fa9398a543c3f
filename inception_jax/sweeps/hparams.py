"""A sweep in TensorBoard's HParams tab: each run's knobs, final numbers and verdict, and the sweep's table layout.

* A finished run gets its session once (`write_run_summary`, called by the sweep runner after the run): the knobs
  and the verdict as hparams, the final numbers as `final/...` scalars at the run's last step (the table shows a
  metric's last value) and the verdict as text.
* The sweep writes the experiment (`write_sweep_experiment`) into its runs/ folder, TensorBoard's logdir: every
  knob with its domain over the run folders there, and the metric list, so all runs share one table. TensorBoard
  reads the first experiment it finds (one per logdir), so there is exactly one file, replaced on every write.

Both read run folders (docs/run_folder.md) through analysis, never live objects, so their numbers are results.csv's
and the report's. Knob names are config.json keys (`model.residual_scale`), plus `variant` and `verdict`.
This module must not decide anything about training: it only describes what the run folders hold.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import mmap
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inception_jax.models.variants import display_name, parse_variant
from inception_jax.training.verdicts import VERDICTS

log = logging.getLogger(__name__)
FINAL = "final/"  # the tag group of the numbers the HParams table shows
VERDICT = "verdict"
VARIANT = "variant"
EXPERIMENT_SUFFIX = ".sweep_hparams"  # runs/events.out.tfevents.<time>...<suffix>: the sweep's experiment


@dataclasses.dataclass(frozen=True)
class Column:
    name: str  # an hparam name (a config.json key) or a metric tag
    display: str
    description: str = ""


# The knobs every run shows, besides its sweep row's overrides (their keys, values from its config.json). The
# residual knobs are as the run resolved them: config.json says null where the model's default applies.
KNOBS = (
    Column("model.name", "model"),
    Column(VARIANT, "variant", "derived.variant of config.json, in words (models/variants.py display_name)"),
    Column("derived.deepest_width", "filter count", "width of the deepest residual stage (the C blocks)"),
    Column("model.use_residual", "residual"),
    Column("model.residual_scale", "residual scale", "the constant scale(s); for learnable scales, their start"),
    Column("model.residual_scale_mode", "scale mode"),
    Column("seed", "seed"),
    Column("train.optimizer", "optimizer"),
    Column("train.learning_rate", "learning rate", "peak learning rate (train.lr_schedule shapes it)"),
    Column("train.batch_size", "batch"),
    Column("derived.num_steps", "steps", "steps trained (train.num_steps, or resolved from train.num_epochs)"),
)
VERDICT_COLUMN = Column(VERDICT, "verdict", "docs/dying.md; the same as verdict.json")
# Knobs another column already says (the variant, the filter count): never among the columns shown by default.
SAID_ELSEWHERE = ("model.use_residual", "model.residual_scale_mode", "model.filters", "model.width_multiplier")


def final_metrics(thresholds: Sequence[float]) -> list[Column]:
    """The HParams table's metric columns, in order (TensorBoard shows the first five by default): the verdict as
    a number (it colours the parallel-coordinates view), the final numbers, then the steps to each report
    threshold (blank: not reached)."""
    ranks = ", ".join(f"{i} {name}" for i, name in enumerate(VERDICTS))
    columns = [
        Column(FINAL + "verdict_rank", "verdict rank", f"{ranks} (training/verdicts.py VERDICTS)"),
        Column(FINAL + "eval_top1", "eval top-1"),
        Column(FINAL + "eval_top5", "eval top-5"),
        Column(FINAL + "train_loss", "train loss", "the last logged train loss"),
        Column(FINAL + "prepool_zero_frac", "pre-pool zeros",
               "fraction of exact zeros in the pre-pool activation, mean of the last verdict window"),
        Column(FINAL + "eval_loss", "eval loss"),
    ]
    for source, what in (("eval_top1", "eval top-1"), ("train_acc", "train accuracy (10-line mean)")):
        columns += [Column(f"{FINAL}steps_to_{source}_{t:g}", f"steps to {what} {t:g}",
                           "first log step at or above the threshold (analysis/tables.py); blank: never")
                    for t in sorted(thresholds)]
    return columns


def hparam_value(value: Any) -> bool | float | str | None:
    """A config value as TensorBoard stores an hparam: booleans, numbers (as floats) and text; lists and mappings
    as compact JSON; None (and non-finite numbers) as no value."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    return json.dumps(value, separators=(",", ":"))


def knob_values(record: Mapping[str, Any]) -> dict[str, Any]:
    """The KNOBS of a run's config.json `record` (None: the run has none)."""
    from analysis.runs import config_value

    values = {k.name: config_value(record, k.name) for k in KNOBS}
    stored = config_value(record, "derived.variant")
    if stored is None:
        return {**values, VARIANT: None}
    variant = parse_variant(stored, config_value(record, "model.use_residual"))
    scales = variant.scales
    values[VARIANT] = display_name(stored, variant.is_residual)
    values["model.use_residual"] = variant.is_residual
    if not variant.is_residual:
        values["model.residual_scale"] = values["model.residual_scale_mode"] = None
    elif scales is not None:
        values["model.residual_scale"] = scales[0] if len(set(scales)) == 1 else "/".join(f"{s:g}" for s in scales)
        values["model.residual_scale_mode"] = "constant"
    else:  # a learnable scale: the stored name is its mode
        values["model.residual_scale_mode"] = values["model.residual_scale_mode"] or stored
    return values


def session_hparams(record: Mapping[str, Any], verdict: str | None) -> dict[str, bool | float | str]:
    """A run's hparams from its config.json `record`: the KNOBS, its sweep row's overrides and the verdict."""
    from analysis.runs import config_value

    values = knob_values(record)
    for key, override in config_value(record, "sweep.overrides", {}).items():
        values.setdefault(key, config_value(record, key, override))
    values[VERDICT] = verdict
    converted = {k: hparam_value(v) for k, v in values.items()}
    return {k: v for k, v in converted.items() if v is not None}


def run_final_numbers(run: Any, thresholds: Sequence[float]) -> dict[str, float | None]:
    """The metric columns' values of one analysis.runs.RunRecord (None: none)."""
    from analysis.tables import final_values, threshold_columns

    final = final_values(run)
    result = run.result or {}
    eval_loss = result.get("eval_loss")
    if eval_loss is None and run.eval.records:
        eval_loss = run.eval.records[-1].get("loss")
    verdict = final["verdict"]
    numbers = {
        "verdict_rank": float(VERDICTS.index(verdict)) if verdict in VERDICTS else None,
        "eval_top1": final["eval_top1"], "eval_top5": final["eval_top5"], "eval_loss": eval_loss,
        "train_loss": final["final_train_loss"], "prepool_zero_frac": final["final_zero_frac"],
        **{k: v for k, v in threshold_columns(run, thresholds).items() if k.startswith("steps_to_")},
    }
    return {FINAL + k: None if v is None or not math.isfinite(v) else float(v) for k, v in numbers.items()}


def has_session(run_dir: str) -> bool:
    """Whether a run folder's TensorBoard events already hold its HParams session (a byte search: no parsing)."""
    from tensorboard.plugins.hparams import metadata

    tag = metadata.SESSION_START_INFO_TAG.encode()
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                if data.find(tag) >= 0:
                    return True
    return False


def write_run_summary(run_dir: str) -> None:
    """A finished run's final numbers and verdict (at its last step) and, once per run folder, its HParams session,
    in an events file of its own in the run folder. A run that finishes again after a resume rewrites the numbers
    and keeps the session it has. Only process 0 writes (the run's files are process 0's)."""
    import jax

    from analysis.runs import RunRecord, load_run
    from inception_jax.training.metrics import scalar_batch_writer

    if jax.process_index() != 0:
        return
    run = load_run(Path(run_dir), os.path.basename(run_dir.rstrip("/")))
    if not isinstance(run, RunRecord):
        log.warning("no HParams session for %s: %s", run_dir, run.reason)
        return
    thresholds = run.config.get("report", {}).get("thresholds", ())
    verdict = run.verdict or {}
    step = int((run.result or {}).get("steps") or run.last_step or 0)
    text = f"{run.verdict_name} (t_death {verdict.get('t_death')}): {verdict.get('definition', '')}"
    numbers = {k: v for k, v in run_final_numbers(run, thresholds).items() if v is not None}
    session = not has_session(run_dir)
    writer = scalar_batch_writer(run_dir)
    try:
        writer.write_scalars(step, numbers)
        writer.write_texts(step, {FINAL + VERDICT: text})
        if session:
            writer.write_hparams(session_hparams(run.config, run.verdict_name))
    finally:
        writer.flush()
        writer.close()


def experiment_summary(records: Sequence[Mapping[str, Any]], thresholds: Sequence[float]) -> Any:
    """The HParams experiment (a Summary proto) of runs whose config.json are `records`: each hparam with the
    values the runs have (a discrete domain, so the table filters by value) and the metric columns."""
    from tensorboard.plugins.hparams import api as hp
    from tensorboard.plugins.hparams import plugin_data_pb2

    seen: dict[str, list] = {}
    for record in records:
        for name, value in session_hparams(record, None).items():
            seen.setdefault(name, []).append(value)
    seen[VERDICT] = list(VERDICTS)
    columns = {c.name: c for c in (*KNOBS, VERDICT_COLUMN)}
    hparams = []
    for name, values in seen.items():
        kinds = {bool if isinstance(v, bool) else type(v) for v in values}
        domain = hp.Discrete(sorted(set(values))) if len(kinds) == 1 else None  # mixed kinds: no domain
        column = columns.get(name, Column(name, name, "a sweep row override"))
        hparams.append(hp.HParam(name, domain, display_name=column.display, description=column.description))
    metrics = [hp.Metric(c.name, display_name=c.display, description=c.description)
               for c in final_metrics(thresholds)]
    summary = hp.hparams_config_pb(hparams, metrics)
    # TensorBoard sorts the knobs marked `differs` first, then by name, and shows the first five: the verdict and the
    # knobs the runs vary, unless another column says them.
    value = summary.value[0]
    data = plugin_data_pb2.HParamsPluginData()
    data.ParseFromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        varies = len(set(seen[info.name])) > 1 and info.name not in SAID_ELSEWHERE
        info.differs = info.name == VERDICT or varies
    value.metadata.plugin_data.content = data.SerializeToString()
    return summary


def write_sweep_experiment(runs_dir: str) -> str | None:
    """The sweep's HParams experiment over the run folders in `runs_dir` that have config.json, as the one
    experiment events file there (older ones removed, so TensorBoard, which reads the first, reads this one).
    None when no run folder has a config yet."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    records = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "*", "config.json"))):
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("HParams experiment: %s skipped (%s)", path, e)
    if not records:
        return None
    thresholds = sorted({float(t) for r in records for t in r.get("report", {}).get("thresholds", ())})
    pattern = os.path.join(runs_dir, f"events.out.tfevents.*{EXPERIMENT_SUFFIX}")
    old = set(glob.glob(pattern))
    writer = EventFileWriter(runs_dir, filename_suffix=EXPERIMENT_SUFFIX)
    writer.add_event(event_pb2.Event(wall_time=time.time(), step=0,
                                     summary=experiment_summary(records, thresholds)))
    writer.close()
    for path in old:
        os.remove(path)
    (new,) = set(glob.glob(pattern)) - old
    return new
