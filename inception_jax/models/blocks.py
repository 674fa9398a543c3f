"""Inception modules described as data: a module is a tuple of branches, a branch a tuple of layer specs.

The family files (`inception_v4.py`, `inception_resnet_v1.py`, `inception_resnet_v2.py`) write the tables of
docs/architecture.md as these specs; the classes here turn a spec into Flax NNX modules whose attribute names are the
spec's module names (`b{j}_{k}`), so parameter paths match §0.4 and the importers' name maps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.models.layers import (
    ConvBN,
    LayerContext,
    avg_pool_3x3_same,
    avg_pool_valid,
    conv_general_dilated,
    max_pool_3x3_s2,
)
from inception_jax.models.ops import replaceable


@dataclasses.dataclass(frozen=True)
class Conv:
    """A CBR unit named `name`; its filter count comes from the model's filter table."""

    name: str
    kernel: tuple[int, int]
    stride: int = 1
    padding: str = "SAME"


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """MaxPool(3, 2, VALID); passes its input channels through."""


@dataclasses.dataclass(frozen=True)
class AvgPool:
    """AvgPool(3, 1, SAME), padding excluded from the divisor; passes its input channels through."""


@dataclasses.dataclass(frozen=True)
class Fork:
    """Parallel CBR heads on the same input, concatenated in order (the v4 Inception-C branches)."""

    heads: tuple[Conv, ...]


@dataclasses.dataclass(frozen=True)
class MixedSpec:
    """A named multi-branch module inside the stem (`mixed3a`, `mixed5b`, ...)."""

    name: str
    branches: tuple[tuple, ...]


Layer = Conv | MaxPool | AvgPool | Fork
Branch = tuple[Layer, ...]


def conv(name: str, kernel: int | tuple[int, int], stride: int = 1, padding: str = "SAME") -> Conv:
    """Shorthand for the tables: `conv('b1_1', (1, 7))` is CBR with kh = 1, kw = 7."""
    k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return Conv(name, k, stride, padding)


def conv_names(branches: tuple[Branch, ...]) -> list[str]:
    """The CBR module names of a multi-branch module, in creation (= concatenation) order."""
    names = []
    for branch in branches:
        for layer in branch:
            if isinstance(layer, Conv):
                names.append(layer.name)
            elif isinstance(layer, Fork):
                names.extend(h.name for h in layer.heads)
    return names


def sub_filters(filters: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The entries of a flat dotted filter table under `prefix.`, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in filters.items() if k.startswith(p)}


class Mixed(nnx.Module):
    """Concatenation of branches (docs/architecture.md §1.5: the order is part of the architecture)."""

    def __init__(self, in_channels: int, branches: tuple[Branch, ...], filters: Mapping[str, int], *,
                 ctx: LayerContext, rngs: nnx.Rngs):
        self.branches = branches
        total = 0
        for branch in branches:
            c = in_channels
            for layer in branch:
                if isinstance(layer, Conv):
                    setattr(self, layer.name, self._unit(c, layer, filters, ctx, rngs))
                    c = filters[layer.name]
                elif isinstance(layer, Fork):
                    for head in layer.heads:
                        setattr(self, head.name, self._unit(c, head, filters, ctx, rngs))
                    c = sum(filters[h.name] for h in layer.heads)
            total += c
        self.mixed_channels = total

    @staticmethod
    def _unit(c_in: int, layer: Conv, filters: Mapping[str, int], ctx: LayerContext, rngs: nnx.Rngs) -> ConvBN:
        return ConvBN(c_in, filters[layer.name], layer.kernel, stride=layer.stride, padding=layer.padding, ctx=ctx,
                      rngs=rngs)

    def mixed(self, x: jax.Array, *, train: bool) -> jax.Array:
        """concat(branches): every branch on the module's input, concatenated in order."""
        outs = run_branches(self, x, train=train)
        return jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]

    def run_branch(self, layers: Branch, x: jax.Array, *, train: bool) -> jax.Array:
        """The layers of one branch (or what is left of one), in order."""
        h = x
        for layer in layers:
            if isinstance(layer, Conv):
                h = getattr(self, layer.name)(h, train=train)
            elif isinstance(layer, MaxPool):
                h = max_pool_3x3_s2(h)
            elif isinstance(layer, AvgPool):
                h = avg_pool_3x3_same(h)
            else:
                h = jnp.concatenate([getattr(self, hd.name)(h, train=train) for hd in layer.heads], axis=-1)
        return h

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.mixed(x, train=train)


