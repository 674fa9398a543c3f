"""Rows side by side: a sweep whose rows compute on `cpu_threads` cores each trains them in worker processes, one
per lane of that many cores, each pinned to its own cores before it starts JAX. XLA:CPU sizes its thread pool from
the process's cores, so a row computes with the same threads, and gives the same numbers, alone, beside others,
resumed, or via --row (which runs one lane). On 1 core each, rows side by side finish more runs per minute than
one after the other on every core (docs/performance.md §6.4).

The parent hands out one row at a time: a lane keeps to the rows of the program family it already holds; else it
takes a family no lane has compiled (its compile warms the per-thread-count persistent cache, cpu/runtime.py);
else one another lane has compiled (a cache load); never one another lane is still compiling while the cache can
hand it over. Before a row goes out, the runner checks its folder under the row's lock (`claim`). SIGTERM or
SIGINT to the parent is forwarded to the lanes (each checkpoints its row and stops; the parent reports the rows
preempted); an error in a lane stops the others the same way and is raised again in the parent, the same class
with the same message; a lane that dies is LaneCrashed. Workers log to files, never the parent's console: a row's
lines go to <run_dir>/train.log, the rest to <workdir>/lanes/<lane>.log (docs/run_folder.md). This module is the
parent's side; the worker's is lane_worker.py.

This module imports no JAX at the top: a worker imports it (RowTask's module) to read the rows it is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

from inception_jax.sweeps.lane_worker import _lane_main

log = logging.getLogger(__name__)
LANES_DIR = "lanes"  # <workdir>/lanes/<lane>.log: a worker's output outside its rows
RESEND_SIGTERM_S = 2.0  # a lane between rows, or before its checkpoint manager listens, is told again


class LaneCrashed(RuntimeError):
    """A worker process ended without reporting its row (killed, out of memory, a crash in native code)."""


@dataclasses.dataclass
class RowTask:
    """One row for a lane: its run folder, its config (with the sweep's bookkeeping) and its program family."""

    run_id: str
    run_dir: str
    config: Any  # ml_collections.ConfigDict
    family: str
    label: str  # "[3/12] w160_plain_seed0: {...}", the parent's log line when the row goes out


@dataclasses.dataclass
class RowEnd:
    run_id: str
    status: str  # a RunResult status: "finished", "preempted", "diverged", "stopped_dead"
    steps: int
    result: dict
    seconds: float  # this command's wall time for the row, compiling included
    resumed_time_s: float = 0.0  # of result["wall_time_s"], what earlier commands trained (RunResult's)


@dataclasses.dataclass
class _Lane:
    index: int
    cores: tuple[int, ...]
    process: Any
    conn: Any
    task: RowTask | None = None
    began: float = 0.0
    families: set = dataclasses.field(default_factory=set)
    alive: bool = True
    ready: bool = False  # its signal handlers are in place: it may be given a row, and told to stop


def lane_cores(count: int, threads: int, usable: Sequence[int]) -> list[tuple[int, ...]]:
    """Each lane's own `threads` cores out of `usable`."""
    return [tuple(usable[i * threads:(i + 1) * threads]) for i in range(count)]


def run_in_lanes(tasks: Sequence[RowTask], *, lanes: int, threads: int, usable: Sequence[int], workdir: str,
                 setup_config: Any, claim: Callable[[RowTask], bool], cache_shared: bool,
                 started: Callable[[RowTask, int], None], skipped: Callable[[RowTask], None],
                 ended: Callable[[RowEnd], None]) -> list[str]:
    """Train `tasks` in `lanes` worker processes of `threads` cores each; returns the rows preempted (empty when
    every row ended). `claim(task)` is the runner's check under the row's lock: True skips the row, an exception
    stops the sweep. `cache_shared`: a persistent compilation cache hands one lane's programs to the others."""
    context = multiprocessing.get_context("spawn")
    os.makedirs(os.path.join(workdir, LANES_DIR), exist_ok=True)
    pool: list[_Lane] = []
    for index, cores in enumerate(lane_cores(lanes, threads, usable)):
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_lane_main, name=f"inception_jax-lane-{index}", daemon=True, args=(
            index, cores, child_end, os.path.join(workdir, LANES_DIR, f"{index}.log"), setup_config))
        process.start()
        child_end.close()
        pool.append(_Lane(index, cores, process, parent_end))
    log.info("%d lane(s) of %d core(s) each: %s", lanes, threads, ", ".join(
        f"lane {lane.index} on core(s) {list(lane.cores)} (pid {lane.process.pid})" for lane in pool))
    runner = _Runner(pool, list(tasks), claim, cache_shared, started, skipped, ended)
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.loop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        runner.close()
    if runner.error is not None:
        raise runner.error
    return runner.preempted


