"""What the main job does with a config: one run, or a sweep of runs (rows) followed by the results table and
the analysis report. Each row is an independent run folder, so any row can be rerun alone or on another host.
Rows computing on `cpu_threads` cores train side by side, each in its own pinned process (sweeps/lanes.py).

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
from inception_jax.config_files import config_module
from inception_jax.configuration import ConfigError
from inception_jax.cpu import runtime
from inception_jax.sweeps import console_log
from inception_jax.sweeps.compile_ahead import compile_ahead
from inception_jax.sweeps.console import SweepConsole
from inception_jax.sweeps.hparams import write_run_summary, write_sweep_experiment
from inception_jax.sweeps.lanes import RowTask, run_in_lanes
from inception_jax.sweeps.progress import NullProgress, SweepProgress
from inception_jax.sweeps.sweep_checks import check_rows, claim_row, row_differences
from inception_jax.sweeps.sweep_rows import (
    SweepRow,
    describe_row,
    override_args,
    read_csv,
    row_command,
    validate_rows,
    write_csv,
)
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.metrics import write_json_atomic
from inception_jax.training.programs import program_config
from inception_jax.training.run_checks import check_run, check_workdir_writable
from inception_jax.training.run_folder import config_record, replace_changed_run
from inception_jax.validation import close_matches

log = logging.getLogger(__name__)
# Exit status of a preempted run or sweep (checkpoint saved, not finished): EX_TEMPFAIL of sysexits.h, "try again
# later", which job arrays can requeue on (SLURM: --requeue; `[ $? -eq 75 ] && scontrol requeue ...`).
EXIT_PREEMPTED = 75
NO_PROGRESS = NullProgress()


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
                   rerun_changed: bool = False, parallel_rows: int = 0) -> int:
    workdir = workdir or default_workdir(config_arg)
    rows = read_csv(rows_csv) if rows_csv else config_rows(config_arg)
    if rows is None:
        if row or export_csv or print_commands or parallel_rows:
            raise ConfigError(f"{config_arg} defines no sweep (no get_sweep); --row, --export_csv, --print_commands "
                              "and --parallel_rows need one, or --rows_csv")
        check_workdir_writable(workdir)
        if rerun_changed:
            checked = check_run(config)
            current = config_record(config, run_id=os.path.basename(os.path.abspath(workdir)),
                                    num_classes=checked.opts.num_classes)
            replace_changed_run(os.path.abspath(workdir), current, checked.num_steps)
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
    check_rows(list(zip(rows, configs, strict=True)), {r.run_id for r, _ in selected}, workdir,
               rerun_changed=rerun_changed)
    console = SweepConsole(layout=rows_layout(selected), log_file=console_log.to_file(
        os.path.join(workdir, console_log.SWEEP_LOG))) if jax.process_index() == 0 else NullProgress()
    return run_sweep(selected, list(zip(rows, configs, strict=True)), workdir=workdir,
                     name=os.path.splitext(os.path.basename(config_arg))[0], command=user_command(sys.argv),
                     thresholds=tuple(config.report.thresholds), rerun_changed=rerun_changed,
                     parallel_rows=parallel_rows, progress=console)


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


def run_sweep(selected: Sequence[tuple[SweepRow, ml_collections.ConfigDict]],
              all_rows: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], *, workdir: str, name: str,
              command: str, thresholds: Sequence[float] = (0.3, 0.4, 0.5), rerun_changed: bool = False,
              parallel_rows: int = 0, progress: SweepProgress = NO_PROGRESS) -> int:
    """Train the selected rows (finished ones skipped, interrupted ones resumed), then write results.csv and the
    report over every row when each folder holds its row's run. Rows whose config computes on `cpu_threads` > 0
    cores train side by side in `parallel_rows` lanes (0: as many as the cores allow; sweeps/lanes.py); with
    `cpu_threads` = 0, off CPU or under jax.distributed, one after the other in this process."""
    try:
        return _run_sweep(selected, all_rows, workdir=workdir, name=name, command=command, thresholds=thresholds,
                          rerun_changed=rerun_changed, parallel_rows=parallel_rows, progress=progress)
    finally:
        progress.close()


def _run_sweep(selected, all_rows, *, workdir, name, command, thresholds, rerun_changed, parallel_rows,
               progress) -> int:
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    write_sweep_json(workdir, name, [r.run_id for r, _ in all_rows], command=None)
    datasets: dict = {}
    rows = [(row, _with_row(config, row, name, command)) for row, config in selected]
    checked = {row.run_id: check_run(config, datasets) for row, config in rows}
    pending = [row.run_id for row, _ in rows
               if not os.path.exists(os.path.join(workdir, "runs", row.run_id, "result.json"))]
    threads, lanes = lane_plan(rows, pending, parallel_rows)
    progress.planned(name=name, rows=[r.run_id for r, _ in selected], pending=pending, lanes=max(lanes, 1),
                     steps={run_id: checked[run_id].num_steps for run_id in pending})
    trained = [0.0]  # seconds of training and evaluation (the runs' own clocks) in this command

    def finished(run_id: str, result: dict, seconds: float, resumed_time_s: float) -> None:
        trained[0] += max(0.0, float(result.get("wall_time_s") or 0.0) - resumed_time_s)
        log.info("%s: %s in %.0f s (eval top-1 %s)", run_id, result.get("status"), seconds, result.get("eval_top1"))
        progress.row_finished(run_id, result, seconds)
        if result.get("status") != "preempted":
            write_run_summary(os.path.join(workdir, "runs", run_id))  # TensorBoard's HParams session of this run
            write_sweep_experiment(os.path.join(workdir, "runs"))

    if lanes:
        preempted = _run_lanes(rows, checked, workdir, threads, lanes, rerun_changed, progress, finished)
    else:
        preempted = _run_here(rows, checked, workdir, rerun_changed, progress, finished, len(pending) > 1)
    if preempted:
        print(f"preempted during {', '.join(preempted)}; rerun the same command to resume")
        return EXIT_PREEMPTED
    write_sweep_experiment(os.path.join(workdir, "runs"))
    # Again, right before writing: another command may have replaced a folder since this one checked it.
    changed, stale = row_differences(all_rows, {r.run_id for r, _ in selected}, workdir, datasets)
    if changed:
        listed = "; ".join(f"{describe_row(row)} [{why}]" for row, why in changed)
        raise ConfigError(f"{len(changed)} row(s) of this sweep were replaced by another command's runs while it ran: "
                          f"{listed}; results.csv and the report are not written. Use another --workdir, or "
                          "--rerun_changed to run them again")
    if stale:  # rows not run now: their numbers must not be reported as this sweep's
        print(f"sweep {name}: {len(selected)} run(s) done; results.csv and the report not written: rows not run "
              f"now hold runs of another config: {'; '.join(stale)}. Run them (with --rerun_changed) first")
        return 0
    results = write_results(workdir, [r for r, _ in all_rows], thresholds)
    report = write_report(workdir, command, thresholds)
    write_sweep_json(workdir, name, [r.run_id for r, _ in all_rows], command=command)
    print("\n" + findings_text(report.summary.read_text()))
    print(f"sweep {name}: {len(selected)} run(s) in {os.path.abspath(workdir)}/runs")
    elapsed = time.time() - float(os.environ.get(COMMAND_STARTED, time.time()))
    if trained[0] and elapsed > 0:
        # Rows side by side: the share of the command's time each lane spent training, so 100 % is the most.
        per_lane = trained[0] / max(lanes, 1)
        side = f" on {lanes} lanes ({per_lane:.0f} s each)" if lanes > 1 else ""
        print(f"time: {trained[0]:.0f} s of training and evaluation{side} in the {elapsed:.0f} s since the command "
              f"started ({100 * per_lane / elapsed:.0f} %; the rest: starting up, preparing data, compiling, the "
              "report)")
    print(f"results table: {results}")
    print(f"report: {report.html}")
    if console_log.log_path():
        print(f"log: {console_log.log_path()}")
    return 0


def findings_text(summary: str) -> str:
    """summary.md without its opening paragraph (date, machine, command: in the report and summary.md)."""
    head, _, rest = summary.strip().partition("\n\n")
    return rest if head.startswith("Generated") and rest else summary.strip()


def lane_plan(rows: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], pending: Sequence[str],
              parallel_rows: int) -> tuple[int, int]:
    """(cpu_threads, lanes): 0 lanes trains the rows in this process (cpu_threads 0, off CPU, jax.distributed)."""
    import jax

    threads = {int(config.cpu_threads) for _, config in rows}
    if len(threads) > 1:
        raise ConfigError(f"the sweep's rows differ in cpu_threads ({sorted(threads)}); its rows run on one thread "
                          "count: set it in the config, not per row")
    (count,) = threads or {0}
    if parallel_rows < 0:
        raise ConfigError(f"--parallel_rows={parallel_rows} must be >= 0 (0: as many as the cores allow)")
    distributed = any(config.distributed.enabled for _, config in rows)
    if not count or jax.default_backend() != "cpu" or distributed or not pending:
        if parallel_rows > 1:
            log.warning("--parallel_rows=%d ignored: rows train side by side only on CPU with cpu_threads > 0",
                        parallel_rows)
        return count, 0
    cores = runtime.usable_cores()
    if parallel_rows * count > len(cores):
        raise ConfigError(f"--parallel_rows={parallel_rows} with cpu_threads={count} needs {parallel_rows * count} "
                          f"cores; this process may use {len(cores)} ({list(cores)}); use at most "
                          f"{len(cores) // count} (0: as many as fit)")
    if count > len(cores):
        raise ConfigError(f"cpu_threads={count}: this process may use {len(cores)} core(s); use at most "
                          f"{len(cores)}, or 0 for all of them")
    return count, min(parallel_rows or len(cores) // count, len(pending))


def _run_here(rows, checked, workdir, rerun_changed, progress, finished, compile_first) -> list[str]:
    """One row after the other in this process (lane 0)."""
    if compile_first:
        compile_ahead([config for row, config in rows
                       if not os.path.exists(os.path.join(workdir, "runs", row.run_id, "result.json"))])
    for i, (row, config) in enumerate(rows, start=1):
        run_dir = os.path.join(workdir, "runs", row.run_id)
        if claim_row(workdir, row, config, checked[row.run_id], rerun_changed=rerun_changed):
            log.info("[%d/%d] %s: finished earlier, skipped", i, len(rows), row.run_id)
            progress.row_skipped(row.run_id, "finished earlier")
            continue
        log.info("[%d/%d] %s: %s", i, len(rows), row.run_id, json.dumps(row.overrides, default=str))
        progress.row_started(row.run_id, run_dir, 0)
        begin = time.perf_counter()
        result = train_and_evaluate(config, run_dir)
        finished(row.run_id, result.result or {"status": result.status, "steps": result.steps},
                 time.perf_counter() - begin, result.resumed_time_s)
        if result.status == "preempted":
            return [row.run_id]
    return []


def _run_lanes(rows, checked, workdir, threads, lanes, rerun_changed, progress, finished) -> list[str]:
    """The rows in worker processes, `lanes` at a time, each pinned to its own `threads` cores (sweeps/lanes.py)."""
    by_id = {row.run_id: (i, row, config) for i, (row, config) in enumerate(rows, start=1)}
    tasks = [RowTask(row.run_id, os.path.join(workdir, "runs", row.run_id), config,
                     json.dumps(program_config(config), sort_keys=True, default=repr),
                     f"[{i}/{len(rows)}] {row.run_id}: {json.dumps(row.overrides, default=str)}")
             for i, (row, config) in enumerate(rows, start=1)]

    def claim(task: RowTask) -> bool:
        _, row, config = by_id[task.run_id]
        return claim_row(workdir, row, config, checked[task.run_id], rerun_changed=rerun_changed)

    def skipped(task: RowTask) -> None:
        i, row, _ = by_id[task.run_id]
        log.info("[%d/%d] %s: finished earlier, skipped", i, len(rows), row.run_id)
        progress.row_skipped(row.run_id, "finished earlier")

    for task in [t for t in tasks if os.path.exists(os.path.join(t.run_dir, "result.json"))]:
        if claim(task):  # finished now: skipped (checked under its lock) before any lane starts
            skipped(task)
            tasks.remove(task)
    if not tasks:
        return []
    return run_in_lanes(tasks, lanes=min(lanes, len(tasks)), threads=threads, usable=runtime.usable_cores(),
                        workdir=workdir,
                        setup_config=rows[0][1], claim=claim, cache_shared=bool(runtime.compilation_cache_dir()),
                        started=lambda task, lane: progress.row_started(task.run_id, task.run_dir, lane),
                        skipped=skipped,
                        ended=lambda end: finished(end.run_id, end.result, end.seconds, end.resumed_time_s))


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


def _with_row(config: ml_collections.ConfigDict, row: SweepRow, name: str,
              command: str = "") -> ml_collections.ConfigDict:
    """The row's config with its sweep bookkeeping (recorded in config.json, read by no program)."""
    with config.unlocked():
        config.sweep.name = name
        config.sweep.row = row.run_id
        config.sweep.overrides_json = json.dumps(row.overrides, default=list)
        config.sweep.command = command
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
