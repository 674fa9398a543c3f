"""BatchNorm with an explicit normalization group, and its training-mode fusion with the ReLU that follows it.

Every BatchNorm of the spec sits in a CBR unit, so training computes relu(batchnorm(x)) ~150 times a step, and
its backward is a third of a CPU step's element-wise work. Autodiff of the forward below builds the backward
from the mean and variance ops: it materialises the ReLU's masked cotangent, then reads it back for two
reductions and again for the input gradient. `batch_norm_relu` writes the backward by hand as one reduction
pass over (dy, x) and one element-wise pass dx = a * dy_masked + b * (x - mean) + c with per-channel a, b, c,
recomputing the ReLU mask from x rather than storing it. Its forward is the same expression as before, so
outputs and batch statistics are bit-identical; gradients agree with autodiff to float32 rounding
(tests/test_batchnorm.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _grouped(x: jax.Array, groups: int) -> jax.Array:
    """x (N, H, W, C) viewed as (groups, N // groups, H, W, C)."""
    return x.reshape((groups, x.shape[0] // groups, *x.shape[1:]))


def batch_moments(xg: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-group float32 (mean, var, raw var) of a grouped x, shaped (groups, 1, 1, 1, C).

    One pass (E[x^2] - E[x]^2, as flax's use_fast_variance); `var` is clipped at 0 against rounding and `raw`
    is kept so the backward knows where the clip was active (no gradient flows through the variance there).
    """
    xf = xg.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
    raw = jnp.mean(jnp.square(xf), axis=(1, 2, 3), keepdims=True) - jnp.square(mean)
    return mean, jnp.maximum(raw, 0.0), raw


def _affine(mean, var, scale, bias, epsilon):
    """(inv, shift) in float32 such that normalize-then-affine is x * inv + shift."""
    rstd = jax.lax.rsqrt(var + epsilon)
    inv = rstd if scale is None else rstd * scale.astype(jnp.float32)
    return rstd, inv, bias.astype(jnp.float32) - mean * inv


def _pre_activation(xg, inv, shift):
    """The normalized x in x's dtype: one multiply-add per element (the forward's exact expression)."""
    return xg * inv.astype(xg.dtype) + shift.astype(xg.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_relu(x: jax.Array, scale: jax.Array | None, bias: jax.Array, groups: int, epsilon: float):
    """(relu(batchnorm(x)), mean, var) with batch statistics over each of `groups` consecutive example groups.

    mean and var are (groups, 1, 1, 1, C) float32 (for the running statistics); they are differentiable too,
    so the function is a drop-in for the autodiff version under any use.
    """
    return _forward(x, scale, bias, groups, epsilon)[0]


def _forward(x, scale, bias, groups, epsilon):
    xg = _grouped(x, groups)
    mean, var, raw = batch_moments(xg)
    rstd, inv, shift = _affine(mean, var, scale, bias, epsilon)
    y = jax.nn.relu(_pre_activation(xg, inv, shift)).reshape(x.shape)
    return (y, mean, var), (x, scale, bias, mean, raw, rstd, inv, shift)


def _bwd(groups, epsilon, residuals, cotangents):
    del epsilon  # rstd carries it
    x, scale, bias, mean, raw, rstd, inv, shift = residuals
    dy, dmean_in, dvar_in = cotangents
    xg = _grouped(x, groups)
    xf = xg.astype(jnp.float32)
    dyg = _grouped(dy, groups).astype(jnp.float32)
    # The ReLU's mask, recomputed with the forward's expression so it is the same mask bit for bit.
    dyr = jnp.where(_pre_activation(xg, inv, shift) > 0, dyg, 0.0)
    count = xg.size // xg.shape[-1] // groups  # elements per channel in one group
    # Pass 1: the two per-channel sums. Uncentred, so XLA:CPU's reductions read (dy_masked, x) as they are
    # (a centred x would be one more array written and read); sum(dy (x - mean)) = sum(dy x) - mean sum(dy).
    sum_dy = jnp.sum(dyr, axis=(1, 2, 3), keepdims=True)
    sum_dy_x = jnp.sum(dyr * xf, axis=(1, 2, 3), keepdims=True)
    # y = (x - mean) * inv + bias, inv = scale * rstd, rstd = (var + eps)^-1/2, var = E[x^2] - mean^2.
    dinv = sum_dy_x - mean * sum_dy
    dvar = -0.5 * dinv * rstd**3 * (1.0 if scale is None else scale.astype(jnp.float32))
    dvar = jnp.where(raw > 0, dvar + dvar_in, 0.0)  # the clip at 0 passes no gradient (as jnp.maximum's VJP)
    dmean = dmean_in - inv * sum_dy - 2.0 * mean * dvar
    # Pass 2: dx = inv * dy_masked + (d var / dx) dvar + (d mean / dx) dmean, per-channel coefficients.
    dx = inv * dyr + ((2.0 / count) * dvar) * xf + dmean / count
    dbias = jnp.sum(sum_dy, axis=(0, 1, 2, 3))
    dscale = None if scale is None else jnp.sum(dinv * rstd, axis=(0, 1, 2, 3)).astype(scale.dtype)
    return dx.reshape(x.shape).astype(x.dtype), dscale, dbias.astype(bias.dtype)


batch_norm_relu.defvjp(_forward, _bwd)


class BatchNorm(nnx.Module):
    """BatchNorm over N, H, W with TF/Flax momentum semantics (`ra <- m * ra + (1 - m) * batch_stat`).

    `group_size` makes the normalization group explicit: None normalizes over the whole batch the step sees
    (under `jax.jit` on a mesh that is the *global* batch: sync-BN), an integer g normalizes each consecutive
    group of g examples on its own ("ghost" BN, as each replica did in the paper's asynchronous training).
    Running statistics are the mean of the groups' statistics. Statistics are always float32.
    `relu=True` applies the ReLU that follows every BatchNorm of the spec, fused in training (module docstring).
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
        if train and relu:
            y, mean, var = batch_norm_relu(x, scale, self.bias[...], self._groups(x.shape[0]), self.epsilon)
            self._update_running(mean, var)
            return y
        if train:
            xg = _grouped(x, self._groups(x.shape[0]))
            mean, var, _ = batch_moments(xg)
            self._update_running(mean, var)
            _, inv, shift = _affine(mean, var, scale, self.bias[...], self.epsilon)
            y = _pre_activation(xg, inv, shift).reshape(x.shape)
        else:
            _, inv, shift = _affine(self.mean[...], self.var[...], scale, self.bias[...], self.epsilon)
            y = _pre_activation(x, inv, shift)
        return jax.nn.relu(y) if relu else y