class _Runner:
    def __init__(self, pool: list[_Lane], pending: list[RowTask], claim: Callable[[RowTask], bool],
                 cache_shared: bool, started: Callable, skipped: Callable, ended: Callable):
        self.pool, self.pending, self.claim, self.cache_shared = pool, pending, claim, cache_shared
        self.started, self.skipped, self.ended = started, skipped, ended
        self.compiled: set[str] = set()  # families some lane has compiled (in the persistent cache by now)
        self.compiling: set[str] = set()  # families a lane is compiling
        self.stopping = False
        self.error: BaseException | None = None
        self.preempted: list[str] = []
        self.last_forward = 0.0

    def on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            log.warning("%s received: the lanes checkpoint their rows and stop", signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        self.forward()

    def forward(self) -> None:
        """SIGTERM to every lane with a row: its checkpoint manager saves after the current step."""
        self.last_forward = time.monotonic()
        for lane in self.pool:
            if lane.alive and lane.ready and lane.task is not None and lane.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(lane.process.pid, signal.SIGTERM)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.stop()

    def loop(self) -> None:
        while True:
            if not self.stopping:
                self.dispatch()
            busy = [lane for lane in self.pool if lane.alive and lane.task is not None]
            if not busy and (self.stopping or not self.pending):
                return
            if not any(lane.alive for lane in self.pool):
                return
            live = [lane for lane in self.pool if lane.alive]
            ready = wait([lane.conn for lane in live] + [lane.process.sentinel for lane in live], RESEND_SIGTERM_S)
            for lane in live:
                if lane.conn in ready:
                    self.receive(lane)
            for lane in live:
                if lane.process.sentinel in ready and lane.alive:
                    self.died(lane)
            if self.stopping and time.monotonic() - self.last_forward >= RESEND_SIGTERM_S:
                self.forward()

    def dispatch(self) -> None:
        for lane in self.pool:
            while lane.alive and lane.ready and lane.task is None and not self.stopping:
                task = self.pick(lane)
                if task is None:
                    break
                self.pending.remove(task)
                try:
                    if self.claim(task):
                        self.skipped(task)
                        continue
                except BaseException as e:  # the runner's refusal (ConfigError): stop, then raise it
                    self.fail(e)
                    return
                if task.family not in lane.families and task.family not in self.compiled:
                    self.compiling.add(task.family)
                lane.families.add(task.family)
                lane.task, lane.began = task, time.perf_counter()
                log.info("%s (lane %d)", task.label, lane.index)
                lane.conn.send(task)

    def pick(self, lane: _Lane) -> RowTask | None:
        """The lane's next row: its own family's, a family nobody compiled, one compiled elsewhere; a family
        another lane is compiling only when no cache can hand it over."""
        rules = (lambda f: f in lane.families, lambda f: f not in self.compiling and f not in self.compiled,
                 lambda f: f in self.compiled, lambda f: not self.cache_shared or not self.being_compiled(f))
        for rule in rules:
            task = next((t for t in self.pending if rule(t.family)), None)
            if task is not None:
                return task
        return None

    def being_compiled(self, family: str) -> bool:
        return family in self.compiling and any(lane.alive and lane.task is not None and lane.task.family == family
                                                for lane in self.pool)

    def receive(self, lane: _Lane) -> None:
        while lane.alive and lane.conn.poll():
            try:
                message = lane.conn.recv()
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "ready":
                lane.ready = True
            elif kind == "started":
                self.started(lane.task, lane.index)
            elif kind == "compiled":
                self.compiled.add(message[1])
                self.compiling.discard(message[1])
            elif kind == "ended":
                _, status, steps, result, resumed_time_s = message
                task, lane.task = lane.task, None
                if status == "preempted":
                    self.preempted.append(task.run_id)
                    self.stopping = True
                self.ended(RowEnd(task.run_id, status, steps, result, time.perf_counter() - lane.began,
                                  resumed_time_s))
            elif kind == "error":
                lane.task = None
                self.fail(message[1])

    def died(self, lane: _Lane) -> None:
        self.receive(lane)  # whatever it sent before it ended
        lane.alive = False
        lane.process.join(timeout=1)
        if lane.task is None and (self.stopping or not self.pending):
            return  # stopped between rows (Ctrl-C reaches every process of the terminal), or nothing left
        code = lane.process.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 and
               -code in signal.Signals._value2member_map_ else f"exit status {code}")
        if lane.task is not None:
            task, lane.task = lane.task, None
            self.fail(LaneCrashed(
                f"sweep row {task.run_id!r}: its worker process (lane {lane.index}, pid {lane.process.pid}) died "
                f"({how}) before the row ended; its run folder keeps its last checkpoint, and the same command "
                f"resumes it (its log: {os.path.join(task.run_dir, 'train.log')})"))
        else:
            self.fail(LaneCrashed(f"the worker process of lane {lane.index} (pid {lane.process.pid}) died ({how}) "
                                  f"between rows; its log: {lane_log(lane)}"))

    def close(self) -> None:
        for lane in self.pool:
            if lane.alive:
                with contextlib.suppress(BrokenPipeError, OSError):
                    lane.conn.send(None)
        deadline = time.monotonic() + 60
        for lane in self.pool:
            lane.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if lane.process.is_alive():
                log.warning("lane %d (pid %d) did not stop; killing it", lane.index, lane.process.pid)
                lane.process.kill()
                lane.process.join(timeout=5)
            lane.conn.close()


def lane_log(lane: _Lane) -> str:
    return f"{LANES_DIR}/{lane.index}.log"
