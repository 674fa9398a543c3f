"""The CPU backend's scaled up-projection of the residual blocks, scale * (x @ W + b), with the scale folded into
W and b where that pays. `scaled_up_projection` replaces models/blocks.py's.

Written as autodiff sees it (the 1x1 conv, then `* scale`), the backward multiplies the ReLU-masked output
gradient by the scale, a pass over a block-sized tensor that XLA:CPU even ran twice per block (once in the
layout of the input-gradient matmul, once in that of the bias gradient's reduction). Here the scale multiplies
the (Cin, Cout) kernel and the bias instead, in the forward and in the backward: nothing of the activations'
size is scaled, and the output gradient goes to both matmuls and the reduction as it came in.

Equal to the two-step form up to float rounding (one rounding moves: x @ (s W) + s b for s (x @ W + b)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.cpu.convolution import inside_loops
from inception_jax.cpu.kernel_gradients import pixel_contraction
from inception_jax.models.blocks import scaled_up_projection as stock_scaled_up_projection

# Folding pays where the kernel is this many times smaller than the activations, or more: it costs passes over the
# kernel (scaled in the forward and again in the backward) to save them over the output gradient. In IR-v2 at 299
# px it paid in the A and B blocks and cost time in the C blocks, whose kernel is as large as their activations, so
# they keep the scaled output (docs/performance.md §3.4).
FOLD_MIN_PIXELS_PER_INPUT_CHANNEL = 4


def folds_scale(kernel_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> bool:
    """Whether `scaled_projection` should fold the scale for a (1, 1, Cin, Cout) kernel on an NHWC input: when the
    kernel (Cin x Cout) is at most 1 / FOLD_MIN_PIXELS_PER_INPUT_CHANNEL of the output (pixels x Cout)."""
    pixels = x_shape[0] * x_shape[1] * x_shape[2]
    return kernel_shape[2] * FOLD_MIN_PIXELS_PER_INPUT_CHANNEL <= pixels


@jax.custom_vjp
def scaled_projection(x: jax.Array, kernel: jax.Array, bias: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * (x @ kernel + bias) for NHWC `x`, a (1, 1, Cin, Cout) HWIO `kernel`, a (Cout,) `bias` and a
    scalar or (Cout,) `scale`, all in one dtype. Differentiable in all four (a learnable scale gets its gradient)."""
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0] * scale) + bias * scale


def _forward(x, kernel, bias, scale):
    # The inputs are saved as they came in: inside the scan over stacked blocks a derived array (the scaled
    # kernel) would be a residual of its own, copied into a stacked buffer every block (convolution._conv2d).
    return scaled_projection(x, kernel, bias, scale), (x, kernel, bias, scale)


def _backward(residuals, dy):
    x, kernel, bias, scale = residuals
    w = kernel[0, 0]
    dx = jnp.einsum("bhwd,cd->bhwc", dy, w * scale)
    dw_unscaled = pixel_contraction(x, dy)  # d loss / d (scale * W), float32 (Cin, Cout)
    db_unscaled = jnp.sum(dy, axis=(0, 1, 2), dtype=jnp.float32)  # d loss / d (scale * b)
    wf, bf, sf = (a.astype(jnp.float32) for a in (w, bias, scale))
    dscale = jnp.sum(wf * dw_unscaled, axis=0) + bf * db_unscaled  # per output channel
    if scale.ndim == 0:
        dscale = jnp.sum(dscale)
    return (dx.astype(x.dtype), (dw_unscaled * sf)[None, None].astype(kernel.dtype),
            (db_unscaled * sf).astype(bias.dtype), dscale.astype(scale.dtype))


scaled_projection.defvjp(_forward, _backward)


def scaled_up_projection(up: nnx.Conv, h: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * UP(h). Where UP's kernel is small next to the activations, the scale is folded into the kernel and
    bias (`scaled_projection`); elsewhere the output is scaled, which autodiff then repeats on the output gradient."""
    x, kernel, bias = up.promote_dtype((h, up.kernel[...], up.bias[...]), dtype=up.dtype)
    if folds_scale(kernel.shape, x.shape):
        return scaled_projection(x, kernel, bias, scale.astype(x.dtype))
    with inside_loops(True):  # a residual block's, which the scan over blocks loops over (a matmul either way)
        return stock_scaled_up_projection.stock(up, h, scale)
