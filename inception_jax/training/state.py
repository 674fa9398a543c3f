"""The train state of a run: its layout (abstract state and shardings), a fresh one (initialised, with the
run's block values, warm-started from `init_from`), or this workdir's checkpoint restored; and its parameter
overview in the log.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax.training import sharding
from inception_jax.training.checkpointing import RunCheckpoints, abstract_with_shardings
from inception_jax.training.prepared_run import PreparedRun
from inception_jax.training.programs import programs_for
from inception_jax.training.train_step import TrainState
from inception_jax.training.warm_start import apply_init_from

log = logging.getLogger(__name__)


def state_layout(run: PreparedRun) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings), the EMA included when the run keeps one."""
    facts = run.model_facts
    opt_state = jax.eval_shape(run.step_cfg.tx.init, facts.abstract_params)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=facts.abstract_params,
                          rest=facts.abstract_rest, opt_state=opt_state,
                          ema_params=facts.abstract_params if run.step_cfg.ema_decay else None)
    return abstract, sharding.state_shardings(run.mesh, abstract, run.config.mesh.fsdp_min_size)


def fresh_state(run: PreparedRun, shardings: TrainState) -> TrainState:
    """A new state created already sharded (big_vision style: the full state never sits on one device).

    The initialisation is the compiled one of the run's programs (programs.py), shared by every variant of the
    network's shape: the run's shortcut gains and scales are its arguments, so the blocks start with them."""
    init = programs_for(run, shardings).init
    state = init(np.int32(run.config.seed), run.opts)
    if run.config.init_from:

        state = apply_init_from(state, shardings, run.opts, run.config.init_from, use_ema=run.config.init_from_ema)
        opt_state = jax.jit(run.step_cfg.tx.init, out_shardings=shardings.opt_state)(state.params)
        state = state.replace(opt_state=opt_state)
    if run.step_cfg.ema_decay:
        # A real copy: aliased buffers in a donated state crash multi-device runs (docs/libraries.md T2).
        state = state.replace(ema_params=jax.tree.map(jnp.copy, state.params))
    return state


def restore_or_init(run: PreparedRun, checkpoints: RunCheckpoints) -> tuple[TrainState, TrainState, dict | None]:
    """(state, shardings, checkpoint meta or None). This workdir's checkpoint wins over init_from."""
    abstract, shardings = state_layout(run)
    if not (checkpoints.read_only or run.config.eval_only):
        checkpoints.check_free_space(abstract)
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore(abstract_with_shardings(abstract, shardings))
        log.info("resumed from %s at step %d", checkpoints.directory, int(meta["step"]))
        return state, shardings, meta
    return fresh_state(run, shardings), shardings, None


_TABLES_LOGGED: set[str] = set()  # a sweep's rows share a few networks: each table once per process


def log_parameter_overview(state: Any) -> None:
    if jax.process_index() != 0:
        return
    from clu import parameter_overview

    table = parameter_overview.get_parameter_overview(nnx.to_pure_dict(state.params), include_stats=False)
    total = table.rstrip().rsplit("\n", 1)[-1]  # "Total: 173,068 -- 692,272 bytes"
    if table in _TABLES_LOGGED:
        log.info("parameters: %s (the table logged for an earlier run of this process)", total)
        return
    _TABLES_LOGGED.add(table)
    log.info("parameters:\n%s", table)
