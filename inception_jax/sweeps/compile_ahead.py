"""compile_ahead: a sweep compiles the distinct programs of the runs about to train, several at once, before
the first of them starts. A sweep whose rows train side by side calls it in each lane, for one program family
before the lane's first row of it; the lanes share the families through the persistent compilation cache
(sweeps/lanes.py; the call: lane_worker.py)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Sequence

import ml_collections

from inception_jax.training import sharding
from inception_jax.training.checkpointing import abstract_with_shardings
from inception_jax.training.evaluation import eval_batches
from inception_jax.training.prepared_run import PreparedRun, prepare_run
from inception_jax.training.programs import program_key, programs_for
from inception_jax.training.state import state_layout

log = logging.getLogger(__name__)


def compile_ahead(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Compile the distinct programs of the runs about to train, several at once: XLA compiles one program on
    about one core, and a sweep needs one program family per network shape. The runs then find their programs
    ready (Programs.prepare compiles nothing)."""
    firsts: dict[str, PreparedRun] = {}
    for config in configs:
        run = prepare_run(config, os.devnull)  # the workdir is only named, never written here
        firsts.setdefault(program_key(run), run)

    def compile_family(run: PreparedRun) -> None:
        abstract, shardings = state_layout(run)
        programs_for(run, shardings).prepare(abstract_with_shardings(abstract, shardings),
                                            sharding.global_batch(run.train_stream.batch(0), run.mesh),
                                            next(eval_batches(run)))

    begin = time.perf_counter()
    workers = max(1, min(len(firsts), len(os.sched_getaffinity(0))))  # a pinned process: its own cores
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(compile_family, firsts.values()))
    log.info("compiled %d program families ahead of their runs in %.1f s", len(firsts), time.perf_counter() - begin)
