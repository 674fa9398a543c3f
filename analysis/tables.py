"""The report's tables: exact numbers as DataFrames (also written as CSV) plus a display form for the HTML.

Steps to an accuracy threshold (per comparison = one group at one deepest width):
* The accuracy is eval top-1 when every run of the comparison logged at least one finite eval top-1, else train
  accuracy smoothed by a trailing mean of the last K train log lines, counted only once K lines exist (so one lucky
  early batch cannot cross). Eval top-1 is not smoothed: each point already averages the eval set. The `source`
  column says which; residual and plain runs of one comparison always use the same one.
* A run's crossing is its first log line at or above the threshold; its step and its `time` are the steps and
  seconds to reach it. A curve's value is the median over its seeds, a seed that never reached counting as
  infinitely late: the curve has reached it when more than half its seeds did (`reached` counts them).
* ratio = residual / plain (below 1: the residual net is faster), only when both reached.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.curves import SMOOTHING_WINDOW, Crossing, first_crossing, run_series
from analysis.grouping import Curve, Group, paired_runs
from analysis.runs import MetricLog, RunRecord, SkippedRun, as_float
from analysis.verdicts import UNKNOWN, VERDICTS, combine_verdicts, format_counts

SOURCE_EVAL = "eval top-1"
SOURCE_TRAIN = "train accuracy"
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5)


@dataclasses.dataclass(frozen=True)
class Table:
    name: str  # file stem of the CSV
    title: str
    data: pd.DataFrame  # exact values; NaN where there is none (not reached, not logged)
    display: pd.DataFrame  # the same rows as strings, for the HTML
    note: str = ""


def _last_logged(log: MetricLog, key: str) -> float:
    """The value on the last line that has `key` (NaN when it is non-finite: a diverged run ends on NaN)."""
    return next((as_float(record[key]) for record in reversed(log.records) if key in record), math.nan)


def final_values(run: RunRecord) -> dict[str, Any]:
    """A run's end-of-run numbers: result.json's, else the last logged value (a diverged run may have no
    result.json); the verdict fields from verdict.json, else from result.json."""
    result = run.result or {}
    verdict = run.verdict or {}

    def pick(key: str, fallback: float) -> float:
        value = as_float(result.get(key))
        return value if not math.isnan(value) else fallback

    return {
        "steps": pick("steps", float(run.last_step)),
        "wall_time_s": pick("wall_time_s", _last_logged(run.train, "time")),
        "final_train_loss": pick("final_train_loss", _last_logged(run.train, "loss")),
        "final_train_accuracy": pick("final_train_accuracy", _last_logged(run.train, "accuracy")),
        "eval_top1": pick("eval_top1", _last_logged(run.eval, "top1")),
        "eval_top5": pick("eval_top5", _last_logged(run.eval, "top5")),
        "verdict": run.verdict_name or "unknown",
        "t_death": as_float(verdict.get("t_death", result.get("t_death"))),
        "final_zero_frac": as_float(verdict.get("final_zero_frac"))
        if "final_zero_frac" in verdict else _last_logged(run.train, "prepool_zero_frac"),
    }


def threshold_source(curves: Iterable[Curve]) -> str:
    """Eval top-1 when every run compared has it, else train accuracy. Diverged runs are compared on neither (the
    findings leave them out), so one that blew up before its first evaluation does not switch the others' metric."""
    runs = [run for curve in curves for run in curve.runs if run.verdict_name != "diverged"]
    has_eval = all(np.isfinite(run.eval.scalar("top1")).any() for run in runs)
    return SOURCE_EVAL if runs and has_eval else SOURCE_TRAIN


def run_crossings(run: RunRecord, source: str, thresholds: Sequence[float], window: int = SMOOTHING_WINDOW
                  ) -> dict[float, Crossing]:
    if source == SOURCE_EVAL:
        series = run_series(run, "eval", "top1")
    else:
        series = run_series(run, "train", "accuracy", smooth=window, full_windows_only=True)
    return {t: first_crossing(series.steps, series.times, series.values, t) for t in thresholds}


def threshold_columns(run: RunRecord, thresholds: Sequence[float]) -> dict[str, int | float | None]:
    """One run's steps and seconds to each threshold, by train accuracy and by eval top-1, as results.csv names
    them (`steps_to_train_acc_0.3`, `seconds_to_eval_top1_0.3`, ...; None: not reached)."""
    columns: dict[str, int | float | None] = {}
    for source, name in ((SOURCE_TRAIN, "train_acc"), (SOURCE_EVAL, "eval_top1")):
        for t, crossing in run_crossings(run, source, thresholds).items():
            columns[f"steps_to_{name}_{t:g}"] = crossing.step
            columns[f"seconds_to_{name}_{t:g}"] = None if crossing.seconds is None else round(crossing.seconds, 2)
    return columns


