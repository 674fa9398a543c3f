"""A sweep's rows checked before the first one trains: each selected row's config against its dataset and
devices (run_checks.check_run, dataset facts read once per dataset), and each row's run folder against the
sweep's config (the other rows' folders too: results.csv and the report cover them).

A row whose folder holds a run of another config would be refused half way through the sweep (unfinished), or
skipped as finished and its old numbers reported in results.csv as this sweep's (finished). Such rows are all
refused in one message, or with `--rerun_changed` their folders are moved to <workdir>/replaced/ (never deleted)
and the rows run again. A finished run is this row's when its stored config matches except for the keys a
resume may change (configuration.RESUMABLE_KEYS) and it trained for as many steps as the row now asks: a longer
or shorter length is a different result, not a finished one.

Nothing here trains or writes, except the moves `--rerun_changed` asks for once every check has passed.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
from collections.abc import Sequence

import ml_collections

from inception_jax.configuration import ConfigError, resume_conflicts
from inception_jax.data.input_pipeline import DataError
from inception_jax.sweeps.sweep_rows import SweepRow, describe_row
from inception_jax.training.run_checks import CheckedRun, check_run
from inception_jax.training.run_folder import config_record

log = logging.getLogger(__name__)
REPLACED_DIR = "replaced"  # <workdir>/replaced/<run_id>-<UTC time>/: run folders --rerun_changed moved aside


def check_rows(rows: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], selected: set[str], workdir: str, *,
               rerun_changed: bool = False) -> list[str]:
    """Refuse the sweep if a selected row's config does not fit its data or devices, or if its folder holds
    another config's run; with `rerun_changed`, move those folders aside instead. Returns the rows not selected
    whose folders hold another config's run (or whose config no longer checks): results.csv and the report cover
    every row, so the sweep then writes neither (run those rows to replace them)."""
    datasets: dict = {}
    changed: list[tuple[SweepRow, str]] = []
    stale: list[str] = []
    for row, config in rows:
        run_dir = os.path.join(workdir, "runs", row.run_id)
        if row.run_id in selected:
            difference = stored_run_difference(run_dir, config, _checked(row, config, datasets))
            if difference:
                changed.append((row, difference))
        elif os.path.exists(os.path.join(run_dir, "config.json")):
            try:
                difference = stored_run_difference(run_dir, config, check_run(config, datasets))
            except (ConfigError, DataError) as e:
                difference = f"its config no longer checks: {e}"
            if difference:
                stale.append(f"{row.run_id} [{difference}]")
    if changed and not rerun_changed:
        listed = "; ".join(f"{describe_row(row)} [{why}]" for row, why in changed)
        raise ConfigError(f"{len(changed)} row(s) have a run of a different config in {workdir}/runs: {listed}. A "
                          "finished one's numbers would be reported as this sweep's. Use another --workdir, or "
                          f"--rerun_changed to move these run folders to {workdir}/{REPLACED_DIR}/ and run the "
                          "rows again")
    for row, why in changed:
        move_aside(workdir, row.run_id, why)
    return stale


def _checked(row: SweepRow, config: ml_collections.ConfigDict, datasets: dict) -> CheckedRun:
    try:
        return check_run(config, datasets)
    except (ConfigError, DataError) as e:
        raise ConfigError(f"{describe_row(row, _column(row, str(e)))}: {e}") from None


def _column(row: SweepRow, message: str) -> str | None:
    """The row's column the message is most likely about: one it names, else one whose value it quotes (a dataset
    name, a split); None when the row's base config is at fault."""
    for matches in (lambda c, v: c in message, lambda c, v: len(str(v)) >= 3 and str(v) in message):
        column = next((c for c, v in row.overrides.items() if matches(c, v)), None)
        if column:
            return column
    return None


def stored_run_difference(run_dir: str, config: ml_collections.ConfigDict, checked: CheckedRun) -> str:
    """Why the run in `run_dir` is not this row's run ('' when it is, or when there is none yet)."""
    finished = os.path.exists(os.path.join(run_dir, "result.json"))
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return "finished, but without config.json to compare" if finished else ""
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return f"config.json unreadable: {e}"
    stored_steps = stored.pop("derived", {}).get("num_steps")
    current = config_record(config, run_id=os.path.basename(run_dir), num_classes=checked.opts.num_classes)
    conflicts = resume_conflicts(stored, current)
    if finished and stored_steps is not None and stored_steps != checked.num_steps:
        conflicts.append(f"training length: stored {stored_steps} steps, now {checked.num_steps}")
    if not conflicts:
        return ""
    shown = "; ".join(conflicts[:6]) + (f"; and {len(conflicts) - 6} more" if len(conflicts) > 6 else "")
    return f"{'finished' if finished else 'unfinished'}: {shown}"


def move_aside(workdir: str, run_id: str, why: str) -> str:
    """runs/<run_id> -> replaced/<run_id>-<UTC time>, unless a job is running it (its lock is held)."""
    run_dir = os.path.join(workdir, "runs", run_id)
    lock_path = os.path.join(run_dir, ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"--rerun_changed: {run_dir} is in use by a running job (lock {lock_path}); wait for "
                              "it to end") from None
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        target = os.path.join(workdir, REPLACED_DIR, f"{run_id}-{stamp}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(run_dir, target)
    finally:
        os.close(fd)
    log.warning("%s: its run had another config (%s); moved to %s, the row runs again", run_id, why, target)
    return target
