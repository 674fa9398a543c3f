"""`train_and_evaluate(config, workdir)`: the training loop. It reads like a table of contents; each concern
lives in its own module (run_setup, train_step, checkpointing, metrics, diagnostics, input_pipeline).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from inception_jax.configuration import ConfigError, resume_conflicts
from inception_jax.cpu import host_memory
from inception_jax.data.input_pipeline import create_eval_stream
from inception_jax.training import hparams, sharding, verdicts
from inception_jax.training.checkpointing import PreemptionWatcher, RunCheckpoints, abstract_with_shardings
from inception_jax.training.metrics import RunWriter, write_json_atomic
from inception_jax.training.programs import Programs, compile_steps, program_key, programs_for
from inception_jax.training.run_setup import Run, config_record, prepare_run, restore_or_init, state_layout
from inception_jax.training.train_step import is_log_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    status: str  # "finished" | "preempted" | "diverged" | "stopped_dead" | "compiled"
    steps: int
    result: dict


# ---------------------------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    run = prepare_run(config, workdir)  # every config check, before anything compiles or is written
    with workdir_lock(run.workdir):
        check_stored_config(run)
        if config.compile_only:
            return compile_only(run)
        if config.eval_only:
            return evaluate_only(run)
        checkpoints = RunCheckpoints(os.path.join(run.workdir, "checkpoints"),
                                     every_steps=config.train.checkpoint_every_steps,
                                     keep=config.train.keep_checkpoints)
        try:
            return _train(run, checkpoints)
        finally:
            checkpoints.close()


def _train(run: Run, checkpoints: RunCheckpoints) -> RunResult:
    t = run.config.train
    _, shardings = state_layout(run)
    programs = programs_for(run, shardings)
    state, shardings, meta = restore_or_init(run, checkpoints)
    start = int(jax.device_get(state.step))
    writer = RunWriter(run.workdir, resume_step=start)
    if start == 0:
        writer.write_json("config.json", run_record(run))
        log_parameter_overview(state)
    history = [r for r in writer.history() if r.get("split") == "train"]
    batches = device_prefetch(run.train_stream.iterator(start), run.mesh)
    inputs = EvalInputs(run)
    programs.prepare(state, batches.peek(), inputs.probe_batch())  # compiled before the clock starts
    train_fn = programs.train
    seed = jax.device_put(np.int32(run.config.seed), sharding.replicated(run.mesh))
    preemption = PreemptionWatcher(checkpoints.manager, distributed=jax.process_count() > 1)
    clock = Clock(offset=float(meta["elapsed"]) if meta else 0.0)
    train_log = TrainLog(writer, run, clock, history, start, fetch=train_fn.metrics)
    status, step = "finished", start
    log.info("training %s for %d steps from step %d on %d device(s)", run.opts.name, run.num_steps, start,
             jax.device_count())
    leaves = jax.tree.leaves(state)  # the loop holds the state as leaves; `state` is rebuilt where it is read
    del state  # donated by the first step
    try:
        for step in range(start + 1, run.num_steps + 1):
            leaves, metrics = train_fn.step_leaves(leaves, next(batches), seed)
            if step == start + 1:  # compiled by now: the compiler's freed memory goes back to the system
                release_compiler_memory("train step")
            returned = time.perf_counter()  # after that one-off release, which is no step's time
            # The previous log step's metrics are fetched only now, so the host never waits for the step it
            # just dispatched (logging every step would otherwise serialise host and device).
            status = train_log.flush()
            if status != "finished":
                break
            if is_log_step(step, run.step_cfg.log_schedule):
                train_log.pending = (step, metrics, returned)
            due_eval = bool(t.eval_every_steps) and step % t.eval_every_steps == 0 and step < run.num_steps
            due_probe = t.diagnostics and step % t.probe_every_steps == 0
            preempted = preemption.reached(step)
            due_save = checkpoints.manager.should_save(step)
            if not (due_eval or due_probe or preempted or due_save):
                continue
            status = train_log.flush()  # never evaluate or save a state whose loss is not yet checked
            if status != "finished":
                break
            state = train_fn.state(leaves)
            if due_probe:  # before an evaluation's precise statistics replace the running ones
                probe(writer, step, state, programs, inputs, clock)
            if due_eval:
                state, _ = evaluate(writer, step, state, programs, inputs, clock)
                leaves = jax.tree.leaves(state)
            if due_save:
                checkpoints.save(step, state, checkpoint_meta(step, clock))
            if preempted:
                checkpoints.save(step, state, checkpoint_meta(step, clock), force=True)
                checkpoints.wait()
                log.warning("preempted: checkpoint saved at step %d; rerun the same command to resume", step)
                return RunResult("preempted", step, {})
        else:
            status = train_log.flush()
    finally:
        preemption.close()
        batches.close()
    state = train_fn.state(leaves)
    save = None
    if status == "diverged":
        # The loss is checked one step late (TrainLog), so the loop had dispatched one more step: the run's
        # length is the step whose loss was non-finite.
        step = train_log.last_step
        log.error("non-finite loss at step %d (last finite checkpoint kept: %s); the run is marked diverged",
                  step, checkpoints.latest_step())
    else:
        def save(final: Any) -> None:
            checkpoints.save(step, final, checkpoint_meta(step, clock), force=True)
    result = finish(writer, step, state, programs, inputs, clock, history, status, save=save)
    writer.close()
    return RunResult(status, step, result)


# ---------------------------------------------------------------------------------------------- pieces
def compile_ahead(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Compile the distinct programs of the runs about to train, several at once: XLA compiles one program on
    about one core, and a sweep needs one program family per network shape. The runs then find their programs
    ready (Programs.prepare compiles nothing)."""
    firsts: dict[str, Run] = {}
    for config in configs:
        run = prepare_run(config, os.devnull)  # the workdir is only named, never written here
        firsts.setdefault(program_key(run), run)

    def compile_family(run: Run) -> None:
        abstract, shardings = state_layout(run)
        programs_for(run, shardings).prepare(abstract_with_shardings(abstract, shardings),
                                            sharding.global_batch(run.train_stream.batch(0), run.mesh),
                                            next(_eval_batches(run)))

    begin = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(len(firsts), os.cpu_count() or 1))) as pool:
        list(pool.map(compile_family, firsts.values()))
    log.info("compiled %d program families ahead of their runs in %.1f s", len(firsts), time.perf_counter() - begin)


