"""What a run writes for people and scripts: clu writers (TensorBoard + log) and the plain files of
docs/run_folder.md (config.json, metrics.jsonl, verdict.json, result.json). Only process 0 writes.

clu is frozen upstream (docs/libraries.md §5), so it stays behind this one class.

Scalars reach TensorBoard as one event per log step (`ScalarBatchWriter`): clu's `SummaryWriter` runs one
TensorFlow op per scalar, which cost CPU on the background thread per log step (docs/performance.md §3.10). On a
2-core machine that CPU is taken from the model step (benchmarks/train_loop.py), and the main job logs every step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"

# TensorBoard groups a run's scalars by the first part of their tags: the train lines' keys go to the group a reader
# scans for them (docs/run_folder.md "TensorBoard"). metrics.jsonl keeps the plain keys analysis reads.
OPTIMIZER_KEYS = ("lr", "grad_norm", "update_norm", "param_norm")
DYING_KEYS = ("prepool_zero_frac", "prepool_dead_chan_frac", "prepool_mean", "prepool_std", "prepool_max",
              "feat_energy", "logit_std", "logit_absmax", "block_zero_frac", "block_ratio", "residual_scale")


def write_json_atomic(path: str, obj: Any) -> None:
    """Write-then-rename, so a reader (or a crash) never sees half a file. Strict JSON: a non-finite number (a
    diverged run's loss) is written as null, since Python's bare NaN / Infinity are refused by jq, JavaScript,
    Go and other strict readers of result.json and verdict.json."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(finite_or_null(obj), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def finite_or_null(value: Any) -> Any:
    """A JSON-ready copy of `value`: arrays and numpy scalars as Python values, non-finite floats as None."""
    if isinstance(value, Mapping):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    if isinstance(value, np.ndarray | jax.Array | np.generic):
        return finite_or_null(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"not JSON serialisable: {type(value)}")


def to_python(value: Any) -> Any:
    """Device/numpy values -> JSON values: scalars to float (NaN/Inf kept: json writes NaN/Infinity), arrays to
    lists."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return float(arr) if arr.dtype.kind == "f" else arr.item()
    return [float(v) for v in arr.reshape(-1)]


def tensorboard_tag(split: str, key: str) -> str | None:
    """The TensorBoard tag of a metrics.jsonl value (None: not written there). Train lines split into `train/`
    (loss, accuracy, throughput, progress), `optim/` (learning rate and norms) and `dying/` (the diagnostics of
    docs/dying.md); eval and probe lines keep their split as the group. `time` and `epoch` are written for train
    lines only: every split has them, and TensorBoard's own axes show them."""
    base = key.split("/", 1)[0]
    if split != "train":
        return None if base in ("time", "epoch") else f"{split}/{key}"
    group = "optim" if base in OPTIMIZER_KEYS else "dying" if base in DYING_KEYS else "train"
    return f"{group}/{key}"


def read_metrics(path: str) -> list[dict]:
    """Lines of a metrics.jsonl; a half-written last line (a crash mid-write) is dropped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: dropping an unreadable line (a run interrupted while writing)", path)
    return rows


def scalar_batch_writer(logdir: str) -> Any:
    """clu's TensorBoard `SummaryWriter`, except that `write_scalars` writes all scalars of a step as one event.

    Each value is what `tf.summary.scalar` writes (a float32 scalar tensor tagged for the scalars plugin), so
    TensorBoard and event readers see the same scalars; only the number of TensorFlow ops per step changes (1,
    not one per scalar).
    """
    import tensorflow as tf
    from clu.metric_writers import SummaryWriter
    from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    scalar_md = summary_pb2.SummaryMetadata.FromString(
        scalar_metadata.create_summary_metadata("", "").SerializeToString())
    scalar_shape = tensor_shape_pb2.TensorShapeProto()

    class ScalarBatchWriter(SummaryWriter):
        def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
            summary = summary_pb2.Summary()
            for key, value in scalars.items():
                summary.value.add(tag=key, metadata=scalar_md, tensor=tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_FLOAT, tensor_shape=scalar_shape, float_val=[float(value)]))
            with self._summary_writer.as_default():
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=int(step))

        def write_hparams(self, hparams: Mapping[str, Any]) -> None:
            # The HParams session, named after the run folder (clu's names it after a hash of the values, which is
            # what the HParams table then shows as the run's name).
            from tensorboard.plugins.hparams import api as hp

            summary = hp.hparams_pb(dict(hparams), trial_id=os.path.basename(os.path.normpath(logdir)))
            with self._summary_writer.as_default():
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)

    return ScalarBatchWriter(logdir)


class RunWriter:
    """Writes one run folder. `resume_step` truncates metrics.jsonl to the restored checkpoint: steps after it
    are recomputed identically by the resumed run, so nothing is lost and nothing is logged twice."""

    def __init__(self, workdir: str, *, resume_step: int):
        self.workdir = workdir
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self._clu = None
        if self.is_main:
            os.makedirs(workdir, exist_ok=True)
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                for row in kept:
                    f.write(json.dumps(row) + "\n")
            os.replace(tmp, self.path)
            from clu import metric_writers  # imports TensorFlow: only where something is written

            # TensorBoard events through clu; the human log is loop.py's periodic progress line, not one INFO
            # line per scalar (clu's LoggingWriter would print ~60 scalars on every log step).
            self._clu = metric_writers.AsyncWriter(scalar_batch_writer(workdir))
        self._file = open(self.path, "a") if self.is_main else None  # noqa: SIM115 (kept open for the run)

    def history(self) -> list[dict]:
        return read_metrics(self.path) if self.is_main else []

    def write(self, step: int, split: str, values: Mapping[str, Any], **extra: Any) -> dict:
        row = {"step": int(step), "split": split, **extra, **{k: to_python(v) for k, v in values.items()}}
        if not self.is_main:
            return row
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        scalars = {}
        for key, value in row.items():
            tag = None if key in ("step", "split") else tensorboard_tag(split, key)
            if tag is None:
                continue
            if isinstance(value, list):
                scalars.update({f"{tag}/{i}": v for i, v in enumerate(value) if math.isfinite(v)})
            elif isinstance(value, int | float) and math.isfinite(value):
                scalars[tag] = value
        self._clu.write_scalars(int(step), scalars)
        return row

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            write_json_atomic(os.path.join(self.workdir, name), obj)

    def close(self) -> None:
        if self.is_main:
            self._file.close()
            self._clu.flush()
            self._clu.close()
