"""A sweep: its rows trained (finished ones skipped, interrupted ones resumed), then the results table and the
analysis report over every row (sweep_outputs.py). Each row is an independent run folder, so any row can be rerun
alone or on another host. Rows computing on `cpu_threads` cores train side by side, each in its own pinned process
(sweeps/lanes.py); main_job.py turns the command's flags into the rows this runs.

Sweep workdir layout (docs/run_folder.md): sweep.json, runs/<run_id>/, results.csv, report/.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence

import ml_collections

from inception_jax.cpu import runtime
from inception_jax.sweeps.compile_ahead import compile_ahead
from inception_jax.sweeps.hparams import write_run_summary, write_sweep_experiment
from inception_jax.sweeps.lanes import RowTask, run_in_lanes
from inception_jax.sweeps.progress import NullProgress, SweepProgress
from inception_jax.sweeps.sweep_checks import claim_row, row_differences
from inception_jax.sweeps.sweep_outputs import print_sweep_end, write_report, write_results, write_sweep_json
from inception_jax.sweeps.sweep_rows import SweepRow, describe_row
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.programs import program_config
from inception_jax.training.run_checks import check_run
from inception_jax.validation import ConfigError

log = logging.getLogger(__name__)
# Exit status of a preempted run or sweep (checkpoint saved, not finished): EX_TEMPFAIL of sysexits.h, "try again
# later", which job arrays can requeue on (SLURM: --requeue; `[ $? -eq 75 ] && scontrol requeue ...`).
EXIT_PREEMPTED = 75
NO_PROGRESS = NullProgress()


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
    print_sweep_end(name, len(selected), workdir, results, report, trained[0], lanes)
    return 0


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


def _with_row(config: ml_collections.ConfigDict, row: SweepRow, name: str,
              command: str = "") -> ml_collections.ConfigDict:
    """The row's config with its sweep bookkeeping (recorded in config.json, read by no program)."""
    with config.unlocked():
        config.sweep.name = name
        config.sweep.row = row.run_id
        config.sweep.overrides_json = json.dumps(row.overrides, default=list)
        config.sweep.command = command
    return config