def release_compiler_memory(what: str) -> None:
    """glibc keeps what XLA's compiler freed (850 MiB after IR-v2's train step); give it back (cpu/host_memory.py)."""
    released = host_memory.release_freed_memory()
    if released >= 64 << 20:
        log.info("after the %s: %d MiB of freed host memory returned to the system", what, released >> 20)


class Clock:
    """Training wall time, summed over resumes (metrics' `time` field)."""

    def __init__(self, offset: float):
        self.offset, self.start = offset, time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self.start


def checkpoint_meta(step: int, clock: Clock) -> dict:
    return {"step": step, "elapsed": clock.elapsed(), "next_train_step": step}


class TrainLog:
    """Train metrics waiting to be written: `pending` holds the step, the device metrics of the latest log step,
    as the train step returned them, and the time the step call returned; `fetch` turns the metrics into named
    host values (LeafStep.metrics).

    Throughput is measured between the log steps' return times, not between the writes: a write can come right
    after the previous one (an eval or a save flushes at once), and when steps run inline (cpu/host_memory.py) the
    step had finished long before its deferred write. Dispatched asynchronously, a step returns about when the
    one before it finished (the previous write waited for it), so the intervals are the same steps' times.
    """

    def __init__(self, writer: RunWriter, run: Run, clock: Clock, history: list[dict], start: int, *,
                 fetch: Callable[[Any], Mapping[str, Any]]):
        self.writer, self.run, self.clock, self.history = writer, run, clock, history
        self.fetch = fetch
        self.pending: tuple[int, Any, float] | None = None
        self.last = (start, time.perf_counter())
        self.last_step = start

    def flush(self) -> str:
        """Write the pending metrics; "diverged" / "stopped_dead" when the run must end, else "finished"."""
        if self.pending is None:
            return "finished"
        step, metrics, returned = self.pending
        self.pending = None
        row = log_train(self.writer, step, self.fetch(metrics), self.run, self.clock, self.last, now=returned)
        self.last, self.last_step = (step, returned), step
        self.history.append(row)
        if not row["loss_finite"]:
            return "diverged"
        if dead_for_long(self.history, self.run):
            return "stopped_dead"
        return "finished"


