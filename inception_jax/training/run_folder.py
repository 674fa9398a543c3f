"""The run folder: the lock that keeps a second job out of a workdir, config.json (the record a run stores and
a rerun is compared with), and the refusal to resume another config's run. docs/run_folder.md lists the files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil

import jax
import ml_collections

from inception_jax.configuration import ConfigError, resume_conflicts
from inception_jax.training.prepared_run import PreparedRun


def config_record(config: ml_collections.ConfigDict, *, run_id: str, num_classes: int) -> dict:
    """config.json less `derived`: the resolved config as a run stores it, and as a rerun compares it."""
    record = json.loads(config.to_json())
    record.setdefault("run_id", run_id)
    record["model"]["num_classes"] = num_classes
    sweep = record.pop("sweep", {})
    if sweep.get("row"):
        record["run_id"] = sweep["row"]
        record["sweep"] = {"name": sweep["name"], "row": sweep["row"], "overrides": json.loads(sweep["overrides_json"])}
    return record


def run_record(run: PreparedRun) -> dict:
    """config.json: the resolved config plus the derived facts analysis reads (docs/run_folder.md)."""
    record = config_record(run.config, run_id=os.path.basename(run.workdir.rstrip("/")),
                           num_classes=run.opts.num_classes)
    return {**record, "derived": run.derived}


def check_stored_config(run: PreparedRun) -> None:
    """A workdir holding another config's run is refused, not overwritten."""
    path = os.path.join(run.workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        stored = json.load(f)
    stored.pop("derived", None)
    current = run_record(run)
    current.pop("derived", None)
    conflicts = resume_conflicts(stored, current)
    if conflicts:
        raise ConfigError(f"workdir {run.workdir} holds a run with a different config; refusing to resume it with "
                          f"this one ({len(conflicts)} differences: {'; '.join(conflicts[:6])}). Use another "
                          "--workdir, or the stored config")


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
