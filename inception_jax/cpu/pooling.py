"""The CPU backend's poolings: the stock forwards' values with backwards XLA:CPU runs fast. They replace
models/layers.py's `max_pool_3x3_s2` and `avg_pool_3x3_same`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from inception_jax.cpu.kernel_gradients import tap_window
from inception_jax.models.layers import same_pool_counts


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """MaxPool(3, 2, VALID): every stride-2 pooling of the five networks.

    The gradient is XLA's (each output's gradient goes to the first maximum of its window, row-major), written
    as nine strided masks: XLA:CPU runs its own select-and-scatter as a scalar loop.
    """
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def _max_pool_fwd(x):
    y = max_pool_3x3_s2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
    height, width = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    taken = jnp.zeros(y.shape, bool)
    zero = jnp.zeros((), g.dtype)
    grads = {}
    for di in range(3):  # the window's first maximum, row-major, takes the gradient (select with >=)
        for dj in range(3):
            window = tap_window(x, di, dj, (2, 2), (out_h, out_w))
            first = (window == y) & ~taken
            taken = taken | first
            grads[di, dj] = jnp.where(first, g, zero)
    # An input read by several windows sums their gradients in XLA's order (windows row-major), which is the
    # taps in reverse; interior padding 1 puts a tap's gradients back on the stride-2 grid it was read from.
    dx = jnp.zeros(x.shape, g.dtype)
    for (di, dj), tap in reversed(grads.items()):
        dx = dx + jax.lax.pad(tap, zero, ((0, 0, 0), (di, height - di - 2 * out_h + 1, 1),
                                          (dj, width - dj - 2 * out_w + 1, 1), (0, 0, 0)))
    return (dx,)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def box_sum_3x3(x: jax.Array) -> jax.Array:
    """Sums over each pixel's 3x3 neighbourhood inside the grid (zero padding), as shifted adds: rows, then columns.

    XLA:CPU's reduce-window emitter ran a 3x3 window several times slower than these fused adds
    (docs/performance.md §3.2, §6.3).
    """
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = padded[:, 0:height] + padded[:, 1:height + 1] + padded[:, 2:height + 2]
    return rows[:, :, 0:width] + rows[:, :, 1:width + 1] + rows[:, :, 2:width + 2]


@jax.custom_vjp
def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    """AvgPool(3, 1, SAME) with padded positions excluded from the divisor (TF semantics, §1.4).

    The gradient is the same box sum of the scaled output gradient: a zero-padded 3x3 box sum is its own adjoint.
    """
    return box_sum_3x3(x) * _inverse_counts(x)


def _inverse_counts(x: jax.Array) -> jax.Array:
    return jnp.asarray(1.0 / same_pool_counts(x.shape[1], x.shape[2]), x.dtype)


def _avg_pool_fwd(x):
    return avg_pool_3x3_same(x), None


def _avg_pool_bwd(_, g):
    return (box_sum_3x3(g * _inverse_counts(g)),)


avg_pool_3x3_same.defvjp(_avg_pool_fwd, _avg_pool_bwd)
