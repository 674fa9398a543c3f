"""The modes that do not train: `compile_only` (compile the train step, report time and memory) and `eval_only`
(evaluate a checkpoint once); and RunResult, what every mode and the training loop return.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np

from inception_jax.training.checkpointing import RunCheckpoints, abstract_with_shardings
from inception_jax.training.clock import Clock
from inception_jax.training.evaluation import EvalInputs, evaluate
from inception_jax.training.metrics import RunWriter, write_json_atomic
from inception_jax.training.prepared_run import PreparedRun
from inception_jax.training.programs import compile_steps, programs_for
from inception_jax.training.run_folder import run_record
from inception_jax.training.state import restore_or_init, state_layout
from inception_jax.validation import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    status: str  # "finished" | "preempted" | "diverged" | "stopped_dead" | "compiled"
    steps: int
    result: dict
    # Training seconds of the earlier commands a resumed run continues (its checkpoint's clock), included in
    # result["wall_time_s"]: that less this is this command's training.
    resumed_time_s: float = 0.0


def evaluate_only(run: PreparedRun) -> RunResult:
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


def compile_only(run: PreparedRun) -> RunResult:
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
