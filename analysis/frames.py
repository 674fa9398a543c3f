"""A sweep's results as pandas DataFrames, for notebooks and for the sweep's results.csv.

    from analysis.frames import load_curves, load_sweep
    runs = load_sweep("workdir/ablation_scale")     # one row per run folder
    curves = load_curves("workdir/ablation_scale")  # one row per (run, split, step, metric)

Both read run folders the way the report does (analysis.runs: the same folders found, the same finished / partial
rule) and state the same numbers (analysis.tables: final values, steps to accuracy thresholds). They never compute
anything the report does not, so a notebook and the report cannot disagree.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.runs import RunRecord, SkippedRun, config_value, find_run_dirs, load_run, read_metrics
from analysis.tables import DEFAULT_THRESHOLDS, final_values, threshold_columns
from inception_jax.models.variants import display_name

# Columns holding step counts or seeds: whole numbers with gaps (pandas Int64), so results.csv writes "4", not "4.0".
_WHOLE = ("seed", "deepest_width", "steps", "t_death")
_FACTS = ("run_id", "status", "seed", "model", "dataset", "deepest_width", "variant", "variant_name", "verdict",
          "path", "notes")
_FINAL = ("steps", "wall_time_s", "final_train_loss", "final_train_accuracy", "eval_top1", "eval_top5",
          "ema_eval_top1", "t_death", "final_zero_frac")


def _run_dirs(root: Path, run_ids: Sequence[str] | None) -> list[tuple[str, Path]]:
    """(run id, folder) for every run folder under root; a run id two folders share becomes the relative path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (expected a sweep folder or a folder of runs)")
    folders = find_run_dirs(root)
    if run_ids is not None:  # the sweep's rows, in the sheet's order
        by_name = {folder.name: folder for folder in folders}
        folders = [by_name[run_id] for run_id in run_ids if run_id in by_name]
    else:  # a sweep's folders in its spreadsheet's order (sweep.json), any others after them
        try:
            listed = json.loads(((root.parent if root.name == "runs" else root) / "sweep.json").read_text())["run_ids"]
            order = {str(run_id): i for i, run_id in enumerate(listed)}
        except (OSError, ValueError, KeyError, TypeError):
            order = {}
        folders.sort(key=lambda folder: order.get(folder.name, len(order)))
    counts = Counter(folder.name for folder in folders)
    return [(folder.name if counts[folder.name] == 1 else str(folder.relative_to(root)), folder)
            for folder in folders]


def _cell(value: Any) -> Any:
    """A config or override value as one DataFrame cell: containers as their JSON."""
    return json.dumps(value, default=str) if isinstance(value, dict | list | tuple) else value


def _run_row(run_id: str, loaded: RunRecord | SkippedRun, thresholds: Sequence[float]) -> dict[str, Any]:
    config = loaded.config or {}
    overrides = config_value(config, "sweep.overrides", {})
    variant = config_value(config, "derived.variant")
    use_residual = config_value(config, "model.use_residual")
    shown = None if variant is None else display_name(str(variant), use_residual
                                                      if isinstance(use_residual, bool) else None)
    row: dict[str, Any] = {"run_id": run_id, "status": None, "seed": config.get("seed"),
                           "model": config_value(config, "model.name"),
                           "dataset": config_value(config, "data.name"),
                           "deepest_width": config_value(config, "derived.deepest_width"), "variant": variant,
                           "variant_name": shown, "verdict": None, **dict.fromkeys(_FINAL)}
    if isinstance(overrides, dict):  # a knob the config also has a column for (seed) keeps that column
        row |= {key: _cell(value) for key, value in overrides.items() if key not in row}
    if isinstance(loaded, SkippedRun):
        return row | {"status": loaded.status, "path": str(loaded.path), "notes": loaded.reason}
    result = loaded.result or {}
    finals = final_values(loaded)
    row |= {key: finals[key] for key in _FINAL if key in finals}
    row |= {"status": result.get("status") or ("diverged" if loaded.verdict_name == "diverged" else "finished"),
            "verdict": loaded.verdict_name, "ema_eval_top1": result.get("ema_eval_top1")}
    row |= threshold_columns(loaded, thresholds)
    return row | {"path": str(loaded.path), "notes": "; ".join(loaded.warnings)}


