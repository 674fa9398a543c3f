"""Evaluation: the eval split's top-1, top-5 and loss (with the raw parameters and their EMA), precise BatchNorm
statistics recomputed before it, and the probe (the diagnostics on one held-out batch). Never trains.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.data.input_pipeline import create_eval_stream
from inception_jax.training import sharding
from inception_jax.training.clock import Clock
from inception_jax.training.metrics import RunWriter
from inception_jax.training.prepared_run import PreparedRun
from inception_jax.training.programs import Programs, release_compiler_memory

log = logging.getLogger(__name__)


def eval_batches(run: PreparedRun) -> Iterator[dict]:
    stream = create_eval_stream(run.data, global_batch_size=run.eval_batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    for batch in stream:
        yield sharding.global_batch(batch, run.mesh)


class EvalInputs:
    """What evaluation reads besides the eval split, fetched once per run: the probe batch (the first eval batch)
    and the training batches precise BatchNorm recomputes the statistics from (the first
    `train.precise_bn_batches` batches of the run's data order: training images, training augmentation)."""

    def __init__(self, run: PreparedRun):
        self.run = run
        self._probe: dict | None = None
        self._statistics: list[dict] | None = None

    def probe_batch(self) -> dict:
        if self._probe is None:
            self._probe = next(eval_batches(self.run))
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
        for batch in eval_batches(run):
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
