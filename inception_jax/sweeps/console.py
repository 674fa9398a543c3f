"""A sweep on the console (progress.SweepProgress): what will run, one line per finished row with its headline
numbers (verdict, final eval top-1, wall time), the running rows' step and loss with the sweep's ETA (eta.py), and
nothing else; the log file holds the rest (console_log.py).

On a terminal the running rows are a live tqdm display under the finished rows' lines; elsewhere (CI, SLURM,
`| tee`) a plain progress line is printed when nothing else was for a while, with no carriage returns. The rows'
steps and losses are not sent by the runner: a background thread reads the last complete line of each running
row's metrics.jsonl (docs/run_folder.md) about once a second. The console only reads; it never changes a run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from inception_jax.sweeps.eta import EtaCheck, SweepEstimate, format_eta
from inception_jax.training.metrics import METRICS_FILE
from inception_jax.wording import format_duration

log = logging.getLogger(__name__)
POLL_S = 1.0  # how often the running rows' metrics.jsonl are read
QUIET_S = 30.0  # without a terminal: a progress line after this long without output (longer as the sweep goes on)
TAIL_BYTES = 64 << 10  # read from the end of a metrics.jsonl: several train lines, whatever the model's diagnostics


@dataclasses.dataclass
class _Running:
    run_dir: str
    lane: int
    started: float
    step: int = 0
    loss: float | None = None
    signature: tuple = ()  # (mtime, size) of metrics.jsonl when last read


class SweepConsole:
    """Shows a sweep on `stream` (stdout by default); `live` (default: whether `stream` is a terminal) picks the
    tqdm display over plain lines. `layout` describes the rows in the plan line (e.g. "6 cells x 2 seeds");
    `log_file` is named there. `clock` is time.monotonic (tests pass a scripted one)."""

    def __init__(self, stream: TextIO | None = None, *, layout: str = "", log_file: str | None = None,
                 live: bool | None = None, poll_s: float = POLL_S, quiet_s: float = QUIET_S,
                 clock: Callable[[], float] = time.monotonic, what: str = "sweep"):
        self.stream = stream or sys.stdout
        self.live = _is_terminal(self.stream) if live is None else live
        self.layout, self.log_file, self.what = layout, log_file, what
        self.poll_s, self.quiet_s, self.clock = poll_s, quiet_s, clock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: dict[int, Any] = {}  # -1: the sweep's bar; lane: that lane's line
        self.running: dict[str, _Running] = {}
        self.steps: dict[str, int] = {}
        self.estimate: SweepEstimate | None = None
        self.check: EtaCheck | None = None
        self.total = self.done = 0
        self.t0 = self.last_output = clock()
        self.width = 0

    # ------------------------------------------------------------------------------------------- the events
    def planned(self, *, name: str, rows: Sequence[str], pending: Sequence[str], lanes: int,
                steps: Mapping[str, int]) -> None:
        with self._lock:
            self.t0 = self.clock()
            self.total, self.done, self.steps = len(pending), 0, dict(steps)
            self.estimate = SweepEstimate(steps, pending, lanes)
            self.check = EtaCheck(len(pending))
            self.width = max((len(r) for r in pending), default=0)
            self._print(self._plan_line(name, rows, pending, lanes, steps))
            if self.log_file:
                self._print(f"log: {self.log_file} (the details, libraries' notes; --log_to_console shows them "
                            "here too)")
            log.info("%s %s: %d rows to train of %d, %d lane(s), steps %s", self.what, name, len(pending), len(rows),
                     lanes, json.dumps(dict(steps)))
        if pending and self.poll_s > 0:
            self._thread = threading.Thread(target=self._poll_loop, name="sweep-console", daemon=True)
            self._thread.start()

    def row_started(self, run_id: str, run_dir: str, lane: int) -> None:
        with self._lock:
            now = self.clock()
            self.running[run_id] = _Running(run_dir, lane, now)
            if self.estimate is not None:
                self.estimate.started(run_id, now, lane)
            self._refresh(now)

    def row_skipped(self, run_id: str, why: str) -> None:
        with self._lock:
            if self.estimate is None or run_id not in self.estimate.rows:
                return  # not among the rows to train (finished earlier): the plan line counted it
            self.estimate.skipped(run_id)
            self.running.pop(run_id, None)
            self.total -= 1
            self._print(f"skipped {run_id}: {why}")

    def row_finished(self, run_id: str, result: Mapping[str, Any], seconds: float) -> None:
        with self._lock:
            now = self.clock()
            self.running.pop(run_id, None)
            self.done += 1
            eta = None
            if self.estimate is not None:
                self.estimate.finished(run_id, seconds, steps=_number(result.get("steps")),
                                       train_seconds=_number(result.get("wall_time_s")))
                eta = self.estimate.remaining(now)
            line = self.row_line(run_id, result, seconds)
            if self.done < self.total and eta is not None:
                line += f"   ETA {format_eta(eta)}"
            self._print(line)
            if self.check is not None and self.check.rows_done(self.done, now - self.t0, eta):
                log.info("ETA at 50 %% of rows (%d/%d done, t=%.0f s): %.0f s", self.done, self.total, now - self.t0,
                         eta)
            self._refresh(now)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            for key in sorted(self._bars, reverse=True):  # the lanes' lines, then the bar, which returns the cursor
                self._bars[key].close()
            self._bars.clear()
            if self.check is not None and self.what == "sweep" and self.total and self.done >= self.total:
                elapsed = self.clock() - self.t0
                log.info("sweep: %d rows in %.0f s", self.done, elapsed)
                for line in self.check.report(elapsed):
                    log.info("%s", line)
            self.check = None

    # ------------------------------------------------------------------------------------------ the lines
    def _plan_line(self, name: str, rows: Sequence[str], pending: Sequence[str], lanes: int,
                   steps: Mapping[str, int]) -> str:
        counts = sorted({int(steps[r]) for r in pending if r in steps})
        length = (f"{counts[0]} steps" if len(counts) == 1 else
                  f"{counts[0]}-{counts[-1]} steps" if counts else "")
        if self.what == "run":
            return f"run {name}: {length or 'training'}; ETA once it has trained a few steps"
        layout = f" ({self.layout})" if self.layout else ""
        earlier = len(rows) - len(pending)
        parts = [f"{self.what} {name}: {len(rows)} rows{layout}"]
        if earlier:
            parts.append(f"{earlier} finished earlier, {len(pending)} to train")
        if length:
            parts.append(f"{length} each")
        parts.append(f"{lanes} at a time" if lanes > 1 else "one at a time")
        line = ", ".join(parts)
        return line + ("; ETA once the first rows have trained a few steps" if pending else "; nothing to train")

    def row_line(self, run_id: str, result: Mapping[str, Any], seconds: float) -> str:
        """`[ 3/12] w160_scale1_seed0    died            top-1  12.0 %    41 s`"""
        verdict = result.get("verdict") or result.get("status") or "unfinished"
        if result.get("status") not in (None, "finished", verdict):
            verdict = f"{verdict} ({result['status']})"
        top1 = _number(result.get("eval_top1"))
        top1_text = f"{100 * top1:5.1f} %" if top1 is not None else "    -  "
        width = len(str(self.total))
        return (f"[{self.done:>{width}}/{self.total}] {run_id:<{self.width}}  {verdict:<14}  top-1 {top1_text}  "
                f"{format_duration(seconds):>10}")

    def progress_line(self, now: float) -> str:
        """The sweep in one line: rows done, the running rows' step and loss, the ETA."""
        running = "; ".join(self._running_text(run_id, r) for run_id, r in list(self.running.items())[:3])
        if len(self.running) > 3:
            running += f"; {len(self.running) - 3} more"
        eta = self.estimate.remaining(now) if self.estimate is not None else None
        parts = [running] if self.what == "run" else [f"{self.done}/{self.total} rows done", running]
        return "... " + "; ".join(p for p in [*parts, f"ETA {format_eta(eta)}" if eta is not None else ""] if p)

    def _running_text(self, run_id: str, r: _Running) -> str:
        if not r.step:
            return f"{run_id} starting"
        loss = f" loss {r.loss:.3f}" if r.loss is not None else ""
        return f"{run_id} step {r.step}/{self.steps.get(run_id, '?')}{loss}"

    def _print(self, line: str) -> None:
        from tqdm import tqdm

        tqdm.write(line, file=self.stream)
        self.stream.flush()
        self.last_output = self.clock()

    # ------------------------------------------------------------------------------------- polling, display
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # the display must never stop a sweep
                log.exception("console: progress display failed; the sweep goes on")
                return

    def poll(self) -> None:
        """Read the running rows' latest steps and refresh the display (the thread calls it every `poll_s`)."""
        with self._lock:
            rows = list(self.running.items())
        for run_id, r in rows:
            path = os.path.join(r.run_dir, METRICS_FILE)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            if (stat.st_mtime, stat.st_size) == r.signature:
                continue
            line = last_train_line(path)
            with self._lock:
                r.signature = (stat.st_mtime, stat.st_size)
                if line is None or run_id not in self.running:
                    continue
                now = self.clock()
                r.step, r.loss = int(line.get("step", 0)), _number(line.get("loss"))
                if self.estimate is not None and _number(line.get("time")) is not None:
                    written = now - max(0.0, time.time() - stat.st_mtime)
                    self.estimate.progressed(run_id, r.step, float(line["time"]), written)
        with self._lock:
            self._refresh(self.clock(), periodic=True)

    def _refresh(self, now: float, *, periodic: bool = False) -> None:
        if self.estimate is None or self._stop.is_set():
            return
        eta = self.estimate.remaining(now)
        if self.check is not None:
            self.check.sample(now - self.t0, eta)
        if self.live:
            self._draw(eta)
        elif periodic and self.running and now - self.last_output >= max(self.quiet_s, (now - self.t0) / 10):
            self._print(self.progress_line(now))

    def _draw(self, eta: float | None) -> None:
        from tqdm import tqdm

        if -1 not in self._bars:
            self._bars[-1] = tqdm(total=max(self.total, 1), file=self.stream, position=0, leave=False,
                                  dynamic_ncols=True, mininterval=0)
        bar = self._bars[-1]
        fraction = sum(min(1.0, r.step / max(1, self.steps.get(i, 1))) for i, r in self.running.items())
        bar.n = min(self.done + fraction, bar.total)
        right = f"ETA {format_eta(eta)}" if eta is not None else "ETA once rows have trained a few steps"
        bar.bar_format = f"{self.what} {self.done}/{self.total} rows |{{bar}}| {right}"
        bar.refresh()
        lanes = {r.lane: (run_id, r) for run_id, r in self.running.items()}
        for lane in sorted(set(lanes) | {k for k in self._bars if k >= 0}):
            if lane not in self._bars:
                self._bars[lane] = tqdm(total=0, file=self.stream, position=lane + 1, leave=False,
                                        mininterval=0, bar_format="{desc}")
            text = f"  {self._running_text(*lanes[lane])}" if lane in lanes else "  (idle)"
            self._bars[lane].set_description_str(text)


def last_train_line(path: str) -> dict | None:
    """The last complete train line of a metrics.jsonl (the file a run is writing: its last line may be half)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return None
    lines = data.split(b"\n")[:-1]  # after the last newline: a line being written, or nothing
    if size > TAIL_BYTES:
        lines = lines[1:]  # cut by the seek
    for line in reversed(lines):
        if b'"train"' not in line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") == "train":
            return row
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
