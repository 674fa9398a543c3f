"""The train state and the two compiled functions of a run: the train step and the evaluation step.

Both are pure functions over an `nnx.split` model (Flax NNX's functional API) so `jax.jit` can shard them.
Every random draw of step s comes from `fold_in(seed key, s)`, so a resumed run draws the same numbers. The seed is
an argument, not a constant of the program, so runs that differ only in their seed share one compilation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from inception_jax.data.preprocessing import UINT8_TO_MODEL_RANGE
from inception_jax.models.ops import STOCK, Backend
from inception_jax.training.diagnostics import activation_stats
from inception_jax.training.optim import global_norm, update_ema


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # trainable: nnx.Param (kernels, biases, BN beta/gamma, learnable residual scales)
    rest: nnx.State  # not trained: BatchNorm statistics, constant residual scales
    opt_state: Any
    ema_params: nnx.State | None  # parameter EMA used for evaluation (None when train.ema_decay == 0)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static facts the compiled steps close over (hashable pieces only: no arrays)."""

    graphdef: Any
    tx: optax.GradientTransformation
    schedule: Any
    num_classes: int
    label_smoothing: float
    aux_loss_weight: float
    ema_decay: float
    diagnostics: bool
    learnable_scales: bool
    # (log_dense_steps, log_every_steps, num_steps): the steps whose metrics the loop fetches. The three global
    # norms (a full read of gradients, updates and parameters, docs/performance.md §3.10) are computed on those
    # steps only. The default logs every step.
    log_schedule: tuple[int, int, int] = (0, 1, 0)
    # How the models' replaceable operations are computed (models/ops.py): stock JAX, or a platform backend's
    # forms (inception_jax/cpu: cpu.backend.backend_for picks them for CPU programs). Every program of the run is
    # traced with them.
    kernels: Backend = STOCK
    # The network with BatchNorm momentum 0 and no dropout, whose train-mode forward leaves each BatchNorm's
    # statistics of one batch in its running statistics (batch_norm_statistics); None when unused.
    statistics_graphdef: Any = None


def is_log_step(step: Any, log_schedule: tuple[int, int, int]) -> Any:
    """Whether step `step` (1-based) logs: each of the first `dense` steps, every `every`-th, and the last. Works
    on Python ints (the loop) and traced step counters (the step)."""
    dense, every, last = log_schedule
    return (step <= dense) | (step % every == 0) | (step == last)