def load_sweep(path: str | Path, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
               run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per run folder under `path` (a sweep folder, its runs/ folder, a folder of sweeps or one run).

    Columns: `run_id` (the folder's name; its path relative to `path` when two folders share a name); the sweep
    row's overrides, one column per config key (e.g. `model.residual_scale`); `status` (result.json's status:
    "finished", "diverged", "stopped_dead"; else "diverged" for a run stopped by a non-finite loss, "partial" for one
    unfinished or still running, "invalid" for an unreadable folder); `seed`, `model`, `dataset`, `deepest_width` (the
    paper's filter count), `variant` (as stored, e.g. "scale=0.3") and `variant_name` (as the report says it,
    "residual, scale 0.3"); `verdict` (docs/dying.md); the final metrics (result.json's, else the last logged
    value): `steps`, `wall_time_s`, `final_train_loss`, `final_train_accuracy`, `eval_top1`, `eval_top5`,
    `ema_eval_top1`, `t_death`, `final_zero_frac`; for each threshold t, `steps_to_train_acc_<t>` (10-line trailing
    mean of train accuracy, full windows only) and `steps_to_eval_top1_<t>` with their `seconds_to_...` (empty: not
    reached); `path`; `notes` (why a run was not used, or what was ignored in its files). Partial and invalid runs
    have only what their config.json says. `run_ids` keeps only those folders, in that order (the sweep's rows).
    """
    rows = [_run_row(run_id, load_run(folder, run_id), thresholds)
            for run_id, folder in _run_dirs(Path(path), run_ids)]
    frame = pd.DataFrame.from_records(rows)
    # The sweep's knobs first, as in its spreadsheet: every override key after run_id, whichever row has it.
    overrides = list(dict.fromkeys(key for row in rows for key in row if key not in (*_FACTS, *_FINAL) and
                                   not key.startswith(("steps_to_", "seconds_to_"))))
    frame = frame[["run_id", *overrides, *[c for c in frame.columns if c != "run_id" and c not in overrides]]]
    for column in frame.columns:
        if column in _WHOLE or column.startswith("steps_to_"):
            numbers = pd.to_numeric(frame[column], errors="coerce")
            if numbers.dropna().apply(lambda v: float(v).is_integer()).all():
                frame[column] = numbers.round().astype("Int64")
    return frame


def load_curves(path: str | Path, *, run_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Every logged number of every run folder under `path` in long format: one row per (run, split, step, metric).

    Columns: `run_id` (as in load_sweep), `split` ("train", "eval", "probe"), `step`, `time` (seconds since the
    run's first step), `metric` (the metrics.jsonl key: "loss", "accuracy", "top1", "prepool_zero_frac", ...) and
    `value` (NaN where the run logged a non-finite number: a diverged loss). Partial runs are included: their
    curves so far. Per-block lists (`block_ratio/c`, ...) are left out; analysis.runs.MetricLog.blocks reads them.
    Raw values: the report's smoothing (analysis.curves.moving_mean) is not applied.
    """
    records = []
    for run_id, folder in _run_dirs(Path(path), run_ids):
        metrics = folder / "metrics.jsonl"
        if not metrics.is_file():
            continue
        logs, _ = read_metrics(metrics)
        for split, log in logs.items():
            for line in log.records:
                for key, value in line.items():
                    if key in ("step", "split", "time") or isinstance(value, bool | str | list | dict | None):
                        continue
                    number = float(value)
                    records.append((run_id, split, int(line["step"]), line.get("time"), key,
                                    number if math.isfinite(number) else math.nan))
    frame = pd.DataFrame.from_records(records, columns=["run_id", "split", "step", "time", "metric", "value"])
    frame["time"] = pd.to_numeric(frame["time"], errors="coerce")
    return frame
