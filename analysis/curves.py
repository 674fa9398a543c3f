"""The numbers behind every line: moving means, threshold crossings and the band over seeds. No plotting here.

Rules (the report states them too):
* Train loss and train accuracy are smoothed by a trailing mean over the last SMOOTHING_WINDOW train log lines
  (lines, not steps: after step 200 a line may cover several steps). A window holding a non-finite value is NaN,
  so a diverged run's curve stops at the divergence instead of averaging it away.
* Curves over several seeds are the mean of the seeds that have a finite value at that step, with a min–max band
  over the same seeds; against wall time the x value is the mean over those seeds of the time of that step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from analysis.runs import RunRecord

SMOOTHING_WINDOW = 10  # log lines; docs/dying.md's K (and its "10-step-mean loss" when logging every step)


def moving_mean(values: np.ndarray, window: int, *, full_windows_only: bool = False) -> np.ndarray:
    """Trailing mean over `window` entries. The first window-1 entries average what exists so far, or are NaN
    with `full_windows_only`. Any NaN inside a window makes that entry NaN."""
    if window < 1:
        raise ValueError(f"smoothing window={window}: must be a positive number of log lines")
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    bad = np.concatenate([[0], np.cumsum(~finite)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    out = (sums[ends] - sums[starts]) / (ends - starts)
    out[(bad[ends] - bad[starts]) > 0] = np.nan
    if full_windows_only:
        out[ends < window] = np.nan
    return out


@dataclasses.dataclass(frozen=True)
class Crossing:
    """The first log line at which a curve reaches a threshold; step and seconds are None when it never does."""

    step: int | None
    seconds: float | None


def first_crossing(steps: np.ndarray, times: np.ndarray, values: np.ndarray, threshold: float) -> Crossing:
    """First entry with value >= threshold (NaN never counts)."""
    with np.errstate(invalid="ignore"):
        hits = np.flatnonzero(np.asarray(values) >= threshold)
    if hits.size == 0:
        return Crossing(None, None)
    seconds = float(times[hits[0]])
    return Crossing(int(steps[hits[0]]), seconds if np.isfinite(seconds) else None)


@dataclasses.dataclass(frozen=True)
class RunSeries:
    steps: np.ndarray
    times: np.ndarray
    values: np.ndarray


def run_series(run: RunRecord, split: str, key: str, *, smooth: int | None = None, full_windows_only: bool = False,
               block: int | str | None = None, error_percent: bool = False) -> RunSeries:
    """One metric of one run. `smooth`: moving-mean window in log lines. `block`: for per-block list keys
    (`block_ratio/c`), the block index, or "max" for the largest block at each line. `error_percent`: plot an
    accuracy as 100·(1 − accuracy), the paper's error axis."""
    log = {"train": run.train, "eval": run.eval, "probe": run.probe}[split]
    if block is None:
        values = log.scalar(key)
    else:
        blocks = log.blocks(key)
        finite = np.isfinite(blocks)
        if block == "max":
            largest = np.where(finite, blocks, -np.inf).max(axis=1, initial=-np.inf)
            values = np.where(finite.any(axis=1), largest, np.nan)
        elif isinstance(block, int) and block < blocks.shape[1]:
            values = blocks[:, block]
        else:
            values = np.full(len(log), np.nan)
    if smooth is not None:
        values = moving_mean(values, smooth, full_windows_only=full_windows_only)
    if error_percent:
        values = 100.0 * (1.0 - values)
    return RunSeries(log.steps, log.times, values)


@dataclasses.dataclass(frozen=True)
class Band:
    """A mean curve over seeds. `count[i]` seeds had a finite value at steps[i]; low/high are their min/max."""

    steps: np.ndarray
    times: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray

    @property
    def seeds(self) -> int:
        return int(self.count.max()) if self.count.size else 0

    def has_data(self) -> bool:
        return bool(np.any(self.count > 0))


def seed_band(series: Sequence[RunSeries]) -> Band:
    """Seeds aligned on the union of their logged steps; see the module docstring for the rule."""
    steps = np.unique(np.concatenate([s.steps for s in series])) if series else np.zeros(0, dtype=np.int64)
    values = np.full((len(series), steps.size), np.nan)
    times = np.full((len(series), steps.size), np.nan)
    for row, s in enumerate(series):
        columns = np.searchsorted(steps, s.steps)
        values[row, columns] = s.values
        times[row, columns] = s.times
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(count > 0, np.where(finite, values, 0.0).sum(axis=0) / safe, np.nan)
    low = np.where(count > 0, np.where(finite, values, np.inf).min(axis=0, initial=np.inf), np.nan)
    high = np.where(count > 0, np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf), np.nan)
    time_ok = finite & np.isfinite(times)
    time_count = time_ok.sum(axis=0)
    mean_time = np.where(time_count > 0, np.where(time_ok, times, 0.0).sum(axis=0) / np.maximum(time_count, 1),
                         np.nan)
    return Band(steps, mean_time, mean, low, high, count)
