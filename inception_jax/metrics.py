"""What a run writes for people and scripts: clu writers (TensorBoard + log) and the plain files of
docs/run_folder.md (config.json, metrics.jsonl, verdict.json, result.json). Only process 0 writes.

clu is frozen upstream (ECOSYSTEM.md §5), so it stays behind this one class.
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


def write_json_atomic(path: str, obj: Any) -> None:
    """Write-then-rename, so a reader (or a crash) never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def to_python(value: Any) -> Any:
    """Device/numpy values -> JSON values: scalars to float (NaN/Inf kept: json writes NaN/Infinity), arrays to
    lists."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return float(arr) if arr.dtype.kind == "f" else arr.item()
    return [float(v) for v in arr.reshape(-1)]


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

            # TensorBoard events through clu; the human log is train.py's periodic progress line, not one INFO
            # line per scalar (clu's LoggingWriter would print ~60 scalars on every log step).
            self._clu = metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
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
            if key in ("step", "split"):
                continue
            if isinstance(value, list):
                scalars.update({f"{split}/{key}/{i}": v for i, v in enumerate(value)})
            elif isinstance(value, int | float) and math.isfinite(value):
                scalars[f"{split}/{key}"] = value
        self._clu.write_scalars(int(step), scalars)
        return row

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            write_json_atomic(os.path.join(self.workdir, name), obj)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self.is_main:
            flat = {k: v for k, v in hparams.items() if isinstance(v, int | float | str | bool)}
            self._clu.write_hparams(flat)

    def close(self) -> None:
        if self.is_main:
            self._file.close()
            self._clu.flush()
            self._clu.close()
