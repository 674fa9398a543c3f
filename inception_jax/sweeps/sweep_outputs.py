"""What a sweep leaves when its rows are done: sweep.json, results.csv, the report, and what the console says of them.

results.csv and the report are written only when every row's folder holds its row's run (sweep.py checks this
right before), so neither mixes the numbers of two configs; sweep.json names the command that wrote them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from inception_jax import COMMAND_STARTED
from inception_jax.sweeps import console_log
from inception_jax.sweeps.sweep_rows import SweepRow
from inception_jax.training.metrics import write_json_atomic

log = logging.getLogger(__name__)


def write_sweep_json(workdir: str, name: str, run_ids: Sequence[str], *, command: str | None) -> None:
    """sweep.json: the sweep's name and rows; `command` is the command that wrote results.csv and the report, set
    only when it does (every run folder then holds a run of its config), so a command whose rows were refused
    never names itself there. Each run's own command is its config.json `sweep.command`."""
    path = os.path.join(workdir, "sweep.json")
    previous: dict = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, json.JSONDecodeError):
            previous = {}
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    record = {"name": name, "command": command if command is not None else previous.get("command"),
              "run_ids": list(run_ids), "created": previous.get("created") or now}
    if command is not None:
        record["results_written"] = now
    elif "results_written" in previous:
        record["results_written"] = previous["results_written"]
    write_json_atomic(path, record)


def write_results(workdir: str, rows: Sequence[SweepRow], thresholds: Sequence[float]) -> str:
    """results.csv: one line per run folder present, with its overrides, final metrics, steps (and seconds) to
    the accuracy thresholds (analysis's rule), verdict and wall time (analysis.frames.load_sweep's columns)."""
    from analysis.frames import load_sweep

    path = os.path.join(workdir, "results.csv")
    frame = load_sweep(os.path.join(workdir, "runs"), thresholds=thresholds, run_ids=[row.run_id for row in rows])
    frame.to_csv(path, index=False, na_rep="")
    return path


def write_report(workdir: str, command: str, thresholds: Sequence[float]) -> Any:
    """The report of the sweep's run folders (analysis.report.ReportResult)."""
    from analysis.report import generate_report

    result = generate_report(os.path.join(workdir, "runs"), os.path.join(workdir, "report"), command=command,
                             thresholds=thresholds)
    for error in result.errors:
        log.warning("report: %s", error)
    return result


def print_sweep_end(name: str, selected: int, workdir: str, results: str, report: Any, trained: float,
                    lanes: int) -> None:
    """The sweep's findings, where its runs are, how much of the command's time went to training (`trained`
    seconds by the runs' own clocks, in this command), and where the table, the report and the log are."""
    print("\n" + findings_text(report.summary.read_text()))
    print(f"sweep {name}: {selected} run(s) in {os.path.abspath(workdir)}/runs")
    elapsed = time.time() - float(os.environ.get(COMMAND_STARTED, time.time()))
    if trained and elapsed > 0:
        # Rows side by side: the share of the command's time each lane spent training, so 100 % is the most.
        per_lane = trained / max(lanes, 1)
        side = f" on {lanes} lanes ({per_lane:.0f} s each)" if lanes > 1 else ""
        print(f"time: {trained:.0f} s of training and evaluation{side} in the {elapsed:.0f} s since the command "
              f"started ({100 * per_lane / elapsed:.0f} %; the rest: starting up, preparing data, compiling, the "
              "report)")
    print(f"results table: {results}")
    print(f"report: {report.html}")
    if console_log.log_path():
        print(f"log: {console_log.log_path()}")


def findings_text(summary: str) -> str:
    """summary.md without its opening paragraph (date, machine, command: in the report and summary.md)."""
    head, _, rest = summary.strip().partition("\n\n")
    return rest if head.startswith("Generated") and rest else summary.strip()

