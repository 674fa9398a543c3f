"""A sweep's rows checked before the first one trains: each selected row's config against its dataset and
devices (run_checks.check_run, dataset facts read once per dataset), and each row's run folder against the
sweep's config (the other rows' folders too: results.csv and the report cover them).

A row whose folder holds a run of another config would be refused half way through the sweep (unfinished), or
skipped as finished and its old numbers reported in results.csv as this sweep's (finished). Such rows are all
refused in one message, or with `--rerun_changed` their folders are moved to <workdir>/replaced/ (never deleted)
and the rows run again. Whether a folder holds a row's run is run_folder.stored_run_difference's answer, the
one single runs get. The runner asks again under the row's lock when it skips or resumes the row (`claim_row`),
and over every row before it writes results.csv (`row_differences`): another command may write the folders
in between.

Nothing here trains or writes, except the moves `--rerun_changed` asks for once every check has passed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ml_collections

from inception_jax.data.input_pipeline import DataError
from inception_jax.sweeps.sweep_rows import SweepRow, describe_row
from inception_jax.training.run_checks import CheckedRun, check_run
from inception_jax.training.run_folder import REPLACED_DIR, WorkdirLock, config_record, stored_run_difference, utc_stamp
from inception_jax.validation import ConfigError

log = logging.getLogger(__name__)
# <workdir>/replaced/<run_id>-<UTC time>/: run folders --rerun_changed moved aside (run_folder.REPLACED_DIR)


def check_rows(rows: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], selected: set[str], workdir: str, *,
               rerun_changed: bool = False) -> list[str]:
    """Refuse the sweep if a selected row's config does not fit its data or devices, or if its folder holds
    another config's run; with `rerun_changed`, move those folders aside instead. Returns the rows not selected
    whose folders hold another config's run (or whose config no longer checks): results.csv and the report cover
    every row, so the sweep then writes neither (run those rows to replace them)."""
    changed, stale = row_differences(rows, selected, workdir)
    if changed and not rerun_changed:
        listed = "; ".join(f"{describe_row(row)} [{why}]" for row, why in changed)
        raise ConfigError(f"{len(changed)} row(s) have a run of a different config in {workdir}/runs: {listed}. A "
                          "finished one's numbers would be reported as this sweep's. Use another --workdir, or "
                          f"--rerun_changed to move these run folders to {workdir}/{REPLACED_DIR}/ and run the "
                          "rows again")
    for row, why in changed:
        move_aside(workdir, row.run_id, why)
    return stale


def row_differences(rows: Sequence[tuple[SweepRow, ml_collections.ConfigDict]], selected: set[str], workdir: str,
                    datasets: dict | None = None) -> tuple[list[tuple[SweepRow, str]], list[str]]:
    """(selected rows whose folder holds another config's run, with why; the other rows' folders that do, as
    'run_id [why]', including rows whose config no longer checks)."""
    datasets = {} if datasets is None else datasets
    changed: list[tuple[SweepRow, str]] = []
    stale: list[str] = []
    for row, config in rows:
        run_dir = os.path.join(workdir, "runs", row.run_id)
        if row.run_id in selected:
            difference = row_difference(run_dir, config, _checked(row, config, datasets))
            if difference:
                changed.append((row, difference))
        elif os.path.exists(os.path.join(run_dir, "config.json")):
            try:
                difference = row_difference(run_dir, config, check_run(config, datasets))
            except (ConfigError, DataError) as e:
                difference = f"its config no longer checks: {e}"
            if difference:
                stale.append(f"{row.run_id} [{difference}]")
    return changed, stale


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


def row_difference(run_dir: str, config: ml_collections.ConfigDict, checked: CheckedRun) -> str:
    """Why the run in `run_dir` is not this row's run ('' when it is, or when there is none yet):
    run_folder.stored_run_difference, the single runs' rule."""
    current = config_record(config, run_id=os.path.basename(run_dir), num_classes=checked.opts.num_classes)
    return stored_run_difference(run_dir, current, checked.num_steps)


def claim_row(workdir: str, row: SweepRow, config: ml_collections.ConfigDict, checked: CheckedRun, *,
              rerun_changed: bool = False) -> bool:
    """The check at the moment a row is skipped or handed to training, under the row folder's lock (another
    command may have written the folder since check_rows): True when it holds this row's finished run (skip it),
    False when it is to train or resume. A run of another config is refused (ConfigError), or with
    `rerun_changed` moved aside."""
    run_dir = os.path.join(workdir, "runs", row.run_id)
    if not os.path.isdir(run_dir):
        return False
    with WorkdirLock(run_dir):
        difference = row_difference(run_dir, config, checked)
        if not difference:
            return os.path.exists(os.path.join(run_dir, "result.json"))
        if not rerun_changed:
            raise ConfigError(f"{describe_row(row)}: its run folder {run_dir} now holds a run of a different config "
                              f"[{difference}], written after this sweep checked it (another command on this "
                              "workdir?); its numbers are not this sweep's, so results.csv and the report are not "
                              f"written. Use another --workdir, or --rerun_changed to move it to "
                              f"{workdir}/{REPLACED_DIR}/ and run the row again")
        _move(workdir, row.run_id, difference)
    return False


def move_aside(workdir: str, run_id: str, why: str) -> str:
    """runs/<run_id> -> replaced/<run_id>-<UTC time>, unless a job is running it (its lock is held)."""
    run_dir = os.path.join(workdir, "runs", run_id)
    try:
        with WorkdirLock(run_dir):
            return _move(workdir, run_id, why)
    except ConfigError:
        raise ConfigError(f"--rerun_changed: {run_dir} is in use by a running job (lock {run_dir}/.lock); wait for "
                          "it to end") from None


def _move(workdir: str, run_id: str, why: str) -> str:
    """The move itself, under the row folder's lock (held by the caller; the lock file moves with the folder)."""
    target = os.path.join(workdir, REPLACED_DIR, f"{run_id}-{utc_stamp()}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(workdir, "runs", run_id), target)
    log.warning("%s: its run had another config (%s); moved to %s, the row runs again", run_id, why, target)
    return target
