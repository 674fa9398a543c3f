"""The optimizer of docs/architecture.md §6: TF1-style RMSProp, the staircase learning-rate decay, global-norm
clipping, weight decay on kernels, and the parameter EMA used for evaluation. SGD-momentum and AdamW are the
ablation alternatives. Pure functions of the config; no state lives here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(train_cfg: Any, *, steps_per_epoch: int, num_steps: int) -> optax.Schedule:
    """`staircase`: lr * rate ** floor(epoch / decay_epochs) (the paper: 0.045, 0.94 every two epochs);
    `cosine`: cosine decay to 0 over the run; `constant`. An optional linear warm-up from 0 precedes each."""
    lr, warmup = float(train_cfg.learning_rate), int(train_cfg.warmup_steps)
    if train_cfg.lr_schedule == "staircase":
        main = optax.exponential_decay(lr, transition_steps=max(1, round(train_cfg.lr_decay_epochs * steps_per_epoch)),
                                       decay_rate=train_cfg.lr_decay_rate, staircase=True)
    elif train_cfg.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps=max(1, num_steps - warmup))
    else:
        main = optax.constant_schedule(lr)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], boundaries=[warmup])


def kernel_mask(params: Any) -> Any:
    """True for conv / dense kernels (the only decayed weights, §1.8), False for BN, biases and scales."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _last_key(path) == "kernel", params)


def _last_key(path: tuple) -> str:
    for entry in reversed(path):
        name = getattr(entry, "key", getattr(entry, "name", None))
        if name is not None and name != "value":
            return str(name)
    return ""


def make_optimizer(train_cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Weight decay (as the gradient of L2 in the loss, as slim), then clipping of the global norm, then the
    optimizer proper. RMSProp follows TF1 RMSPropOptimizer: accumulator initialised to 1, epsilon inside the
    square root, the learning rate applied before momentum."""
    if train_cfg.optimizer == "rmsprop":
        core = optax.rmsprop(schedule, decay=train_cfg.rmsprop_decay, eps=train_cfg.rmsprop_eps, initial_scale=1.0,
                             eps_in_sqrt=True, momentum=train_cfg.rmsprop_momentum or None)
    elif train_cfg.optimizer == "sgd":
        core = optax.sgd(schedule, momentum=train_cfg.momentum or None)
    else:
        # AdamW decays weights itself (decoupled), so the L2 term below is skipped for it.
        core = optax.adamw(schedule, b1=train_cfg.adamw_b1, b2=train_cfg.adamw_b2, eps=train_cfg.adamw_eps,
                           weight_decay=train_cfg.weight_decay, mask=kernel_mask)
    parts = []
    if train_cfg.weight_decay and train_cfg.optimizer != "adamw":
        parts.append(optax.add_decayed_weights(train_cfg.weight_decay, mask=kernel_mask))
    if train_cfg.grad_clip_norm:
        parts.append(clip_by_global_norm(train_cfg.grad_clip_norm))
    return optax.chain(*parts, core)


# Leaves of up to this many elements are concatenated before a global norm sums their squares (global_norm).
PACKED_NORM_MAX_SIZE = 1 << 16


def global_norm(tree: Any) -> jax.Array:
    """sqrt(sum of the squares of every element of every leaf), in float32.

    optax.tree.norm reduces each leaf on its own, and XLA:CPU runs each reduction as its own op, at a fixed cost
    whatever its size: the main job's network has 237 leaves and only 0.22M parameters, so its three logged norms
    were ~700 ops of a ~2,300-op step (docs/performance.md §3.10). Here the leaves of up to PACKED_NORM_MAX_SIZE
    elements are concatenated and reduced once; larger ones (where a copy would cost more than the op) are reduced
    on their own.
    """
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    small = [x.ravel() for x in leaves if x.size <= PACKED_NORM_MAX_SIZE]
    squares = [jnp.sum(jnp.square(x)) for x in leaves if x.size > PACKED_NORM_MAX_SIZE]
    if small:
        squares.append(jnp.sum(jnp.square(jnp.concatenate(small))))
    return jnp.sqrt(sum(squares)) if squares else jnp.zeros((), jnp.float32)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm (same formula, same empty state) with the norm of `global_norm`: each update
    becomes update / norm * max_norm when the norm of all of them reaches max_norm."""

    def update(updates, state, params=None):
        del params
        norm = global_norm(updates)
        keep = norm < max_norm
        return jax.tree.map(lambda u: jax.lax.select(keep, u, (u / norm.astype(u.dtype)) * max_norm), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """TF ExponentialMovingAverage with num_updates: min(decay, (1 + n) / (10 + n)), so short runs' EMA is not
    stuck at its initial value."""
    n = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def update_ema(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
    d = ema_decay_at(step, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
