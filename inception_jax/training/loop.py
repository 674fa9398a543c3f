"""`train_and_evaluate(config, workdir)`: the training loop. It reads like a table of contents; each concern
lives in its own module (prepared_run, state, train_step, evaluation, checkpointing, metrics, run_folder,
prefetch, input_pipeline); the modes that do not train (compile only, evaluate only) are in modes.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from inception_jax.cpu import runtime
from inception_jax.training import sharding, verdicts
from inception_jax.training.checkpointing import PreemptionWatcher, RunCheckpoints
from inception_jax.training.clock import Clock
from inception_jax.training.evaluation import EvalInputs, evaluate, probe
from inception_jax.training.metrics import RunWriter
from inception_jax.training.modes import RunResult, compile_only, evaluate_only
from inception_jax.training.prefetch import DevicePrefetch
from inception_jax.training.prepared_run import PreparedRun, prepare_run
from inception_jax.training.programs import Programs, programs_for, release_compiler_memory
from inception_jax.training.run_folder import WorkdirLock, check_stored_config, run_record
from inception_jax.training.state import log_parameter_overview, restore_or_init, state_layout
from inception_jax.training.train_step import is_log_step

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> RunResult:
    run = prepare_run(config, workdir)  # every config check, before anything compiles or is written
    runtime.check_cpu_threads(config)
    with WorkdirLock(run.workdir):
        check_stored_config(run)  # under the lock: the folder is this config's run at the moment it resumes
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


def _train(run: PreparedRun, checkpoints: RunCheckpoints) -> RunResult:
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
    batches = DevicePrefetch(run.train_stream.iterator(start), run.mesh)
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
    return RunResult(status, step, result, resumed_time_s=clock.offset)


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

    def __init__(self, writer: RunWriter, run: PreparedRun, clock: Clock, history: list[dict], start: int, *,
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


def log_train(writer: RunWriter, step: int, values: Mapping[str, Any], run: PreparedRun, clock: Clock,
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


def dead_for_long(history: list[dict], run: PreparedRun) -> bool:
    limit = run.config.train.stop_when_dead_windows
    if not limit or "prepool_zero_frac" not in history[-1]:
        return False
    windows = verdicts.dead_windows_at_end([r["prepool_zero_frac"] for r in history],
                                              [r["loss"] for r in history], run.opts.num_classes)
    return windows >= limit


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
    log.info("run finished (%s): %s", status, json.dumps(result))
    return result