def log_train(writer: RunWriter, step: int, values: Mapping[str, Any], run: Run, clock: Clock,
              last_log: tuple, *, now: float) -> dict:
    """Write one log step's train metrics; images/s over the steps since `last_log` (step, time), ending at `now`."""
    images_per_sec = (step - last_log[0]) * run.config.train.batch_size / max(now - last_log[1], 1e-9)
    row = writer.write(step, "train", values, time=clock.elapsed(), epoch=step / run.steps_per_epoch,
                       images_per_sec=images_per_sec)
    if step <= 3 or step % (run.config.train.log_every_steps * 10) == 0 or step == run.num_steps:
        eta = (run.num_steps - step) * run.config.train.batch_size / max(images_per_sec, 1e-9)
        log.info("step %d/%d  loss %.4f  acc %.3f  lr %.4g  zero %.3f  %.1f img/s  ETA %ds", step, run.num_steps,
                 row["loss"], row["accuracy"], row["lr"], row.get("prepool_zero_frac", math.nan), images_per_sec,
                 int(eta))
    return row


def dead_for_long(history: list[dict], run: Run) -> bool:
    limit = run.config.train.stop_when_dead_windows
    if not limit or "prepool_zero_frac" not in history[-1]:
        return False
    windows = verdicts.dead_windows_at_end([r["prepool_zero_frac"] for r in history],
                                              [r["loss"] for r in history], run.opts.num_classes)
    return windows >= limit