@replaceable
def run_branches(module: Mixed, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """Each branch of a multi-branch module on the module's input x. CPU twin: cpu/blocks.py `run_branches` (the
    opening 1x1 convolutions fused); they agree:
    tests/test_models.py::test_blocks_with_fused_1x1_heads_equal_the_blocks_as_written."""
    return [module.run_branch(branch, x, train=train) for branch in module.branches]


def zero_fraction(x: jax.Array) -> jax.Array:
    return jnp.mean((x == 0).astype(jnp.float32))


def rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


class InceptionBlock(Mixed):
    """A repeated Inception-v4 block (no shortcut): its output is the concatenation itself."""

    def __call__(self, x: jax.Array, *, train: bool, diagnostics: bool = False):
        y = self.mixed(x, train=train)
        return y, ({"zero_frac": zero_fraction(y)} if diagnostics else None)


SCALE_MODES = ("constant", "learnable", "learnable_channel")


class ScaleConstant(nnx.Variable):
    """A constant of a block: the residual scale in `constant` mode, or the shortcut's gain. It is state, not a
    parameter (no gradient, no weight decay, never updated), and being an array rather than a Python float it keeps
    the value out of the compiled program: networks that differ only in these values share one compilation."""


# The ScaleConstant variables of a residual block: values of the network's options (network.block_values), never
# weights to carry over from another network.
CONSTANT_NAMES = ("shortcut", "residual_scale")


class ResidualBlock(Mixed):
    """Inception-ResNet block (§1.6): y = act(shortcut * x + scale * UP(concat(branches))), UP a biased linear 1x1
    conv, shortcut 1.

    The plain block of §1.10 is the same block with shortcut 0 and scale `plain_scale`: y = act(plain_scale *
    UP(...)), same parameters, no shortcut. Both the shortcut and a constant scale are values held as state, so a
    plain and a residual network of one shape are one program. The scale is constant, or a trainable scalar /
    per-channel vector starting at its value (`learnable` / `learnable_channel`: the LayerScale / ReZero / SkipInit
    family).
    """

    def __init__(self, in_channels: int, branches: tuple[Branch, ...], filters: Mapping[str, int], *,
                 shortcut: float, scale: float, scale_mode: str, activation: bool, ctx: LayerContext,
                 rngs: nnx.Rngs):
        super().__init__(in_channels, branches, filters, ctx=ctx, rngs=rngs)
        self.up = nnx.Conv(self.mixed_channels, in_channels, (1, 1), use_bias=True, kernel_init=ctx.up_init,
                           dtype=ctx.dtype, param_dtype=ctx.param_dtype, conv_general_dilated=conv_general_dilated,
                           rngs=rngs)
        self.activation = activation
        self.shortcut = ScaleConstant(jnp.asarray(shortcut, jnp.float32))
        if scale_mode == "constant":
            self.residual_scale = ScaleConstant(jnp.asarray(scale, jnp.float32))
        else:
            shape = () if scale_mode == "learnable" else (in_channels,)
            self.residual_scale = nnx.Param(jnp.full(shape, scale, ctx.param_dtype))

    def scale_value(self) -> jax.Array:
        return self.residual_scale[...]

    def __call__(self, x: jax.Array, *, train: bool, diagnostics: bool = False):
        """(output, diagnostics or None)."""
        branch = scaled_up_projection(self.up, self.mixed(x, train=train), self.scale_value())
        y = self.shortcut[...].astype(x.dtype) * x + branch
        y = block_relu(y) if self.activation else y
        if not diagnostics:
            return y, None
        # `scale` is the mean of a per-channel scale; constant blocks report their constant.
        scale = jnp.mean(self.scale_value().astype(jnp.float32))
        return y, {"zero_frac": zero_fraction(y), "branch_rms": rms(branch), "shortcut_rms": rms(x), "scale": scale}


@replaceable
def scaled_up_projection(up: nnx.Conv, h: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * UP(h): the residual branch of a block, its concatenation projected back to the block's width. CPU
    twin: cpu/projection.py `scaled_up_projection` (the scale folded into the kernel); they agree:
    tests/test_projection.py::test_folded_projection_matches_the_formula_and_its_gradients and
    ::test_a_residual_block_computes_the_same_in_either_form."""
    r = up(h)
    return r * scale.astype(r.dtype)


@replaceable
def block_relu(y: jax.Array) -> jax.Array:
    """The ReLU that ends a residual block (`act`; the released IR-v2's last block has none). CPU twin:
    cpu/blocks.py `block_relu` (its mask applied downstream); they agree:
    tests/test_layers.py::test_a_relu_whose_mask_is_applied_downstream_has_the_relus_gradient."""
    return jax.nn.relu(y)


class Stem(nnx.Module):
    """The layers before the first repeated block: CBR units, max pools and named mixed modules."""

    def __init__(self, layers: tuple, filters: Mapping[str, int], *, ctx: LayerContext, rngs: nnx.Rngs):
        self.layers = layers
        c = 3
        for layer in layers:
            if isinstance(layer, Conv):
                setattr(self, layer.name, Mixed._unit(c, layer, filters, ctx, rngs))
                c = filters[layer.name]
            elif isinstance(layer, MixedSpec):
                module = Mixed(c, layer.branches, sub_filters(filters, layer.name), ctx=ctx, rngs=rngs)
                setattr(self, layer.name, module)
                c = module.mixed_channels
        self.out_channels = c

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for layer in self.layers:
            if isinstance(layer, MaxPool):
                x = max_pool_3x3_s2(x)
            else:
                x = getattr(self, layer.name)(x, train=train)
        return x


class AuxHead(nnx.Module):
    """slim's auxiliary classifier (§2.8, §4.2.8) on the last 17-grid block: pool 5/3 -> CBR 1x1 -> CBR kxk VALID
    (k = the pooled grid at the configured image size) -> Dense. Used only in training."""

    def __init__(self, in_channels: int, conv1: int, conv2: int, kernel: int, num_classes: int, *,
                 ctx: LayerContext, rngs: nnx.Rngs):
        self.kernel = kernel
        self.conv1 = ConvBN(in_channels, conv1, (1, 1), ctx=ctx, rngs=rngs)
        self.conv2 = ConvBN(conv1, conv2, (kernel, kernel), padding="VALID", ctx=ctx, rngs=rngs)
        self.fc = nnx.Linear(conv2, num_classes, kernel_init=ctx.dense_init, dtype=ctx.dtype,
                             param_dtype=ctx.param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.conv2(self.conv1(avg_pool_valid(x, 5, 3), train=train), train=train)
        return self.fc(x.reshape(x.shape[0], -1))


class Head(nnx.Module):
    """Classifier (§1.7): the Dense after global average pooling and dropout (both done by the network)."""

    def __init__(self, in_features: int, num_classes: int, *, ctx: LayerContext, rngs: nnx.Rngs):
        self.fc = nnx.Linear(in_features, num_classes, kernel_init=ctx.dense_init, dtype=ctx.dtype,
                             param_dtype=ctx.param_dtype, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.fc(features)
