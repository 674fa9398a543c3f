"""What the main job does with its flags: one run, or a sweep of rows (sweep.py); `--row` runs one row of a sweep,
`--export_csv` writes its rows to a spreadsheet and `--print_commands` prints one command per row, so that rows can
be run elsewhere. Every row is checked against its data and its folder before anything is written.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from inception_jax.config_files import config_module
from inception_jax.sweeps import console_log
from inception_jax.sweeps.console import SweepConsole
from inception_jax.sweeps.hparams import write_run_summary
from inception_jax.sweeps.progress import NullProgress
from inception_jax.sweeps.sweep import EXIT_PREEMPTED, run_sweep
from inception_jax.sweeps.sweep_checks import check_rows
from inception_jax.sweeps.sweep_rows import SweepRow, override_args, read_csv, row_command, validate_rows, write_csv
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.run_checks import check_run, check_workdir_writable
from inception_jax.training.run_folder import config_record, replace_changed_run
from inception_jax.validation import ConfigError, close_matches


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

