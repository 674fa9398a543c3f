"""BatchNorm with an explicit normalization group.

Every BatchNorm of the spec sits in a CBR unit, followed by a ReLU; in training the two are one replaceable op,
`batch_norm_relu` (ops.py), whose backward a backend may write by hand (inception_jax/cpu/batchnorm.py). The
forward's pieces below are shared with such a backward, so outputs and batch statistics are the same bits either
way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.models.ops import replaceable


def grouped(x: jax.Array, groups: int) -> jax.Array:
    """x (N, H, W, C) viewed as (groups, N // groups, H, W, C)."""
    return x.reshape((groups, x.shape[0] // groups, *x.shape[1:]))


def batch_moments(xg: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-group float32 (mean, var, raw var) of a grouped x, shaped (groups, 1, 1, 1, C).

    One pass (E[x^2] - E[x]^2, as flax's use_fast_variance); `var` is clipped at 0 against rounding and `raw`
    is kept so a hand-written backward knows where the clip was active (no gradient flows through it there).
    """
    xf = xg.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
    raw = jnp.mean(jnp.square(xf), axis=(1, 2, 3), keepdims=True) - jnp.square(mean)
    return mean, jnp.maximum(raw, 0.0), raw


def affine(mean, var, scale, bias, epsilon):
    """(rstd, inv, shift) in float32 such that normalize-then-affine is x * inv + shift."""
    rstd = jax.lax.rsqrt(var + epsilon)
    inv = rstd if scale is None else rstd * scale.astype(jnp.float32)
    return rstd, inv, bias.astype(jnp.float32) - mean * inv


def pre_activation(xg, inv, shift):
    """The normalized x in x's dtype: one multiply-add per element."""
    return xg * inv.astype(xg.dtype) + shift.astype(xg.dtype)


def batch_norm(x: jax.Array, scale: jax.Array | None, bias: jax.Array, groups: int, epsilon: float):
    """(batchnorm(x), mean, var) with batch statistics over each of `groups` consecutive example groups; mean and
    var are (groups, 1, 1, 1, C) float32 (for the running statistics)."""
    xg = grouped(x, groups)
    mean, var, _ = batch_moments(xg)
    _, inv, shift = affine(mean, var, scale, bias, epsilon)
    return pre_activation(xg, inv, shift).reshape(x.shape), mean, var


@replaceable
def batch_norm_relu(x: jax.Array, scale: jax.Array | None, bias: jax.Array, groups: int, epsilon: float):
    """(relu(batchnorm(x)), mean, var): `batch_norm`, then the ReLU of the CBR unit. CPU twin: cpu/batchnorm.py
    `batch_norm_relu`; they agree: tests/test_batchnorm.py::test_forward_and_gradients_equal_the_textbook_formulas
    and ::test_fused_training_path_is_bit_identical_to_batchnorm_then_relu."""
    y, mean, var = batch_norm(x, scale, bias, groups, epsilon)
    return jax.nn.relu(y), mean, var


class BatchNorm(nnx.Module):
    """BatchNorm over N, H, W with TF/Flax momentum semantics (`ra <- m * ra + (1 - m) * batch_stat`).

    `group_size` makes the normalization group explicit: None normalizes over the whole batch the step sees
    (under `jax.jit` on a mesh that is the *global* batch: sync-BN), an integer g normalizes each consecutive
    group of g examples on its own ("ghost" BN, as each replica did in the paper's asynchronous training).
    Running statistics are the mean of the groups' statistics. Statistics are always float32.
    `relu=True` applies the ReLU that follows every BatchNorm of the spec.
    """

    def __init__(self, num_features: int, *, momentum: float, epsilon: float, use_scale: bool,
                 group_size: int | None, param_dtype, dtype):
        self.momentum = momentum
        self.epsilon = epsilon
        self.group_size = group_size
        self.dtype = dtype
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype)) if use_scale else None
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))

    def _groups(self, n: int) -> int:
        g = n if self.group_size is None else self.group_size
        if n % g:
            raise ValueError(f"bn_group_size={g} does not divide the batch of {n} examples this BatchNorm sees; "
                             "use a group size that divides the per-step batch, or None for the whole batch")
        return n // g

    def _update_running(self, mean: jax.Array, var: jax.Array) -> None:
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * jnp.mean(mean, axis=(0, 1, 2, 3)))
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * jnp.mean(var, axis=(0, 1, 2, 3)))

    def __call__(self, x: jax.Array, *, train: bool, relu: bool = False) -> jax.Array:
        x = x.astype(self.dtype)  # the compute dtype (the conv before it already computes in it: then a no-op)
        scale = None if self.scale is None else self.scale[...]
        if train:
            normalize = batch_norm_relu if relu else batch_norm
            y, mean, var = normalize(x, scale, self.bias[...], self._groups(x.shape[0]), self.epsilon)
            self._update_running(mean, var)
            return y
        _, inv, shift = affine(self.mean[...], self.var[...], scale, self.bias[...], self.epsilon)
        y = pre_activation(x, inv, shift)
        return jax.nn.relu(y) if relu else y
