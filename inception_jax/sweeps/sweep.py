"""What the main job does with a config: one run, or a sweep of runs (rows) followed by the results table and
the analysis report. Each row is an independent run folder, so any row can be rerun alone or on another host.

Sweep workdir layout (docs/run_folder.md): sweep.json, runs/<run_id>/, results.csv, report/.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from inception_jax import COMMAND_STARTED
from inception_jax.configuration import ConfigError, config_module
from inception_jax.sweeps import console_log
from inception_jax.sweeps.compile_ahead import compile_ahead
from inception_jax.sweeps.console import SweepConsole
from inception_jax.sweeps.hparams import write_run_summary, write_sweep_experiment
from inception_jax.sweeps.progress import NullProgress, SweepProgress
from inception_jax.sweeps.sweep_checks import check_rows
from inception_jax.sweeps.sweep_rows import (
    SweepRow,
    override_args,
    read_csv,
    row_command,
    validate_rows,
    write_csv,
)
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.metrics import write_json_atomic
from inception_jax.training.run_checks import check_run, check_workdir_writable
from inception_jax.validation import close_matches

log = logging.getLogger(__name__)
# Exit status of a preempted run or sweep (checkpoint saved, not finished): EX_TEMPFAIL of sysexits.h, "try again
# later", which job arrays can requeue on (SLURM: --requeue; `[ $? -eq 75 ] && scontrol requeue ...`).
EXIT_PREEMPTED = 75


def default_workdir(config_arg: str) -> str:
    base = os.path.splitext(os.path.basename(config_arg.split(":")[0]))[0]
    suffix = config_arg.split(":", 1)[1].replace(",", "_").replace("=", "-") if ":" in config_arg else ""
    return os.path.join("workdir", base + (f"-{suffix}" if suffix else ""))


def config_rows(config_arg: str) -> list[SweepRow] | None:
    """The rows a config file's optional `get_sweep(arg)` defines (None: the config is a single run)."""
    path, _, arg = config_arg.partition(":")
    module = config_module(path)
    if not hasattr(module, "get_sweep"):
        return None
    return [SweepRow(run_id, dict(overrides)) for run_id, overrides in module.get_sweep(arg or None)]


def run_from_flags(config: ml_collections.ConfigDict, *, config_arg: str, workdir: str | None, row: str | None,
                   rows_csv: str | None, export_csv: str | None, print_commands: bool,
                   rerun_changed: bool = False) -> int:
    workdir = workdir or default_workdir(config_arg)
    rows = read_csv(rows_csv) if rows_csv else config_rows(config_arg)
    if rows is None:
        if row or export_csv or print_commands or rerun_changed:
            raise ConfigError(f"{config_arg} defines no sweep (no get_sweep); --row, --export_csv, --print_commands "
                              "and --rerun_changed need one, or --rows_csv")
        check_workdir_writable(workdir)
        result = _run_one(config, workdir)
        print(f"run {result.status}: {os.path.abspath(workdir)}")
        return EXIT_PREEMPTED if result.status == "preempted" else 0
    configs = validate_rows(config, rows)  # every row, before anything runs
    if export_csv:
        write_csv(export_csv, rows)
        print(f"wrote {len(rows)} rows to {export_csv}")
        return 0
    if print_commands:
        for r in rows:
            print(row_command(config_arg, r.run_id, workdir, rows_csv, overrides=override_args(sys.argv[1:])))
        return 0
    selected = list(zip(rows, configs, strict=True))
    if row is not None:
        ids = [r.run_id for r in rows]
        if row not in ids:
            close = close_matches(row, ids, n=3)
            hint = f" (did you mean {close}?)" if close else ""
            raise ConfigError(f"--row={row!r} is not a run_id of this sweep{hint}; run ids: {ids}")
        selected = [(r, c) for r, c in selected if r.run_id == row]
    # Every selected row against its data, every row's folder against its config: before anything is written.
    check_workdir_writable(workdir)
    stale = check_rows(list(zip(rows, configs, strict=True)), {r.run_id for r, _ in selected}, workdir,
                       rerun_changed=rerun_changed)
    console = SweepConsole(layout=rows_layout(selected), log_file=console_log.to_file(
        os.path.join(workdir, console_log.SWEEP_LOG))) if jax.process_index() == 0 else NullProgress()
    return run_sweep(selected, rows, workdir=workdir, name=os.path.splitext(os.path.basename(config_arg))[0],
                     command=user_command(sys.argv),
                     thresholds=tuple(config.report.thresholds), stale_rows=stale, progress=console)


def _run_one(config: ml_collections.ConfigDict, workdir: str) -> Any:
    """A single run (no sweep), shown as a sweep of one row; its log is <workdir>/train.log."""
    name = os.path.basename(os.path.abspath(workdir))
    log_file = console_log.to_file(os.path.join(workdir, console_log.RUN_LOG))
    if config.compile_only or config.eval_only:  # no training to show: these print their own one-line result
        return train_and_evaluate(config, workdir)
    console = SweepConsole(log_file=log_file, what="run") if jax.process_index() == 0 else NullProgress()
    console.planned(name=name, rows=[name], pending=[name], lanes=1, steps={name: check_run(config).num_steps})
    console.row_started(name, workdir, 0)
    started = time.monotonic()
    try:
        result = train_and_evaluate(config, workdir)
        if result.status != "preempted":
            write_run_summary(workdir)  # TensorBoard's HParams session of this run
            console.row_finished(name, result.result, time.monotonic() - started)
        return result
    finally:
        console.close()