def split_model(model: nnx.Module) -> tuple[Any, nnx.State, nnx.State]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def model_input(images: jax.Array) -> jax.Array:
    """Pipeline images -> the model's [-1, 1]: uint8 pixels through the host's own table (bit-identical to
    `preprocessing.to_model_range`), float images (colour distortion, predict) as they are."""
    if images.dtype != jnp.uint8:
        return images
    return jnp.asarray(UINT8_TO_MODEL_RANGE)[images]


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) if smoothing else \
        jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], seed: jax.Array, cfg: StepConfig
               ) -> tuple[TrainState, dict]:
    """One optimizer step; returns the new state and this step's metrics (device arrays, fetched only on log
    steps, so non-log steps never wait for the host)."""
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
        model = nnx.merge(cfg.graphdef, params, state.rest, copy=True)
        out = model.forward(model_input(batch["image"]), train=True, dropout_key=dropout_key,
                            diagnostics=cfg.diagnostics)
        loss = jnp.mean(cross_entropy(out.logits, batch["label"], cfg.num_classes, cfg.label_smoothing))
        total = loss
        if out.aux_logits is not None:
            aux = cross_entropy(out.aux_logits, batch["label"], cfg.num_classes, cfg.label_smoothing)
            total = total + cfg.aux_loss_weight * jnp.mean(aux)
        return total, (loss, out, split_model(model)[2])

    with cfg.kernels.tracing():  # read while the forward and backward are traced
        (_, (loss, out, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    ema = update_ema(state.ema_params, params, state.step, cfg.ema_decay) if state.ema_params is not None else None
    metrics = {
        "loss": loss,
        "loss_finite": jnp.isfinite(loss).astype(jnp.float32),
        "accuracy": jnp.mean((jnp.argmax(out.logits, -1) == batch["label"]).astype(jnp.float32)),
        "lr": jnp.asarray(cfg.schedule(state.step), jnp.float32),
        **jax.lax.cond(is_log_step(step, cfg.log_schedule), global_norms, _skipped_norms, grads, updates, params),
    }
    if cfg.diagnostics:
        metrics.update(_diagnostics(out, cfg))
    return TrainState(step=step, params=params, rest=rest, opt_state=opt_state, ema_params=ema), metrics


def global_norms(grads: Any, updates: Any, params: Any) -> dict[str, jax.Array]:
    return {"grad_norm": global_norm(grads), "update_norm": global_norm(updates), "param_norm": global_norm(params)}


def _skipped_norms(grads: Any, updates: Any, params: Any) -> dict[str, jax.Array]:
    """A step that does not log: its metrics are never fetched, so the norms are not computed (NaN if read)."""
    return {key: jnp.full((), jnp.nan, jnp.float32) for key in ("grad_norm", "update_norm", "param_norm")}


@dataclasses.dataclass(frozen=True)
class MetricsLayout:
    """Where each metric sits in the packed vector: the dict's tree structure and each leaf's shape."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]


def pack_metrics(metrics: dict) -> tuple[jax.Array, MetricsLayout]:
    """A step's metrics as one float32 vector, so the host fetches them in one transfer, not one per metric
    (~60 with the diagnostics), which costs host time on the cores the next step runs on
    (docs/performance.md §3.10)."""
    leaves, treedef = jax.tree.flatten(metrics)
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"metric of dtype {leaf.dtype} cannot be packed into float32 without loss; "
                            "log it as a float")
    packed = jnp.concatenate([jnp.ravel(leaf).astype(jnp.float32) for leaf in leaves])
    return packed, MetricsLayout(treedef, tuple(tuple(leaf.shape) for leaf in leaves))


def unpack_metrics(packed: np.ndarray, layout: MetricsLayout) -> dict[str, np.ndarray]:
    """The host side of pack_metrics: numpy float32 values under the step's metric names."""
    sizes = [math.prod(shape) for shape in layout.shapes]
    if packed.shape != (sum(sizes),):
        raise ValueError(f"packed metrics of shape {packed.shape} do not match the layout ({sum(sizes)} values)")
    parts = np.split(np.asarray(packed), np.cumsum(sizes)[:-1])
    return jax.tree.unflatten(layout.treedef, [p.reshape(shape) for p, shape in zip(parts, layout.shapes)])


class LeafStep:
    """A jitted train step that takes and returns the state as its list of leaves, and its metrics packed.

    A TrainState holds about 240 nnx Variables, and jit flattens and rebuilds them in Python on every call, a
    sizeable share of a CPU-ablation step's time on the cores the step runs on (docs/performance.md §3.10). The loop
    keeps the leaves (a list, flattened in C++) and rebuilds the state only to evaluate or save. The metrics come
    back as one vector (pack_metrics); `metrics(packed)` fetches and names them. Calling it with a TrainState
    works too, at the old cost, and returns the metrics fetched (tests, benchmarks).
    """

    def __init__(self, cfg: StepConfig, state_shardings: Any, batch_sharding: Any, replicated: Any,
                 compiler_options: dict[str, Any] | None = None):
        self.treedef = jax.tree.structure(state_shardings)
        self.compiler_options = compiler_options
        self.metrics_layout: MetricsLayout | None = None
        treedef = self.treedef
        leaf_shardings = jax.tree.leaves(state_shardings)

        def step_leaves(leaves, batch, seed):
            state, metrics = train_step(jax.tree.unflatten(treedef, leaves), batch, seed, cfg)
            packed, layout = pack_metrics(metrics)
            # Recorded while tracing, which jit does in every process before its first call (a persistent
            # compilation cache skips XLA's compile, not the trace): the layout is known before a metric is read.
            self.metrics_layout = layout
            return jax.tree.leaves(state), packed

        self.step_leaves = jax.jit(step_leaves, in_shardings=(leaf_shardings, batch_sharding, replicated),
                                   out_shardings=(leaf_shardings, replicated), donate_argnums=0,
                                   compiler_options=compiler_options)

    def __call__(self, state: TrainState, batch: dict, seed: int) -> tuple[TrainState, dict]:
        leaves, packed = self.step_leaves(jax.tree.leaves(state), batch, np.int32(seed))
        return self.state(leaves), self.metrics(packed)

    def metrics(self, packed: jax.Array) -> dict[str, np.ndarray]:
        """Fetch a step's packed metrics (blocks until that step is done) and name them."""
        if self.metrics_layout is None:
            raise RuntimeError("the train step has not been traced yet: call or lower it first")
        return unpack_metrics(np.asarray(jax.device_get(packed)), self.metrics_layout)

    def state(self, leaves: list) -> TrainState:
        return jax.tree.unflatten(self.treedef, leaves)

    def lower(self, state: Any, batch: Any):
        return self.step_leaves.lower(jax.tree.leaves(state), batch, jax.ShapeDtypeStruct((), np.int32))

    def compile(self, state: Any, batch: Any) -> None:
        """Compile now, for these shapes (`state` and `batch` may be abstract), and run that executable from here
        on: the caller decides when compiling happens (before a run's clock starts), not the first step."""
        self.step_leaves = self.lower(state, batch).compile()

    def _cache_size(self) -> int:
        return self.step_leaves._cache_size()


def _diagnostics(out, cfg: StepConfig) -> dict[str, jax.Array]:
    stats = activation_stats(out)
    if not cfg.learnable_scales:
        stats = {k: v for k, v in stats.items() if not k.startswith("residual_scale/")}
    return stats


def batch_norm_statistics(params: nnx.State, rest: nnx.State, batch: dict[str, jax.Array], cfg: StepConfig
                          ) -> tuple[nnx.State, dict[str, jax.Array]]:
    """One batch's contribution to precise BatchNorm statistics (pycls, detectron2): every BatchNorm's mean and
    variance of this batch in train mode, the parameters unchanged, as a state of BatchStat variables; and the loss
    and top-1 sums the batch gets normalised by those batch statistics. The caller averages the statistics over a
    few training batches (train.precise_bn_batches) and evaluates with them: running averages taken while the
    weights moved lag behind them, so eval-mode accuracy can sit at chance while the network has learned."""
    model = nnx.merge(cfg.statistics_graphdef, params, rest, copy=True)
    with cfg.kernels.tracing():
        out = model.forward(model_input(batch["image"]), train=True)
    labels = batch["label"]
    sums = {
        "loss_sum": jnp.sum(cross_entropy(out.logits, labels, cfg.num_classes, 0.0)),
        "top1_sum": jnp.sum((jnp.argmax(out.logits, -1) == labels).astype(jnp.float32)),
        "count": jnp.asarray(labels.shape[0], jnp.float32),
    }
    return nnx.state(model, nnx.BatchStat), sums


def eval_step(params: nnx.State, rest: nnx.State, batch: dict[str, jax.Array], cfg: StepConfig) -> dict:
    """Sums over the real (mask True) examples of a batch: loss, top-1, top-5 and the count. With several crops
    per image (batch["image"]: B x crops x H x W x 3) the softmax is averaged over the crops (docs/architecture.md
    §6.4). Also returns the eval-mode diagnostics of the batch, which the run logs as its fixed probe."""
    images = model_input(batch["image"])
    b, n = images.shape[:2]
    model = nnx.merge(cfg.graphdef, params, rest, copy=True)
    with cfg.kernels.tracing():
        out = model.forward(images.reshape((b * n, *images.shape[2:])), diagnostics=cfg.diagnostics)
    probs = jnp.mean(jax.nn.softmax(out.logits).reshape(b, n, -1), axis=1)
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    label_prob = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    top5 = jax.lax.top_k(probs, min(5, probs.shape[-1]))[1]
    sums = {
        "loss_sum": jnp.sum(-jnp.log(jnp.maximum(label_prob, 1e-30)) * mask),
        "top1_sum": jnp.sum((jnp.argmax(probs, -1) == labels) * mask),
        "top5_sum": jnp.sum(jnp.any(top5 == labels[:, None], axis=1) * mask),
        "count": jnp.sum(mask),
    }
    if cfg.diagnostics:
        sums["probe"] = _diagnostics(out, cfg)
    return sums
