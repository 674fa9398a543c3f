"""The CPU backend's BatchNorm + ReLU in training: the stock forward with a hand-written backward. It replaces
models/batchnorm.py's `batch_norm_relu`.

Every BatchNorm of the spec sits in a CBR unit, so training computes relu(batchnorm(x)) ~150 times a step, and
its backward is a third of a CPU step's element-wise work. Autodiff of the forward builds the backward from the
mean and variance ops: it materialises the ReLU's masked cotangent, then reads it back for two reductions and
again for the input gradient. Here the backward is one reduction pass over (dy, x) and one element-wise pass
dx = a * dy_masked + b * (x - mean) + c with per-channel a, b, c, recomputing the ReLU mask from x rather than
storing it. The forward is the stock one's expressions (models/batchnorm.py), so outputs and batch statistics
are bit-identical; gradients agree with autodiff to float32 rounding (tests/test_batchnorm.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from inception_jax.models.batchnorm import affine, batch_moments, grouped, pre_activation


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_relu(x: jax.Array, scale: jax.Array | None, bias: jax.Array, groups: int, epsilon: float):
    """(relu(batchnorm(x)), mean, var) with batch statistics over each of `groups` consecutive example groups.

    mean and var are (groups, 1, 1, 1, C) float32 (for the running statistics); they are differentiable too,
    so the function is a drop-in for the autodiff version under any use.
    """
    return _forward(x, scale, bias, groups, epsilon)[0]


def _forward(x, scale, bias, groups, epsilon):
    xg = grouped(x, groups)
    mean, var, raw = batch_moments(xg)
    rstd, inv, shift = affine(mean, var, scale, bias, epsilon)
    y = jax.nn.relu(pre_activation(xg, inv, shift)).reshape(x.shape)
    return (y, mean, var), (x, scale, bias, mean, raw, rstd, inv, shift)


def _bwd(groups, epsilon, residuals, cotangents):
    del epsilon  # rstd carries it
    x, scale, bias, mean, raw, rstd, inv, shift = residuals
    dy, dmean_in, dvar_in = cotangents
    xg = grouped(x, groups)
    xf = xg.astype(jnp.float32)
    dyg = grouped(dy, groups).astype(jnp.float32)
    # The ReLU's mask, recomputed with the forward's expression so it is the same mask bit for bit.
    dyr = jnp.where(pre_activation(xg, inv, shift) > 0, dyg, 0.0)
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


