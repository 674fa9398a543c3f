"""Kernel gradients of NHWC x HWIO convolutions in the forms XLA:CPU runs fast (convolution.py picks one per
convolution): per-tap matmuls, XLA's own transpose, and a stride-1 "canonical" convolution that stays on XLA's fast
path inside loops. Also the pixel contraction every matmul-shaped kernel gradient of the CPU backend uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def pixel_contraction(x: jax.Array, dy: jax.Array, *, per_example: bool = False) -> jax.Array:
    """sum over the pixels (and the examples, unless `per_example`) of x[..., c] * dy[..., d], in float32: (c, d),
    or (b, c, d) per example. A kernel gradient's matmul.

    Written as a dot of the NHWC arrays flattened to (pixels, channels), contracting their leading dimension,
    not as an einsum over b, h, w: XLA:CPU hands that transposed operand to the matmul as it is, where the
    einsum's form made it first copy the input to channel-major, element by element (much of a 1x1
    kernel gradient inside the scan over blocks). Per example on small grids (IR-v2's A blocks at 75 px: 7 x 7)
    the flattened form was the slower one, so under 256 pixels the einsum stays (docs/performance.md §6.3).
    """
    if per_example and x.shape[1] * x.shape[2] < 256:
        return jnp.einsum("bhwc,bhwd->bcd", x, dy, preferred_element_type=jnp.float32)
    if per_example:
        flat = (x.reshape(x.shape[0], -1, x.shape[-1]), dy.reshape(dy.shape[0], -1, dy.shape[-1]))
        dimensions = (((1,), (1,)), ((0,), (0,)))
    else:
        flat = (x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))
        dimensions = (((0,), (0,)), ((), ()))
    return jax.lax.dot_general(*flat, dimensions, preferred_element_type=jnp.float32)



def tap_window(x: jax.Array, i: int, j: int, strides: tuple[int, int], out_hw: tuple[int, int]) -> jax.Array:
    """The NHWC input pixels that kernel tap (i, j) meets at each of the out_hw output positions (strided)."""
    span_h, span_w = tap_span(strides, out_hw)
    return jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + span_h, j + span_w, x.shape[3]), (1, *strides, 1))


def tap_span(strides: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """How many input rows and columns one tap's strided window spans, first pixel to last."""
    return tuple(stride * (n - 1) + 1 for stride, n in zip(strides, out_hw, strict=True))


# A kernel gradient whose taps' input windows are larger than this copies them one at a time (a loop over the
# taps): unrolled, XLA:CPU schedules every tap's window copy before the matmuls, so all are alive at once (the
# stem's 3x3 convs at 299 px, batch 8: 9 windows of 21 MiB each). Smaller windows (the scanned blocks' convs)
# stay unrolled: looped inside the scan they made the step slower. The loop cut the step's temporaries at no cost
# in time (docs/performance.md §3.1, §6.3).
UNROLLED_WINDOW_MAX_BYTES = 4 << 20


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                    padding: tuple[tuple[int, int], tuple[int, int]],
                    unrolled_max_bytes: int = UNROLLED_WINDOW_MAX_BYTES) -> jax.Array:
    """d loss / d kernel of an NHWC x HWIO convolution, as one matmul per kernel tap (in a loop over the taps when
    one tap's input window is larger than `unrolled_max_bytes`)."""
    kh, kw, cin, cout = kernel_shape
    padded = pad_spatially(x, padding)
    out_hw = dy.shape[1:3]
    # A small (cin x cout) product over a huge contraction runs on one thread; per-example partial products
    # parallelise it, which pays for the stem's convs and costs extra for wider ones (docs/performance.md §3.1).
    per_example = cin * cout <= 8192

    def tap_gradient(window: jax.Array) -> jax.Array:
        tap = pixel_contraction(window, dy, per_example=per_example)
        return tap.sum(0) if per_example else tap

    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    window_bytes = x.shape[0] * out_hw[0] * out_hw[1] * cin * x.dtype.itemsize
    if len(offsets) == 1 or window_bytes <= unrolled_max_bytes:
        taps = jnp.stack([tap_gradient(tap_window(padded, i, j, strides, out_hw)) for i, j in offsets])
    else:
        def one_tap(_, offset):
            return None, tap_gradient(moving_tap_window(padded, offset, strides, out_hw))
        taps = jax.lax.scan(one_tap, None, jnp.asarray(offsets, jnp.int32))[1]
    return taps.reshape(kernel_shape)


def xla_kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                        padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d kernel as XLA computes it: the transpose of the convolution in the kernel.

    On XLA:CPU's own convolution kernels (codegen "tuned") and outside loops it beats `kernel_gradient`. Inside
    a while loop it is far slower, and with YNNPACK's convolutions slower at the stem: hence
    `convolution.conv2d`'s two conditions (the figures: docs/performance.md §6.3).
    """
    transpose = jax.linear_transpose(
        lambda k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DIMENSIONS),
        jax.ShapeDtypeStruct(kernel_shape, x.dtype))
    return transpose(dy)[0]


def canonical_kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d kernel of a stride-1 convolution as a convolution XLA:CPU runs on its fast path inside loops too.

    The kernel gradient is a correlation of the padded input with the output gradient over the examples: with
    the input transposed to (Cin, H, W, N) as the batch-major, feature-minor "images" and the output gradient to
    (h, w, N, Cout) as an HWIO "kernel", it is a plain NHWC x HWIO VALID convolution whose (Cin, kh, kw, Cout)
    output is the gradient, transposed. XLA makes the same convolution for `xla_kernel_gradient`, but there from
    dimension numbers it rewrites itself, which inside a while loop leaves a far slower generic path; written
    out like this it is not, and it beats the per-tap matmuls of `kernel_gradient` on the blocks' convolutions.
    Outside loops XLA's own was as fast or faster, so it stays (the figures: docs/performance.md §6.3).
    """
    if strides != (1, 1):
        raise ValueError(f"canonical_kernel_gradient: stride-1 convolutions only, got strides={strides}")
    kh, kw = kernel_shape[:2]
    padded = pad_spatially(x, padding)
    images = padded.transpose(3, 1, 2, 0)  # (Cin, H, W, N)
    window = dy.transpose(1, 2, 0, 3)  # (h, w, N, Cout)
    grad = jax.lax.conv_general_dilated(images, window, (1, 1), ((0, 0), (0, 0)), dimension_numbers=DIMENSIONS,
                                        preferred_element_type=jnp.float32)
    return grad[:, :kh, :kw].transpose(1, 2, 0, 3)  # (kh, kw, Cin, Cout)



def pad_spatially(x: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """NHWC `x` with (lo, hi) zero rows and columns added; `x` itself when there are none."""
    return jnp.pad(x, ((0, 0), *padding, (0, 0))) if any(any(p) for p in padding) else x


def moving_tap_window(x: jax.Array, offset: jax.Array, strides: tuple[int, int], out_hw: tuple[int, int]):
    """`tap_window` for a tap (i, j) given as a traced offset: the pixels it spans, then every stride-th of them."""
    span = jax.lax.dynamic_slice(x, (0, offset[0], offset[1], 0), (x.shape[0], *tap_span(strides, out_hw), x.shape[3]))
    return span[:, ::strides[0], ::strides[1]]

