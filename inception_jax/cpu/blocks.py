"""The CPU backend's forms of the repeated blocks: their opening 1x1 convolutions fused into one matmul, and the
residual blocks' final ReLU masking its gradient one block later in the scan over blocks. They replace
models/blocks.py's `run_branches` and `block_relu` and models/stacking.py's `scan_blocks`.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax.cpu.convolution import inside_loops
from inception_jax.cpu.kernel_gradients import pixel_contraction
from inception_jax.models.blocks import AvgPool, Branch, Conv, InceptionBlock, Mixed, ResidualBlock
from inception_jax.models.layers import avg_pool_3x3_same
from inception_jax.models.stacking import scan_stacked

# The blocks a stage repeats, which the scan over blocks loops over (scan_blocks), scanned or unrolled alike. Their
# opening 1x1 convolutions are fused (scanned, each residual is a stacked buffer: v4's blocks save memory, the IR
# blocks time). IR-v2's stem module mixed5b gained memory that way, so the stem's and the reductions' modules run as
# written (docs/performance.md §3.6); their convolutions never run in a loop, so they may take XLA's own kernel
# gradient (convolution.conv2d, `outside_loops`).
REPEATED_BLOCKS = (InceptionBlock, ResidualBlock)


def run_branches(module: Mixed, x: jax.Array, *, train: bool) -> list[jax.Array]:
    """Each branch of `module` on its input; a repeated block's opening 1x1 convolutions as one matmul, its
    convolutions traced as running inside a loop."""
    repeated = isinstance(module, REPEATED_BLOCKS)
    with inside_loops(repeated):
        opened = fused_openings(module, x, train=train) if repeated else {}
        outs = []
        for i, branch in enumerate(module.branches):
            h, done = opened.get(i, (x, 0))
            outs.append(module.run_branch(branch[done:], h, train=train))
        return outs


def fused_openings(module: Mixed, x: jax.Array, *, train: bool) -> dict[int, tuple[jax.Array, int]]:
    """The branches that open with a 1x1 conv on the module input, run as one matmul (`pointwise_heads`) when
    there are two or more: {branch index: (its output after those layers, how many layers that was)}.

    A branch opening AvgPool -> 1x1 conv is among them with the two swapped: both are linear, the pool per
    channel and the conv per pixel (its divisor depends on the pixel only), so they commute and the pool runs on
    the conv's fewer output channels (v4 block B: 128 instead of 1024) while the module input is the only thing
    the backward keeps. Equal up to float rounding; the parity tests hold it to the references.
    """
    openings = {i: n for i, branch in enumerate(module.branches) if (n := pointwise_opening(branch))}
    if len(openings) < 2:
        return {}
    units = [getattr(module, module.branches[i][n - 1].name) for i, n in openings.items()]
    promoted = [unit.conv.promote_dtype((x, unit.conv.kernel[...], None), dtype=unit.conv.dtype) for unit in units]
    ys = pointwise_heads(promoted[0][0], tuple(kernel for _, kernel, _ in promoted))
    opened = {}
    for (i, n), unit, y in zip(openings.items(), units, ys, strict=True):
        opened[i] = (unit.bn(avg_pool_3x3_same(y) if n == 2 else y, train=train, relu=True), n)
    return opened


def pointwise_opening(branch: Branch) -> int:
    """How many leading layers of `branch` are a 1x1 stride-1 conv on the module input: 1 for the conv, 2 for
    AvgPool then the conv, 0 when the branch opens otherwise."""
    first = 1 if branch and isinstance(branch[0], AvgPool) else 0
    if len(branch) > first and isinstance(layer := branch[first], Conv) and _is_pointwise(layer):
        return first + 1
    return 0


def _is_pointwise(layer: Conv) -> bool:
    return layer.kernel == (1, 1) and layer.stride == 1


@jax.custom_vjp
def pointwise_heads(x: jax.Array, kernels: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Several 1x1 stride-1 convolutions (HWIO kernels) of one NHWC input, as one matmul with their kernels side
    by side; returns each convolution's output.

    The branches of an Inception module that open with a 1x1 conv read the same input: one wide matmul reads it
    once, and the backward makes one input-gradient matmul (no sum of per-branch gradients) and one
    kernel-gradient matmul, whose channel-major copy of the input XLA makes once. The kernels are saved for the
    backward as they came in, concatenated again there (see convolution.py's `_conv2d` on why a derived kernel
    must not be a residual inside the scan over blocks).
    """
    y = jnp.einsum("bhwc,cd->bhwd", x, _side_by_side(kernels))
    return tuple(jnp.split(y, _channel_bounds(kernels), axis=-1))


