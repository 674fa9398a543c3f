"""A lane's worker process: pinned to its cores before JAX starts, then it trains the rows the parent (lanes.py)
sends until told to end, reporting each as a message and logging to files, never the parent's console.

The parent starts it with multiprocessing's spawn, which imports this module in the new process by its path
before `_lane_main` has pinned it; so this module imports no JAX at the top, and nothing of lanes.py (whose
RowTask arrives pickled, after pinning).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
import traceback
from typing import Any

log = logging.getLogger(__name__)
_STOP = threading.Event()


def _lane_main(index: int, cores: tuple[int, ...], conn: Any, log_path: str, setup_config: Any) -> None:
    """A lane's process: pinned to `cores` before JAX or TensorFlow start, then rows until told to end."""
    os.sched_setaffinity(0, cores)  # first of all: XLA:CPU and TensorFlow size their thread pools from it
    _output_to(log_path)
    for s in (signal.SIGTERM, signal.SIGINT):  # between rows; the checkpoint manager listens during one
        signal.signal(s, lambda signum, frame: _STOP.set())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn.send(("ready",))
    from inception_jax.cpu import runtime

    runtime.setup(setup_config)
    from inception_jax.sweeps.compile_ahead import compile_ahead
    from inception_jax.training.loop import train_and_evaluate

    log.info("lane %d: pid %d on core(s) %s", index, os.getpid(), list(cores))
    families: set[str] = set()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        os.makedirs(task.run_dir, exist_ok=True)
        _output_to(os.path.join(task.run_dir, "train.log"))
        log.info("lane %d: %s", index, task.label)
        conn.send(("started",))
        try:
            if _STOP.is_set():
                conn.send(("ended", "preempted", 0, {"status": "preempted", "steps": 0}, 0.0))
                continue
            if task.family not in families:
                compile_ahead([task.config])  # before the row: the parent can send this family elsewhere now
                families.add(task.family)
                conn.send(("compiled", task.family))
            if _STOP.is_set():
                conn.send(("ended", "preempted", 0, {"status": "preempted", "steps": 0}, 0.0))
            else:
                result = train_and_evaluate(task.config, task.run_dir)
                conn.send(("ended", result.status, result.steps,
                           result.result or {"status": result.status, "steps": result.steps}, result.resumed_time_s))
        except BaseException as e:
            log.exception("lane %d: %s failed", index, task.run_id)
            conn.send(("error", _portable(e, task.run_id, index)))
        finally:
            _output_to(log_path)


def _output_to(path: str) -> None:
    """This process's stdout and stderr (Python's logging, warnings, XLA's and TensorFlow's own lines) -> `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _portable(error: BaseException, run_id: str, index: int) -> BaseException:
    """The error as the parent raises it: the same class and message for what main.py turns into one line and an
    exit status (bad config or data, checkpoint, storage); anything else with the worker's traceback."""
    from inception_jax.data.input_pipeline import DataError
    from inception_jax.training.checkpointing import CheckpointError
    from inception_jax.validation import ConfigError

    if isinstance(error, ConfigError | DataError | CheckpointError | OSError):
        try:
            return pickle.loads(pickle.dumps(error))
        except Exception:  # unpicklable: sent as text below
            pass
    return RuntimeError(f"sweep row {run_id!r} failed in lane {index}:\n{traceback.format_exc()}")