@dataclasses.dataclass(frozen=True)
class CurveCrossing:
    """A curve's time to one threshold: medians over seeds (NaN = not reached) and how many seeds reached it."""

    steps: float
    seconds: float
    reached: int
    runs: int


def _median_not_reached_last(values: Iterable[float | None]) -> float:
    """Median with None as +inf; NaN when the median is not reached."""
    median = float(np.median([math.inf if v is None else v for v in values]))
    return median if math.isfinite(median) else math.nan


def curve_crossings(curve: Curve, source: str, thresholds: Sequence[float], window: int = SMOOTHING_WINDOW
                    ) -> dict[float, CurveCrossing]:
    per_run = [run_crossings(run, source, thresholds, window) for run in curve.runs]
    out = {}
    for t in thresholds:
        crossings = [c[t] for c in per_run]
        seconds = [(math.nan if c.seconds is None else c.seconds) if c.step is not None else None for c in crossings]
        out[t] = CurveCrossing(steps=_median_not_reached_last(c.step for c in crossings),
                               seconds=_median_not_reached_last(seconds),
                               reached=sum(c.step is not None for c in crossings), runs=len(crossings))
    return out


def format_number(value: float, pattern: str = "{:.3g}") -> str:
    """A table cell: the value in `pattern`, or a dash for a missing or non-finite one."""
    return "–" if value is None or not math.isfinite(value) else pattern.format(value)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if math.isfinite(numerator) and denominator > 0 else math.nan


def seed_ratios(curve: Curve, reference: Curve, source: str, threshold: float, window: int, last: int) -> str:
    """Residual steps over plain steps to `threshold`, seed by seed ('0.45, 0.60'); a seed that did not reach it
    reads 'not reached by step N' when its plain twin did, '–' when neither did, 'plain never' when only plain
    missed it."""
    parts = []
    for run, twin in paired_runs(curve, reference):
        mine = run_crossings(run, source, (threshold,), window)[threshold].step
        plain = run_crossings(twin, source, (threshold,), window)[threshold].step
        if mine is not None and plain is not None:
            parts.append(f"{mine / plain:.2f}")
        elif plain is not None:
            parts.append(f"not reached by step {last}")
        else:
            parts.append("plain never" if mine is not None else "–")
    return ", ".join(parts)


def thresholds_table(groups: Sequence[Group], thresholds: Sequence[float],
                     window: int = SMOOTHING_WINDOW) -> Table:
    rows, shown = [], []
    for group in groups:
        for width in group.widths:
            curves = group.curves_at(width)
            source = threshold_source(curves)
            crossings = {curve.label: curve_crossings(curve, source, thresholds, window) for curve in curves}
            for curve in curves:
                reference = group.reference_for(curve) if curve.is_residual else None
                last = max(run.last_step for run in curve.runs)
                row = {"group": group.key.label, "model": curve.model, "width": width, "variant": curve.label,
                       "runs": len(curve.runs), "source": source, "last_step": last}
                text = {key: str(value) for key, value in row.items()}
                for t in thresholds:
                    mine = crossings[curve.label][t]
                    plain = crossings[reference.label][t] if reference is not None else None
                    ratio_steps = _ratio(mine.steps, plain.steps) if plain else math.nan
                    ratio_seconds = _ratio(mine.seconds, plain.seconds) if plain else math.nan
                    per_seed = (seed_ratios(curve, reference, source, t, window, last)
                                if reference is not None else "")
                    row |= {f"steps@{t:g}": mine.steps, f"seconds@{t:g}": mine.seconds,
                            f"reached@{t:g}": mine.reached, f"ratio_steps@{t:g}": ratio_steps,
                            f"ratio_seconds@{t:g}": ratio_seconds, f"ratio_steps_per_seed@{t:g}": per_seed}
                    count = f" ({mine.reached}/{mine.runs})" if mine.runs > 1 else ""
                    text[f"steps ≥ {t:g}"] = (f"{mine.steps:g}" if math.isfinite(mine.steps) else f">{last}") + count
                    text[f"seconds ≥ {t:g}"] = format_number(mine.seconds, "{:.1f}")
                    text[f"res/plain steps ≥ {t:g}"] = format_number(ratio_steps)
                    text[f"res/plain s ≥ {t:g}"] = format_number(ratio_seconds)
                    text[f"res/plain steps per seed ≥ {t:g}"] = per_seed or "–"
                rows.append(row)
                shown.append(text)
    note = (f"Accuracy source per comparison: '{SOURCE_EVAL}' (unsmoothed) when every run logged eval top-1, else "
            f"'{SOURCE_TRAIN}' (trailing mean of {window} train log lines, full windows only). Per curve: median "
            f"over seeds, a seed that never reached counting as infinitely late; '>N' = not reached by step N, "
            f"'(k/n)' = seeds that reached it. Ratio = residual / plain of the same width, when both reached; per "
            f"seed, each residual run against the plain run of its seed.")
    return Table("thresholds", "Steps and seconds to reach accuracy thresholds", pd.DataFrame(rows),
                 pd.DataFrame(shown), note)