def _eval_batches(run: Run) -> Iterator[dict]:
    stream = create_eval_stream(run.data, global_batch_size=run.eval_batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    for batch in stream:
        yield sharding.global_batch(batch, run.mesh)


class EvalInputs:
    """What evaluation reads besides the eval split, fetched once per run: the probe batch (the first eval batch)
    and the training batches precise BatchNorm recomputes the statistics from (the first
    `train.precise_bn_batches` batches of the run's data order: training images, training augmentation)."""

    def __init__(self, run: Run):
        self.run = run
        self._probe: dict | None = None
        self._statistics: list[dict] | None = None

    def probe_batch(self) -> dict:
        if self._probe is None:
            self._probe = next(_eval_batches(self.run))
        return self._probe

    def statistics_batches(self) -> list[dict]:
        if self._statistics is None:
            self._statistics = [sharding.global_batch(self.run.train_stream.batch(i), self.run.mesh)
                                for i in range(self.run.config.train.precise_bn_batches)]
        return self._statistics


def precise_statistics(params: Any, rest: Any, statistics: Callable, batches: list[dict]) -> tuple[Any, dict]:
    """`rest` with every BatchNorm's statistics replaced by their mean over `batches` (each batch's own mean and
    variance in train mode, the parameters fixed: `statistics` is train_step.batch_norm_statistics, compiled), and
    the loss and top-1 those batches get with their batch statistics (`bn_batch_loss`, `bn_batch_top1`): the
    network's accuracy before any mismatch between running and current statistics."""
    total, sums = None, {}
    for batch in batches:
        stats, batch_sums = statistics(params, rest, batch)
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        for key, value in jax.device_get(batch_sums).items():
            sums[key] = sums.get(key, 0.0) + float(value)
    mean = jax.tree.map(lambda s: s / len(batches), total)
    values = {"bn_batch_loss": sums["loss_sum"] / sums["count"], "bn_batch_top1": sums["top1_sum"] / sums["count"]}
    return nnx.merge_state(rest, mean), values


def evaluate(writer: RunWriter, step: int, state: Any, programs: Programs, inputs: EvalInputs, clock: Clock, *,
             with_ema: bool = True) -> tuple[Any, dict]:
    """Top-1, top-5 and loss over the whole eval split, with the raw parameters and (if kept) their EMA. With
    precise BatchNorm (train.precise_bn_batches > 0) each set of weights is evaluated with statistics recomputed
    for it, and the raw weights' statistics become the state's running statistics (as pycls does): the returned
    state carries them."""
    run = inputs.run
    values: dict[str, float] = {}
    weights = [("", state.params)]
    if with_ema and state.ema_params is not None:
        weights.append(("ema_", state.ema_params))
    for prefix, params in weights:
        rest = state.rest
        if programs.statistics is not None:
            rest, bn_values = precise_statistics(params, state.rest, programs.statistics, inputs.statistics_batches())
            values.update({prefix + k: v for k, v in bn_values.items()})
            if not prefix:
                state = state.replace(rest=rest)
        totals: dict[str, float] = {}
        for batch in _eval_batches(run):
            sums = jax.device_get(programs.evaluate(params, rest, batch))
            for key in ("loss_sum", "top1_sum", "top5_sum", "count"):
                totals[key] = totals.get(key, 0.0) + float(sums[key])
        n = max(totals["count"], 1.0)
        values.update({f"{prefix}loss": totals["loss_sum"] / n, f"{prefix}top1": totals["top1_sum"] / n,
                       f"{prefix}top5": totals["top5_sum"] / n})
        values["num_examples"] = int(totals["count"])
    writer.write(step, "eval", values, time=clock.elapsed(), epoch=step / run.steps_per_epoch)
    log.info("eval at step %d: %s", step, json.dumps({k: round(v, 4) for k, v in values.items()}))
    release_compiler_memory("eval step")
    return state, values


def probe(writer: RunWriter, step: int, state: Any, programs: Programs, inputs: EvalInputs, clock: Clock) -> None:
    """The diagnostics in eval mode (the running statistics) on a fixed held-out batch (the first eval batch)."""
    run = inputs.run
    sums = jax.device_get(programs.evaluate(state.params, state.rest, inputs.probe_batch()))
    n = max(float(sums["count"]), 1.0)
    values = {"loss": float(sums["loss_sum"]) / n, "top1": float(sums["top1_sum"]) / n, **sums["probe"]}
    writer.write(step, "probe", values, time=clock.elapsed(), epoch=step / run.steps_per_epoch)


def finish(writer: RunWriter, step: int, state: Any, programs: Programs, inputs: EvalInputs, clock: Clock,
           history: list[dict], status: str, save: Callable[[Any], Any] | None = None) -> dict:
    """Final evaluation, the final checkpoint (`save`, with the evaluated statistics), the verdict and
    result.json (whose presence marks the run finished)."""
    run = inputs.run
    eval_values: dict[str, Any] = {}
    if status != "diverged":
        state, eval_values = evaluate(writer, step, state, programs, inputs, clock)
    if save is not None:
        save(state)
    train = [r for r in history if "prepool_zero_frac" in r]
    verdict = verdicts.judge([r["step"] for r in train], [r["prepool_zero_frac"] for r in train],
                             [r["loss"] for r in train], run.opts.num_classes)
    verdict = verdicts.with_evaluation(verdict, eval_values.get("top1"), eval_values.get("num_examples", 0),
                                       run.opts.num_classes)
    writer.write_json("verdict.json", verdict.to_json())
    last = history[-1] if history else {}
    result = {
        "run_id": run_record(run)["run_id"], "status": status, "steps": step, "wall_time_s": clock.elapsed(),
        "final_train_loss": last.get("loss"), "final_train_accuracy": last.get("accuracy"),
        "eval_loss": eval_values.get("loss"), "eval_top1": eval_values.get("top1"),
        "eval_top5": eval_values.get("top5"), "ema_eval_top1": eval_values.get("ema_top1"),
        "ema_eval_top5": eval_values.get("ema_top5"), "bn_batch_top1": eval_values.get("bn_batch_top1"),
        "verdict": verdict.verdict, "t_death": verdict.t_death,
    }
    writer.write_json("result.json", result)
    hparams.write_run_summary(writer, run.workdir, step)  # TensorBoard's HParams tab: reads the files just written
    log.info("run finished (%s): %s", status, json.dumps(result))
    return result


# ---------------------------------------------------------------------------------------------- housekeeping
def run_record(run: Run) -> dict:
    """config.json: the resolved config plus the derived facts analysis reads (docs/run_folder.md)."""
    record = config_record(run.config, run_id=os.path.basename(run.workdir.rstrip("/")),
                           num_classes=run.opts.num_classes)
    return {**record, "derived": run.derived}


def check_stored_config(run: Run) -> None:
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


class workdir_lock:
    """An exclusive lock on the workdir: a second job on the same workdir stops before writing anything."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.workdir = workdir

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(f"workdir {self.workdir} is in use by another running job (lock {self.path}); "
                              "wait for it or use another --workdir") from None
        return self

    def __exit__(self, *exc) -> None:
        if jax.process_index() == 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)


def log_parameter_overview(state: Any) -> None:
    if jax.process_index() != 0:
        return
    from clu import parameter_overview
    from flax import nnx

    log.info("parameters:\n%s", parameter_overview.get_parameter_overview(nnx.to_pure_dict(state.params),
                                                                          include_stats=False))


class device_prefetch:
    """Host batches -> global device arrays, `size` steps ahead, on a background thread."""

    def __init__(self, host_batches: Iterator[dict], mesh: Any, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._peeked: dict | None = None
        self._thread = threading.Thread(target=self._fill, args=(host_batches, mesh), daemon=True)
        self._thread.start()

    def _fill(self, host_batches: Iterator[dict], mesh: Any) -> None:
        try:
            for batch in host_batches:
                if self._stop.is_set():
                    return
                self._queue.put(sharding.global_batch(batch, mesh))
        except Exception as e:  # surfaced in the training thread, not lost in this one
            self._queue.put(e)

    def __next__(self) -> dict:
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def peek(self) -> dict:
        """The next batch, which `__next__` then returns again."""
        if self._peeked is None:
            self._peeked = next(self)
        return self._peeked

    def close(self) -> None:
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()


def evaluate_only(run: Run) -> RunResult:
    """`eval_only`: this workdir's checkpoint, else `init_from`, evaluated once with `data.eval_crops`."""
    checkpoints = RunCheckpoints(os.path.join(run.workdir, "checkpoints"), every_steps=10**9, keep=1)
    if checkpoints.latest_step() is None and not run.config.init_from:
        checkpoints.close()
        raise ConfigError(f"eval_only=True needs a checkpoint in {run.workdir} or init_from=<run or exported model>")
    _, shardings = state_layout(run)
    programs = programs_for(run, shardings)
    state, shardings, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    writer = RunWriter(run.workdir, resume_step=10**12)
    step = int(jax.device_get(state.step))
    _, values = evaluate(writer, step, state, programs, EvalInputs(run), Clock(0.0), with_ema=False)
    result = {"run_id": run_record(run)["run_id"], "status": "evaluated", "steps": step,
              "eval_crops": run.data.eval_crops, "init_from": run.config.init_from,
              "eval_loss": values["loss"], "eval_top1": values["top1"], "eval_top5": values["top5"],
              "num_examples": values["num_examples"]}
    writer.write_json("eval_result.json", result)
    writer.close()
    print(json.dumps(result))
    return RunResult("evaluated", step, result)


def compile_only(run: Run) -> RunResult:
    """Compile the train step against abstract inputs and report compile time and memory, then stop."""
    abstract, shardings = state_layout(run)
    train_fn, _ = compile_steps(run, shardings)
    s = run.data.image_size
    pixels = np.float32 if run.data.color_distort else np.uint8  # as the pipeline delivers them
    batch = {"image": jax.ShapeDtypeStruct((run.config.train.batch_size, s, s, 3), pixels),
             "label": jax.ShapeDtypeStruct((run.config.train.batch_size,), np.int32)}
    begin = time.perf_counter()
    compiled = train_fn.lower(abstract_with_shardings(abstract, shardings), batch).compile()
    seconds = time.perf_counter() - begin
    memory = compiled.memory_analysis()
    report = {"compile_seconds": seconds}
    for key in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "generated_code_size_in_bytes"):
        if memory is not None and hasattr(memory, key):
            report[key] = int(getattr(memory, key))
    log.info("compile only: %s", json.dumps(report))
    print(json.dumps(report))
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(run.workdir, "compile_report.json"), report)
    return RunResult("compiled", 0, report)
