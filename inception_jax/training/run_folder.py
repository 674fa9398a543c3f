"""The run folder: the lock that keeps a second job out of a workdir, config.json (the record a run stores and
a rerun is compared with), and the one answer to "is this folder this config's run?" (`stored_run_difference`),
which a single run asks under its lock and a sweep asks for every row, before anything trains and again under
the row's lock when it skips or resumes it. docs/run_folder.md lists the files.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from inception_jax.configuration import resume_conflicts
from inception_jax.training.prepared_run import PreparedRun
from inception_jax.validation import ConfigError

log = logging.getLogger(__name__)
REPLACED_DIR = "replaced"  # where --rerun_changed moves another config's run (docs/run_folder.md)


def config_record(config: ml_collections.ConfigDict, *, run_id: str, num_classes: int) -> dict:
    """config.json less `derived`: the resolved config as a run stores it, and as a rerun compares it."""
    record = json.loads(config.to_json())
    record.setdefault("run_id", run_id)
    record["model"]["num_classes"] = num_classes
    sweep = record.pop("sweep", {})
    if sweep.get("row"):
        record["run_id"] = sweep["row"]
        record["sweep"] = {"name": sweep["name"], "row": sweep["row"], "overrides": json.loads(sweep["overrides_json"]),
                           "command": sweep.get("command", "")}
    return record


def run_record(run: PreparedRun) -> dict:
    """config.json: the resolved config plus the derived facts analysis reads (docs/run_folder.md)."""
    record = config_record(run.config, run_id=os.path.basename(run.workdir.rstrip("/")),
                           num_classes=run.opts.num_classes)
    return {**record, "derived": run.derived}


def stored_run_difference(run_dir: str, current: Mapping[str, Any], num_steps: int) -> str:
    """Why the run in `run_dir` is not the run `current` (a config_record) of `num_steps` steps describes: '' when
    it is, or when the folder holds no run yet.

    The stored config must match except for the keys a resume may change (configuration.RESUMABLE_KEYS). The
    training length is one of those for an unfinished run (train longer, or stop earlier), except where the
    learning-rate schedule is laid out over it (cosine: its rate at step 5 of 8 is not its rate at step 5 of 4);
    a finished run of another length is another result, never this one's."""
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
    conflicts = resume_conflicts(stored, {k: v for k, v in current.items() if k != "derived"})
    schedule_over_length = current.get("train", {}).get("lr_schedule") == "cosine"
    if stored_steps is not None and stored_steps != num_steps and (finished or schedule_over_length):
        conflicts.append(f"training length: stored {stored_steps} steps, now {num_steps}"
                         + ("" if finished else " (the cosine schedule is laid out over it)"))
    if not conflicts:
        return ""
    shown = "; ".join(conflicts[:6]) + (f"; and {len(conflicts) - 6} more" if len(conflicts) > 6 else "")
    return f"{'finished' if finished else 'unfinished'}: {shown}"


def check_stored_config(run: PreparedRun) -> None:
    """A workdir holding another config's run is refused, not resumed, re-reported or overwritten (called under
    the workdir's lock)."""
    difference = stored_run_difference(run.workdir, run_record(run), run.num_steps)
    if difference:
        raise ConfigError(f"workdir {run.workdir} holds a run with a different config; refusing to resume it with "
                          f"this one ({difference}). Use another --workdir, the stored config, or --rerun_changed "
                          f"to move it to {os.path.join(run.workdir, REPLACED_DIR)}/<UTC time>/ and start again")


def replace_changed_run(workdir: str, current: Mapping[str, Any], num_steps: int) -> str | None:
    """--rerun_changed for a single run: under the workdir's lock, a run of another config is moved into
    <workdir>/replaced/<UTC time>/ (never deleted; analysis does not look there); returns where, or None when the
    workdir holds this config's run or none."""
    if not os.path.isdir(workdir):
        return None
    with WorkdirLock(workdir):
        difference = stored_run_difference(workdir, current, num_steps)
        if not difference:
            return None
        target = os.path.join(workdir, REPLACED_DIR, utc_stamp())
        os.makedirs(target)
        for name in sorted(os.listdir(workdir)):
            if name not in (REPLACED_DIR, ".lock"):
                os.replace(os.path.join(workdir, name), os.path.join(target, name))
    log.warning("workdir %s held a run of another config (%s); moved to %s, the run starts again", workdir,
                difference, target)
    return target


def utc_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")


class WorkdirLock:
    """An exclusive lock on the workdir: a second job on the same workdir stops before writing anything. A run that
    fails before it wrote a file (a bad init_from, a failed compile) takes away the folder it created, so no
    empty run folder is left to look like a run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.workdir = workdir
        self.created = False

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        self.created = not os.path.exists(self.workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"workdir {self.workdir} is in use by another running job (lock {self.path}); "
                              "wait for it or use another --workdir") from None
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if jax.process_index() == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            if exc_type is not None and self.created and self._nothing_written():
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _nothing_written(self) -> bool:
        """The folder holds only the lock and empty folders (checkpoints/, made when the run opened it)."""
        return all(folder == self.workdir and name == ".lock"
                   for folder, _, names in os.walk(self.workdir) for name in names)