def verdict_cells(group: Group) -> pd.DataFrame:
    """One row per curve (filter count × variant): the seeds' combined verdict and the final accuracy shown on
    the heatmap: the mean final eval top-1 when every seed has one, else the mean final train accuracy; diverged
    seeds are left out of the mean."""
    rows = []
    for curve in group.curves:
        finals = [final_values(run) for run in curve.runs]
        verdict, counts = combine_verdicts(run.verdict_name for run in curve.runs)
        # A diverged run's last accuracy was measured with non-finite weights: it says nothing, so it is left out.
        usable = [f for f in finals if f["verdict"] != "diverged"]
        evals = [f["eval_top1"] for f in usable]
        trains = [f["final_train_accuracy"] for f in usable if math.isfinite(f["final_train_accuracy"])]
        if evals and all(math.isfinite(v) for v in evals):
            accuracy, source = float(np.mean(evals)), SOURCE_EVAL
        else:
            accuracy, source = (float(np.mean(trains)) if trains else math.nan), SOURCE_TRAIN
        deaths = [f["t_death"] for f in finals if f["verdict"] == "died" and math.isfinite(f["t_death"])]
        rows.append({"group": group.key.label, "width": curve.width, "variant": curve.label,
                     "runs": len(curve.runs), "verdict": verdict, "counts": format_counts(counts),
                     **{f"n_{name}": counts.get(name, 0) for name in (*VERDICTS, UNKNOWN)},
                     "accuracy": accuracy, "accuracy_source": source,
                     "final_zero_frac": float(np.mean([f["final_zero_frac"] for f in finals])),
                     "median_t_death": float(np.median(deaths)) if deaths else math.nan})
    return pd.DataFrame(rows)


def _display(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> pd.DataFrame:
    shown = frame.copy().astype(object)
    for column in shown.columns:
        shown[column] = [formats.get(column, str)(v) if not (isinstance(v, float) and math.isnan(v)) else "–"
                         for v in frame[column]]
    return shown


def verdicts_table(groups: Sequence[Group]) -> Table:
    frames = [verdict_cells(group) for group in groups]
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    columns = ["group", "width", "variant", "runs", "verdict", "counts", "accuracy", "accuracy_source",
               "final_zero_frac", "median_t_death"]
    data = data.reindex(columns=[*columns, *[c for c in data.columns if c not in columns]])
    shown = _display(data[columns] if len(data) else data, {"accuracy": "{:.3f}".format,
                                                            "final_zero_frac": "{:.4f}".format,
                                                            "median_t_death": "{:g}".format})
    note = ("Verdict per filter count × variant: the majority over seeds, a tie going to the more severe verdict "
            f"({' < '.join(VERDICTS)}); runs without a verdict count as 'unknown' "
            "and never outvote a known verdict. Accuracy: mean final eval top-1, or mean final train accuracy "
            "when a seed has no eval; diverged seeds are left out of the mean.")
    return Table("verdicts", "Dying verdicts by filter count and variant", data, shown, note)


def runs_table(groups: Sequence[Group]) -> Table:
    rows = []
    for group in groups:
        for curve in group.curves:
            for run in curve.runs:
                finals = final_values(run)
                rows.append({"run": run.label, "group": group.key.label, "model": run.model,
                             "width": run.deepest_width, "variant": run.variant, "seed": run.seed,
                             "finished": run.result is not None, **finals, "notes": "; ".join(run.warnings)})
    data = pd.DataFrame(rows)
    shown = _display(data, {"steps": "{:g}".format, "wall_time_s": "{:.1f}".format,
                            "final_train_loss": "{:.4f}".format, "final_train_accuracy": "{:.4f}".format,
                            "eval_top1": "{:.4f}".format, "eval_top5": "{:.4f}".format,
                            "t_death": "{:g}".format, "final_zero_frac": "{:.4f}".format,
                            "finished": lambda v: "yes" if v else "no (diverged, no result.json)"})
    return Table("runs", "Runs used", data, shown, "Values from result.json, else the last logged value.")


def skipped_table(skipped: Sequence[SkippedRun]) -> Table:
    data = pd.DataFrame([{"run": s.label, "status": s.status, "reason": s.reason, "path": str(s.path)}
                         for s in skipped], columns=["run", "status", "reason", "path"])
    return Table("skipped", "Runs skipped (missing, partial or invalid)", data, data.astype(str),
                 "Partial runs (no result.json yet) are never plotted; rerun the report when they finish.")
