"""How long a sweep has left: from the rows' measured durations, never from a guess of the machine's speed.

A row costs its start-up (outside the run's own clock: preparing the data, initialising or restoring the state)
plus its steps at the row's seconds per step (the run's clock, evaluations included: metrics.jsonl's `time` over
`step`, or result.json's `wall_time_s` over `steps`). A running row is projected from its own rate; rows still to
start take the rate of the latest rows measured (rows of one filter count run together and cost the same, and a
busy machine changes speed over time). The rows still to start are then dealt to the lanes in order, each to the
lane that frees first, as the runner does; the estimate is when the last lane ends.

`EtaCheck` keeps the estimates made so that the sweep log can say, at the end, how close the one made half way was;
`format_eta` words an estimate for the console. Nothing here reads files, nor clocks but
`format_eta` (the local time an estimate ends at): callers pass the times in (console.py), so tests can script a
timeline.
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
from collections.abc import Mapping, Sequence

from inception_jax.wording import format_duration

RECENT = 3  # rows whose rates make the estimate for rows still to start: the latest, not the whole history
MIN_FRACTION = 0.1  # a running row's own rate counts from this share of its steps on (its first steps are noisy)


@dataclasses.dataclass
class _Row:
    steps: int
    started: float | None = None
    step: int = 0
    train_seconds: float = 0.0  # the run's clock at `step`
    seen: float | None = None  # when that step was logged
    finished: bool = False
    first_in_lane: bool = False  # its lane's first row: its start-up included compiling the programs


class SweepEstimate:
    """Seconds until the last row of a sweep ends. Feed it the events (`started`, `progressed`, `finished`,
    `skipped`) with the times they happened; ask `remaining(now)` (None until one row has measured steps)."""

    def __init__(self, steps: Mapping[str, int], pending: Sequence[str], lanes: int):
        self.rows = {run_id: _Row(int(steps.get(run_id) or 1)) for run_id in pending}
        self.order = list(pending)
        self.lanes = max(1, int(lanes))
        self.rates: list[float] = []  # seconds per step of finished rows, oldest first
        self.startups: list[float] = []  # seconds outside the run's clock, finished rows not first in their lane
        self.lanes_seen: set[int] = set()

    def started(self, run_id: str, now: float, lane: int = 0) -> None:
        row = self.rows.setdefault(run_id, _Row(1))
        row.started, row.step, row.seen = now, 0, None
        row.first_in_lane = lane not in self.lanes_seen
        self.lanes_seen.add(lane)
        if run_id not in self.order:
            self.order.append(run_id)

    def progressed(self, run_id: str, step: int, train_seconds: float, now: float) -> None:
        """A running row logged `step` at `now`, after `train_seconds` on its own clock."""
        row = self.rows.get(run_id)
        if row is None or row.finished or step <= 0:
            return
        row.step, row.train_seconds, row.seen = int(step), float(train_seconds), now

    def finished(self, run_id: str, seconds: float, *, steps: int | None = None,
                 train_seconds: float | None = None) -> None:
        """A row ended after `seconds` of wall time; `steps` and `train_seconds` from its result.json when known."""
        row = self.rows.setdefault(run_id, _Row(steps or 1))
        row.finished = True
        steps = steps or row.steps
        if train_seconds and steps:
            self.rates.append(train_seconds / steps)
            if not row.first_in_lane and seconds > train_seconds:  # a resumed row's clock holds earlier commands
                self.startups.append(seconds - train_seconds)
        elif seconds > 0 and steps:  # no clock of its own (a diverged run's result): all of it per step
            self.rates.append(seconds / steps)

    def skipped(self, run_id: str) -> None:
        self.rows.pop(run_id, None)
        if run_id in self.order:
            self.order.remove(run_id)

    def rate(self) -> float | None:
        """Seconds per step for rows still to start: the mean of the latest measured rows."""
        live = [(r.seen, r.train_seconds / r.step) for r in self.rows.values()
                if not r.finished and r.seen is not None and r.step >= MIN_FRACTION * r.steps]
        recent = self.rates[-RECENT:] + [rate for _, rate in sorted(live)]
        recent = recent[-RECENT:]
        return sum(recent) / len(recent) if recent else None

    def startup(self) -> float:
        """Seconds a row still to start spends outside its clock, from the latest rows that were not their lane's
        first (finished, or running and logged): the least of them. A lane's first row compiles before its clock
        starts and the rows after it find the programs ready, so counting it would charge that compile to every row
        still to start; a later row of a new program family compiles too, hence the least. None seen yet: 0."""
        running = [(r.seen - r.started) - r.train_seconds for r in self.rows.values()
                   if not r.finished and not r.first_in_lane and r.seen is not None and r.started is not None]
        seen = self.startups[-RECENT:] + [t for t in running if t > 0]  # <= 0: resumed, its clock holds earlier runs
        return min(seen) if seen else 0.0

    def remaining(self, now: float) -> float | None:
        rate = self.rate()
        running = [r for r in self.rows.values() if r.started is not None and not r.finished]
        if rate is None:
            if not any(r.seen is not None for r in running):
                return None
            rate = min(r.train_seconds / r.step for r in running if r.seen is not None)
        startup = self.startup()
        lanes = []
        for r in running:
            if r.seen is not None:  # its own rate, from its last logged step
                own = r.train_seconds / r.step if r.step >= MIN_FRACTION * r.steps else rate
                left = (r.steps - r.step) * own - (now - r.seen)
            else:
                left = startup + r.steps * rate - (now - r.started)
            lanes.append(max(0.0, left))
        lanes += [0.0] * max(0, self.lanes - len(lanes))
        heapq.heapify(lanes)
        for run_id in self.order:
            r = self.rows.get(run_id)
            if r is None or r.started is not None or r.finished:
                continue
            heapq.heappush(lanes, heapq.heappop(lanes) + startup + r.steps * rate)
        return max(lanes) if lanes else 0.0


@dataclasses.dataclass
class EtaCheck:
    """The estimates made along a sweep, to say at its end how close they were: the one made when half the rows had
    finished, and the one made half way through the sweep's time. Times in seconds since the sweep's start."""

    total_rows: int
    samples: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (time, estimate), thinned
    at_half_rows: tuple[float, float] | None = None

    def sample(self, now: float, estimate: float | None) -> None:
        if estimate is None:
            return
        if not self.samples or now - self.samples[-1][0] >= max(1.0, now / 1000):  # thinner as the sweep goes on
            self.samples.append((now, estimate))

    def rows_done(self, done: int, now: float, estimate: float | None) -> bool:
        """Record the estimate made when half the rows have finished; True the first time."""
        if self.at_half_rows is None and estimate is not None and 2 * done >= self.total_rows > done:
            self.at_half_rows = (now, estimate)
            return True
        return False

    def report(self, end: float) -> list[str]:
        """Lines for the sweep log once the last row ended at `end`."""
        lines = []
        if self.at_half_rows is not None:
            t, eta = self.at_half_rows
            lines.append(f"ETA at 50 % of rows (t={t:.0f} s): {eta:.0f} s; actual remaining from 50 %: {end - t:.0f} s "
                         f"(error {_error(eta, end - t)})")
        t, eta = min(self.samples, key=lambda s: abs(s[0] - end / 2), default=(-end, 0.0))
        if abs(t - end / 2) > 0.05 * end:  # no estimate then (the rows had not started, or they ended already)
            lines.append(f"no ETA at half time (t={end / 2:.0f} s of {end:.0f} s): no row had trained yet")
        else:
            lines.append(f"ETA at half time (t={t:.0f} s of {end:.0f} s): {eta:.0f} s; actual remaining: "
                         f"{end - t:.0f} s (error {_error(eta, end - t)})")
        return lines


def _error(estimate: float, actual: float) -> str:
    return f"{100 * (estimate - actual) / actual:+.0f} %" if actual > 0 else "n/a"


def format_eta(seconds: float) -> str:
    """`4 min 10 s (10:42)`: how long, and the local time it ends."""
    end = datetime.datetime.now() + datetime.timedelta(seconds=seconds)
    return f"{format_duration(seconds)} (~{end:%H:%M})"