def rows_layout(selected: Sequence[tuple[SweepRow, ml_collections.ConfigDict]]) -> str:
    """`6 cells x 2 seeds`: the rows' distinct settings other than the seed, and their seeds."""
    cells = {json.dumps({k: v for k, v in r.overrides.items() if k != "seed"}, sort_keys=True, default=str)
             for r, _ in selected}
    seeds = sorted({int(c.seed) for _, c in selected})
    return f"{len(cells)} cells x {len(seeds)} seeds" if len(seeds) > 1 else f"{len(cells)} cells, seed {seeds[0]}"


def user_command(argv: Sequence[str]) -> str:
    """The command as the user typed it: `python -m inception_jax.main ...`, not the path Python put in argv[0]."""
    program = argv[0] if argv else ""
    if program.endswith(os.path.join("inception_jax", "main.py")):
        program = "python -m inception_jax.main"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def run_sweep(selected: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], all_rows: Sequence[SweepRow], *,
              workdir: str, name: str, command: str, thresholds: Sequence[float] = (0.3, 0.4, 0.5),
              stale_rows: Sequence[str] = (), progress: SweepProgress | None = None) -> int:
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    write_json_atomic(os.path.join(workdir, "sweep.json"), {
        "name": name, "command": command, "run_ids": [r.run_id for r in all_rows],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})
    trained = 0.0  # seconds of training and evaluation in this command (the runs' clocks, less a resumed run's past)
    pending = [(row, config) for row, config in selected
               if not os.path.exists(os.path.join(workdir, "runs", row.run_id, "result.json"))]
    # --- progress events (console wiring; the runner rewrite sends these from its own loop) ---
    progress = progress or NullProgress()
    datasets: dict = {}
    progress.planned(name=name, rows=[r.run_id for r, _ in selected], pending=[r.run_id for r, _ in pending],
                     lanes=1, steps={r.run_id: check_run(c, datasets).num_steps for r, c in pending})
    try:
        if len(pending) > 1:
            compile_ahead([_with_row(config, row, name) for row, config in pending])
        for i, (row, config) in enumerate(selected, start=1):
            run_dir = os.path.join(workdir, "runs", row.run_id)
            if os.path.exists(os.path.join(run_dir, "result.json")):
                log.info("[%d/%d] %s: finished earlier, skipped", i, len(selected), row.run_id)
                progress.row_skipped(row.run_id, "finished earlier")
                continue
            log.info("[%d/%d] %s: %s", i, len(selected), row.run_id, json.dumps(row.overrides, default=str))
            progress.row_started(row.run_id, run_dir, 0)
            row_started = time.monotonic()
            result = train_and_evaluate(_with_row(config, row, name), run_dir)
            trained += max(0.0, float(result.result.get("wall_time_s") or 0.0) - result.resumed_time_s)
            if result.status == "preempted":
                progress.close()
                print(f"preempted during {row.run_id}; rerun the same command to resume")
                return EXIT_PREEMPTED
            progress.row_finished(row.run_id, result.result, time.monotonic() - row_started)
            write_run_summary(run_dir)  # TensorBoard's HParams session of this run, in the sweep's table
            write_sweep_experiment(os.path.join(workdir, "runs"))
    finally:
        progress.close()
    # --- end of progress events ---
    write_sweep_experiment(os.path.join(workdir, "runs"))
    if stale_rows:  # sweep_checks.check_rows: their numbers must not be reported as this sweep's
        print(f"sweep {name}: {len(selected)} run(s) done; results.csv and the report not written: rows not run "
              f"now hold runs of another config: {'; '.join(stale_rows)}. Run them (with --rerun_changed) first")
        return 0
    results = write_results(workdir, all_rows, thresholds)
    report = write_report(workdir, command, thresholds)
    print("\n" + findings_text(report.summary.read_text()))
    print(f"sweep {name}: {len(selected)} run(s) in {os.path.abspath(workdir)}/runs")
    elapsed = time.time() - float(os.environ.get(COMMAND_STARTED, time.time()))
    if trained and elapsed > 0:
        print(f"time: {trained:.0f} s of training and evaluation in the {elapsed:.0f} s since the command started "
              f"({100 * trained / elapsed:.0f} %; the rest: starting up, preparing data, compiling, the report)")
    print(f"results table: {results}")
    print(f"report: {report.html}")
    if console_log.log_path():
        print(f"log: {console_log.log_path()}")
    return 0


def findings_text(summary: str) -> str:
    """summary.md without its opening paragraph (date, machine, command: in the report and summary.md)."""
    head, _, rest = summary.strip().partition("\n\n")
    return rest if head.startswith("Generated") and rest else summary.strip()


def _with_row(config: ml_collections.ConfigDict, row: SweepRow, name: str) -> ml_collections.ConfigDict:
    """The row's config with its sweep bookkeeping (recorded in config.json, read by no program)."""
    with config.unlocked():
        config.sweep.name = name
        config.sweep.row = row.run_id
        config.sweep.overrides_json = json.dumps(row.overrides, default=list)
    return config


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