def _side_by_side(kernels: tuple[jax.Array, ...]) -> jax.Array:
    return jnp.concatenate([k[0, 0] for k in kernels], axis=1)


def _channel_bounds(kernels: tuple[jax.Array, ...]) -> np.ndarray:
    """Where each kernel's output channels end in the side-by-side matmul (the last one's end left out)."""
    return np.cumsum([k.shape[-1] for k in kernels])[:-1]


def _pointwise_heads_fwd(x, kernels):
    return pointwise_heads(x, kernels), (x, kernels)


def _pointwise_heads_bwd(residuals, dys):
    x, kernels = residuals
    dy = jnp.concatenate(dys, axis=-1)
    dx = jnp.einsum("bhwd,cd->bhwc", dy, _side_by_side(kernels))
    dk = pixel_contraction(x, dy)
    dks = jnp.split(dk, _channel_bounds(kernels), axis=1)
    return dx.astype(x.dtype), tuple(d[None, None].astype(k.dtype) for d, k in zip(dks, kernels, strict=True))


pointwise_heads.defvjp(_pointwise_heads_fwd, _pointwise_heads_bwd)


# The ReLU that ends each scanned residual block, with its backward mask applied one block later. Autodiff of a plain
# ReLU stores its mask (a bool per element) for every block of the scan; but the ReLU's output is the next block's
# input, which the scan keeps anyway (its convolutions need it), and (out > 0) is the mask. So the block ends in
# `relu_unmasked` (forward ReLU, backward passes the gradient through) and the next block starts with
# `mask_gradient(x, 0)` (forward identity, backward masks by x > 0). The first block of a stage starts with
# `mask_gradient(x, -inf)` (nothing to mask) and the stage's output goes through `mask_gradient(y, 0)` for its last
# block. Used only in pairs (scan_blocks): alone, `relu_unmasked`'s gradient is wrong. It saves the stacked masks'
# memory and a little time at 299 px (docs/performance.md §3.5).
_DEFERRED_RELU_MASK = contextvars.ContextVar("deferred_relu_mask", default=False)


@contextlib.contextmanager
def _deferring_relu_masks():
    token = _DEFERRED_RELU_MASK.set(True)
    try:
        yield
    finally:
        _DEFERRED_RELU_MASK.reset(token)


def scan_blocks(stacked: nnx.Module, x: jax.Array, apply, *, remat: bool):
    """The stock scan over a stage's stacked blocks; for residual blocks that end in a ReLU, each block's ReLU
    mask is applied in the next block's backward, from that block's input."""
    if not (isinstance(stacked, ResidualBlock) and stacked.activation):
        return scan_stacked(stacked, x, apply, remat=remat)

    def block(blk: ResidualBlock, h: jax.Array, floor: jax.Array):
        with _deferring_relu_masks():
            return apply(blk, mask_gradient(h, floor))

    # The first block's floor is -inf (nothing to mask: this stage applied no ReLU to its input); the last
    # block's mask is applied to the stage's output.
    n = jax.tree.leaves(nnx.state(stacked))[0].shape[0]
    floors = jnp.zeros((n,), jnp.float32).at[0].set(-jnp.inf)
    y, stats = scan_stacked(stacked, x, block, xs=floors, remat=remat)
    return mask_gradient(y, jnp.zeros((), jnp.float32)), stats


def block_relu(y: jax.Array) -> jax.Array:
    """The residual block's final ReLU: `relu_unmasked` inside `scan_blocks`' residual blocks, else jax.nn.relu."""
    return relu_unmasked(y) if _DEFERRED_RELU_MASK.get() else jax.nn.relu(y)


@jax.custom_vjp
def relu_unmasked(z: jax.Array) -> jax.Array:
    """max(z, 0) whose backward is the identity: the ReLU's mask is applied by the `mask_gradient` after it."""
    return jax.nn.relu(z)


relu_unmasked.defvjp(lambda z: (jax.nn.relu(z), None), lambda _, g: (g,))


@jax.custom_vjp
def mask_gradient(x: jax.Array, floor: jax.Array) -> jax.Array:
    """x itself, whose backward zeroes the gradient where x <= floor (a scalar; -inf masks nothing)."""
    return x


def _mask_gradient_fwd(x, floor):
    return x, (x, floor)


def _mask_gradient_bwd(residuals, g):
    x, floor = residuals
    return jnp.where(x > floor.astype(x.dtype), g, jnp.zeros_like(g)), jnp.zeros_like(floor)


mask_gradient.defvjp(_mask_gradient_fwd, _mask_gradient_bwd)
