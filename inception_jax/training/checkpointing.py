"""Orbax checkpoints of a run: interval + preemption saves, keep-latest-N, async, exact resume.

Resume order (documented in the README): this workdir's latest complete checkpoint, else `init_from`, else a
fresh initialisation. Orbax commits a step by an atomic rename of its temporary directory, so a half-written
checkpoint is never listed and never loaded; leftovers are cleaned up. A committed checkpoint whose files were
damaged later is skipped in favour of the newest one that restores (`RunCheckpoints.restore`).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import logging
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
DAMAGED_DIR = "damaged_checkpoints"  # beside checkpoints/: what restore skipped, kept for inspection


class CheckpointError(RuntimeError):
    """No checkpoint restores, or one cannot be saved; the message says what was kept and what to do."""


def _first_words(error: BaseException, limit: int = 160) -> str:
    """An error's gist for one log line: TensorStore's messages run to thousands of characters of spec."""
    text = str(error).split(". See full TensorStore details")[0].splitlines()[0] if str(error) else ""
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class PreemptionWatcher:
    """SIGTERM -> finish the current step, save, exit 75 (sweep.EXIT_PREEMPTED). Under `jax.distributed` JAX's own
    preemption notifier catches SIGTERM and Orbax's `reached_preemption` tells every process the same step; on one
    process without it, this handler sets a flag the loop reads."""

    def __init__(self, manager: ocp.CheckpointManager, *, distributed: bool):
        self._manager = manager
        self._distributed = distributed
        self._flag = threading.Event()
        self._previous = None
        if not distributed and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self._distributed:
            return bool(self._manager.reached_preemption(step))
        return self._flag.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class RunCheckpoints:
    """The checkpoints/ directory of one run: items `state` (the TrainState) and `meta` (JSON: step, elapsed
    training seconds, data position)."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only, self.keep = read_only, keep
        self._in_flight: int | None = None  # the step of the async save last started, until waited for
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        if not read_only:
            quiet_failed_saves()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Start an async save if the interval policy (or `force`) says so; returns whether it did."""
        if step in self.manager.all_steps():
            return False  # already saved (the interval save of the last step, then the final forced one)
        if self._in_flight is not None and (force or self.manager.should_save(step)):
            self.wait()  # as Orbax's save would: a failure of the previous save is named by that save's step
        with self._storage_errors(f"saving the checkpoint of step {step}"):
            started = self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                      meta=ocp.args.JsonSave(meta)), force=force)
        if started:
            self._in_flight = step
        return started

    def check_free_space(self, abstract_state: Any) -> None:
        """Room for the checkpoints still to come, checked before training rather than found at the first save:
        `keep` of them plus the one being written before the oldest is deleted, less those already here."""
        import shutil

        size = checkpoint_bytes(abstract_state)
        count = max(1, self.keep + 1 - len(self.manager.all_steps()))
        existing = self.directory
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        free = shutil.disk_usage(existing).free
        if free < size * count:
            raise CheckpointError(
                f"not enough free space for this run's checkpoints in {self.directory}: {free / 2**20:,.0f} MiB "
                f"free, {count} x {size / 2**20:,.1f} MiB needed (train.keep_checkpoints={self.keep}, plus the one "
                "being written); free space, lower train.keep_checkpoints, or use another --workdir")

    @contextlib.contextmanager
    def _storage_errors(self, what: str) -> Iterator[None]:
        """A save that fails for want of space (or a file system gone read-only) -> one line saying what is safe."""
        try:
            yield
        except Exception as e:
            if not _is_storage_error(e):
                raise
            kept = sorted(self.manager.all_steps())
            safe = (f"the checkpoints of steps {kept} and the run's metrics are intact" if kept else
                    "the run's metrics are intact (no checkpoint had been saved yet)")
            resume = f"resume from step {kept[-1]}" if kept else "start again"
            raise CheckpointError(f"{what} to {self.directory} failed ({_first_words(e)}); nothing already written "
                                  f"was lost: {safe}, and a partial save is never loaded. Free space and rerun the "
                                  f"same command to {resume}") from None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into `abstract_state`'s shapes and shardings (any device count: 8 devices -> 1 works).

        Without `step`: the newest checkpoint that restores completely. A newer one that fails to read (a data
        file truncated by a full disk or a bad copy; Orbax's commit only proves the files were all written) is
        skipped with one log line and, once an older one has restored, moved to `damaged_checkpoints/` beside
        this directory for inspection. Nothing is moved when none restores: then the cause is more likely the
        code or config than the files."""
        if step is not None:
            return self._restore_step(step, abstract_state)
        failures: list[tuple[int, str]] = []
        for candidate in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self._restore_step(candidate, abstract_state)
            except Exception as e:  # TensorStore raises a bare Exception, with ~2,000 characters of spec
                failures.append((candidate, _first_words(e)))
                continue
            for damaged, why in failures:
                log.warning("checkpoint at step %d in %s does not restore (%s): skipped, %s; restored step %d",
                            damaged, self.directory, why, self._move_aside(damaged), candidate)
            return restored
        steps = [s for s, _ in failures]
        raise CheckpointError(f"no checkpoint in {self.directory} restores (steps {steps}; the newest: "
                              f"{failures[0][1] if failures else 'none'}); they are left in place. If they were "
                              "written by another version of the code or config, use another --workdir")

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def _move_aside(self, step: int) -> str:
        """A damaged step's folder -> damaged_checkpoints/<step>-<UTC time>/, outside what Orbax lists and
        prunes (kept for inspection, never deleted); a read-only reader (init_from) leaves it where it is."""
        if self.read_only or jax.process_index() != 0:
            return "left in place"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
        target = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR, f"{step}-{stamp}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(self.directory, str(step)), target)
        self.manager.reload()
        return f"moved to {target}"

    def wait(self) -> None:
        step, self._in_flight = self._in_flight, None
        what = "finishing a checkpoint save" if step is None else f"saving the checkpoint of step {step}"
        with self._storage_errors(what):  # an async save's error surfaces here
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def checkpoint_bytes(abstract_state: Any) -> int:
    """The bytes of one checkpoint's arrays (params, optimizer state, EMA, batch statistics), uncompressed."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(abstract_state))


_STORAGE_WORDS = ("No space left", "RESOURCE_EXHAUSTED", "Disk quota exceeded", "Read-only file system")


def _is_storage_error(error: BaseException | None) -> bool:
    """Out of space or quota, or the file system refusing writes; TensorStore reports these as text in a bare
    Exception, so the message is read too."""
    if error is None:
        return False
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return any(words in str(error) for words in _STORAGE_WORDS)


def _is_closed_loop_callback(error: BaseException | None) -> bool:
    """TensorStore finishing a write for an event loop Orbax has closed: the save failed on its first error and
    nobody awaits the others (called from C++, so the traceback starts in asyncio)."""
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


class _FailedSaveNoise(logging.Filter):
    """Drops what a save failing for want of space prints besides our one line (`RunCheckpoints._storage_errors`,
    raised at the next save or wait): Orbax's error logs with their tracebacks, one per background thread, and
    asyncio's "exception was never retrieved" for the writes of Orbax's event loop still pending when the first
    failed. Up to a thousand lines, all saying "No space left on device"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else None
        if record.name == "asyncio":
            return not ("exception was never retrieved" in record.getMessage()
                        and (_is_storage_error(error) or _is_closed_loop_callback(error)))
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax and (_is_storage_error(error) or _is_storage_error(Exception(record.getMessage()))))


@functools.cache
def quiet_failed_saves() -> None:
    """Install `_FailedSaveNoise` on the loggers Orbax (absl) and asyncio write to, and an unraisable-exception hook
    that drops TensorStore's callbacks into Orbax's closed event loop (`_is_closed_loop_callback`). Once per
    process; everything else passes through unchanged."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_FailedSaveNoise())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback)
        if not (_is_closed_loop_callback(unraisable.exc_value) and frames and frames[0].name == "call_soon_threadsafe"):
            previous(unraisable)

    sys.unraisablehook = hook


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
