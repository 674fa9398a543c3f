"""Orbax checkpoints of a run: interval + preemption saves, keep-latest-N, async, exact resume.

Resume order (documented in the README): this workdir's latest complete checkpoint, else `init_from`, else a
fresh initialisation. Orbax commits a step by an atomic rename of its temporary directory, so a half-written
checkpoint is never listed and never loaded; leftovers are cleaned up.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class PreemptionWatcher:
    """SIGTERM -> finish the current step, save, exit 0. Under `jax.distributed` JAX's own preemption notifier
    catches SIGTERM and Orbax's `reached_preemption` tells every process the same step; on one process without
    it, this handler sets a flag the loop reads."""

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
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every_steps),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Start an async save if the interval policy (or `force`) says so; returns whether it did."""
        if step in self.manager.all_steps():
            return False  # already saved (the interval save of the last step, then the final forced one)
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               meta=ocp.args.JsonSave(meta)), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore into `abstract_state`'s shapes and shardings (any device count: 8 devices -> 1 works)."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
