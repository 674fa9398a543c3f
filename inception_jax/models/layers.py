"""The units every network is made of: the conv unit (conv -> BatchNorm -> ReLU; BatchNorm itself is in
batchnorm.py), the poolings, dropout, and the initializers the knobs name.

Nothing here knows about a particular network; the filter counts and layouts live in the family files. The
convolution and the two poolings are stock JAX and `replaceable` (ops.py): a platform backend may compute them
its own way in the programs it traces.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax.models.batchnorm import BatchNorm
from inception_jax.models.ops import replaceable

Initializer = Callable[..., jax.Array]

# docs/architecture.md §1.8: He / fan-in truncated normal for the CBR convs, Glorot uniform for UP and Dense.
INITIALIZERS: dict[str, Initializer] = {
    "he_normal": nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
    "glorot_uniform": nnx.initializers.xavier_uniform(),
    "lecun_normal": nnx.initializers.lecun_normal(),
    "zeros": nnx.initializers.zeros_init(),
}


def scaled_initializer(name: str, scale: float = 1.0) -> Initializer:
    """The named initializer, its draws multiplied by `scale` (used to separate init size from the residual scale)."""
    base = INITIALIZERS[name]
    if scale == 1.0:
        return base

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype) * jnp.asarray(scale, dtype)

    return init


@replaceable
def conv_general_dilated(*args: Any, **kwargs: Any) -> jax.Array:
    """`jax.lax.conv_general_dilated`: the convolution of every nnx.Conv of the networks (their one hook object,
    so graphdefs compare equal). CPU twin: cpu/convolution.py `conv_general_dilated`; they agree:
    tests/test_layers.py::test_outputs_and_both_gradients_equal_xla_convolution."""
    return jax.lax.conv_general_dilated(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class LayerContext:
    """The settings every ConvBN / UP / Dense of one network shares (derived once from the model options)."""

    dtype: Any
    param_dtype: Any
    bn_momentum: float
    bn_eps: float
    bn_scale: bool
    bn_group_size: int | None
    conv_init: Initializer
    up_init: Initializer
    dense_init: Initializer


class ConvBN(nnx.Module):
    """The spec's CBR unit: convolution without bias -> BatchNorm -> ReLU (docs/architecture.md §1.1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], *, stride: int = 1,
                 padding: str = "SAME", ctx: LayerContext, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_channels, out_channels, kernel, strides=stride, padding=padding, use_bias=False,
                             kernel_init=ctx.conv_init, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                             conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.bn = BatchNorm(out_channels, momentum=ctx.bn_momentum, epsilon=ctx.bn_eps, use_scale=ctx.bn_scale,
                            group_size=ctx.bn_group_size, param_dtype=ctx.param_dtype, dtype=ctx.dtype)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.bn(self.conv(x), train=train, relu=True)


@replaceable
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """MaxPool(3, 2, VALID): every stride-2 pooling of the five networks. CPU twin: cpu/pooling.py
    `max_pool_3x3_s2`; they agree: tests/test_layers.py::test_max_pool_gradient_equals_xlas_first_maximum_rule."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


@functools.lru_cache(maxsize=64)
def same_pool_counts(height: int, width: int) -> np.ndarray:
    """How many real (non-padding) pixels each output of a 3x3 stride-1 SAME window covers, (1, H, W, 1)."""
    rows = np.minimum(np.arange(height) + 1, height - 1) - np.maximum(np.arange(height) - 1, 0) + 1
    cols = np.minimum(np.arange(width) + 1, width - 1) - np.maximum(np.arange(width) - 1, 0) + 1
    return (rows[:, None] * cols[None, :]).astype(np.float32)[None, :, :, None]


@replaceable
def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    """AvgPool(3, 1, SAME) with padded positions excluded from the divisor (TF semantics, §1.4). CPU twin:
    cpu/pooling.py `avg_pool_3x3_same`; they agree:
    tests/test_layers.py::test_average_pool_and_its_gradient_equal_tf_semantics_reduce_window."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
    return total / jnp.asarray(same_pool_counts(x.shape[1], x.shape[2]), x.dtype)


def avg_pool_valid(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Average pooling with VALID padding (the aux head's 5x5 / 3 pool; no padding, so no divisor question)."""
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1),
                                  (1, stride, stride, 1), "VALID")
    return total / jnp.asarray(window * window, x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout driven by an explicit key (no RNG state in the model, so resumed runs draw the same)."""
    if rate == 0.0:
        return x
    if key is None:
        raise ValueError(f"training with dropout_rate={rate} needs a dropout_key; pass one, or dropout_rate=0")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
