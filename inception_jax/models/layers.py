"""The units every network is made of: the conv unit (conv -> BatchNorm -> ReLU; BatchNorm itself is in
batchnorm.py), the convolution and pooling gradients we write by hand, and the initializers the knobs name.

Nothing here knows about a particular network; the filter counts and layouts live in the family files.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .batchnorm import BatchNorm

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


_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


# Set while a train step compiled for XLA:CPU's own convolution kernels is traced (cpu_codegen "tuned";
# StepConfig.xla_kernel_gradients): the convolutions built `outside_loops` then take XLA's kernel gradient, and the
# stride-1 convolutions inside the scanned blocks `canonical_kernel_gradient`.
_XLA_KERNEL_GRADIENTS = contextvars.ContextVar("xla_kernel_gradients", default=False)


@contextlib.contextmanager
def xla_kernel_gradients(enabled: bool):
    """While tracing under it, float32 convolutions built `outside_loops` take `xla_kernel_gradient`, the others
    (stride 1) `canonical_kernel_gradient`."""
    token = _XLA_KERNEL_GRADIENTS.set(enabled)
    try:
        yield
    finally:
        _XLA_KERNEL_GRADIENTS.reset(token)


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]], *, outside_loops: bool = False) -> jax.Array:
    """NHWC x HWIO convolution (explicit padding) with the backward of `_conv2d`. `outside_loops`: this
    convolution is never inside a loop (the stem, the reductions, the aux head: not the scanned blocks), so under
    `xla_kernel_gradients` its kernel gradient may be XLA's own, which is fast there and slow inside loops;
    inside them it is `canonical_kernel_gradient` (stride 1; per-tap matmuls otherwise)."""
    on_xla_kernels = bool(_XLA_KERNEL_GRADIENTS.get() and x.dtype == jnp.float32)
    if on_xla_kernels and outside_loops:
        dk_mode = "xla"
    elif on_xla_kernels and strides == (1, 1):
        dk_mode = "canonical"
    else:
        dk_mode = "taps"
    return _conv2d(x, kernel, strides, padding, dk_mode)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
            padding: tuple[tuple[int, int], tuple[int, int]], dk_mode: str) -> jax.Array:
    """NHWC x HWIO convolution (explicit padding) whose kernel gradient XLA:CPU runs fast, in and out of loops.

    XLA:CPU lowers the kernel gradient of a convolution to a generic convolution that is slow everywhere (the
    stem's 3x3 VALID convs: 3x slower than matmuls) and 20-35x slower inside a while loop (the backward of a
    scan over stacked blocks). Here the kernel gradient is kh*kw matmuls of the (strided) shifted input windows
    with the output gradient (`dk_mode` "taps"), and the input gradient a plain HWIO convolution with the flipped
    kernel (benchmarks/model_compile.py, benchmarks/profile_step.py). Compiled for XLA:CPU's own convolution
    kernels, the kernel gradient is XLA's outside loops ("xla") and, stride 1, a convolution written out in a
    form XLA keeps on its fast path inside loops ("canonical"; see `conv2d`). Taps that only meet padding are cut
    off first, and what is left of a 1x1 stride-1 convolution is a matmul.

    The backward keeps the kernel exactly as it came in, cut and reshaped again there: inside the scan over
    stacked blocks JAX then passes the stacked kernels to the backward as they are, where a cut or reshaped
    kernel would be a residual of its own, copied per block into a stacked buffer (IR-v2's step temporaries at
    75 px, batch 32: 703 MiB with those copies, 566 MiB without; the step 0.93x the time).
    """
    kept, pads = crop_to_reachable_taps(kernel, x.shape[1:3], strides, padding)
    if _is_matmul(kept, strides, pads):
        return jnp.einsum("bhwc,cd->bhwd", x, kept[0, 0])
    return jax.lax.conv_general_dilated(x, kept, strides, pads, dimension_numbers=_DIMENSIONS)


def _is_matmul(kernel: jax.Array, strides: tuple[int, int], padding) -> bool:
    """A pointwise convolution is a matmul: XLA:CPU runs dot and its gradients at full speed (a 1x1 conv in a
    loop body reached half of it), and there is no window to slide."""
    return kernel.shape[:2] == (1, 1) and strides == (1, 1) and padding == ((0, 0), (0, 0))


def _conv2d_fwd(x, kernel, strides, padding, dk_mode):
    return _conv2d(x, kernel, strides, padding, dk_mode), (x, kernel)


def _conv2d_bwd(strides, padding, dk_mode, residuals, dy):
    x, kernel = residuals
    (first_h, first_w), (kept_h, kept_w), pads = reachable_cut(kernel.shape, x.shape[1:3], strides, padding)
    kept = kernel[first_h:first_h + kept_h, first_w:first_w + kept_w]
    if _is_matmul(kept, strides, pads):
        dx = jnp.einsum("bhwd,cd->bhwc", dy, kept[0, 0])
        dk = pixel_contraction(x, dy)[None, None]
    else:
        dx = input_gradient(dy, kept, x.shape, strides, pads)
        dk = KERNEL_GRADIENTS[dk_mode](x, dy, kept.shape, strides, pads)
    kh, kw = kernel.shape[:2]
    if (kept_h, kept_w) != (kh, kw):  # the cut taps met only padding: their gradient is zero
        dk = jnp.pad(dk, ((first_h, kh - first_h - kept_h), (first_w, kw - first_w - kept_w), (0, 0), (0, 0)))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def pixel_contraction(x: jax.Array, dy: jax.Array, *, per_example: bool = False) -> jax.Array:
    """sum over the pixels (and the examples, unless `per_example`) of x[..., c] * dy[..., d], in float32: (c, d),
    or (b, c, d) per example. A kernel gradient's matmul.

    Written as a dot of the NHWC arrays flattened to (pixels, channels), contracting their leading dimension,
    not as an einsum over b, h, w: XLA:CPU hands that transposed operand to the matmul as it is, where the
    einsum's form made it first copy the input to channel-major, element by element (a 1x1 kernel gradient
    inside the scan over blocks: 16.4 -> 8.2 ms per v4 B block, 18.4 -> 8.2 ms per A block at 299 px, batch 8).
    Per example on small grids (IR-v2's A blocks at 75 px: 7 x 7) the flattened form was the slower one, 1.035x
    the step time, so under 256 pixels the einsum stays.
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


@jax.custom_vjp
def pointwise_heads(x: jax.Array, kernels: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """Several 1x1 stride-1 convolutions (HWIO kernels) of one NHWC input, as one matmul with their kernels side
    by side; returns each convolution's output.

    The branches of an Inception module that open with a 1x1 conv read the same input: one wide matmul reads it
    once, and the backward makes one input-gradient matmul (no sum of per-branch gradients) and one
    kernel-gradient matmul, whose channel-major copy of the input XLA makes once. The kernels are saved for the
    backward as they came in, concatenated again there (see `conv2d` on why a derived kernel must not be a
    residual inside the scan over blocks).
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


def input_gradient(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int],
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d input: the output gradient (dilated by the stride) convolved with the flipped kernel.

    Written out because JAX's own transpose gives XLA an IO-swapped kernel layout (`01oi`), which XLA:CPU runs
    on a generic path 3-10x slower inside while loops; here the kernel is transposed to HWIO explicitly.
    """
    if strides != (1, 1):
        return strided_input_gradient(dy, kernel, x_shape, strides, padding)
    kh, kw = kernel.shape[:2]
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    pads = []
    for (lo, hi), size, stride, n_in, n_out in zip(padding, (kh, kw), strides, x_shape[1:3], dy.shape[1:3],
                                                    strict=True):
        uncovered = n_in + lo + hi - size - stride * (n_out - 1)  # input rows/cols no output window reached
        pads.append((size - 1 - lo, size - 1 - hi + uncovered))
    return jax.lax.conv_general_dilated(dy, flipped, (1, 1), pads, lhs_dilation=strides,
                                        dimension_numbers=_DIMENSIONS)


def _phase(n_in: int, n_out: int, k: int, stride: int, lo: int, phase: int) -> tuple[slice, tuple[int, int], int]:
    """For the inputs at positions phase, phase + stride, ... of one dimension: the kernel taps that reach them
    (a slice), the padding of the output gradient that lines those taps up as a stride-1 correlation, and how
    many such inputs there are. Input r = stride * a + phase gets dy[o] * w[i] for o * stride + i - lo = r."""
    first = (phase + lo) % stride  # the taps i = first, first + stride, ... land on this phase
    taps = max(0, -(-(k - first) // stride))
    count = max(0, -(-(n_in - phase) // stride))
    shift = (phase + lo - first) // stride  # input a meets dy[a + shift - t] through tap first + stride * t
    pad_lo = taps - 1 - shift
    return slice(first, k, stride), (pad_lo, count + taps - 1 - n_out - pad_lo), count


def strided_input_gradient(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int],
                           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d input of a strided convolution, one stride-1 correlation per phase of the input grid.

    The textbook form (the output gradient dilated by the stride, then convolved) runs on XLA:CPU's generic
    convolution path and multiplies the dilation's zeros too: 3-4x slower at the stem's 3x3 stride-2 convs.
    Each phase (input rows r = phase mod stride, columns likewise) is reached by a fixed subset of the taps,
    so its gradient is a plain convolution of dy with that flipped sub-kernel; the phases are then interleaved.
    """
    n, height, width, cin = x_shape
    (sh, sw), (kh, kw) = strides, kernel.shape[:2]
    rows_max, cols_max = -(-height // sh), -(-width // sw)
    phases = []
    for ph in range(sh):
        row_taps, row_pad, rows = _phase(height, dy.shape[1], kh, sh, padding[0][0], ph)
        phase_row = []
        for pw in range(sw):
            col_taps, col_pad, cols = _phase(width, dy.shape[2], kw, sw, padding[1][0], pw)
            sub = kernel[row_taps, col_taps]
            if sub.shape[0] == 0 or sub.shape[1] == 0 or rows == 0 or cols == 0:
                grad = jnp.zeros((n, rows, cols, cin), dy.dtype)
            else:
                grad = _valid_correlation(dy, jnp.flip(sub, (0, 1)).swapaxes(2, 3), (row_pad, col_pad))
            phase_row.append(jnp.pad(grad, ((0, 0), (0, rows_max - rows), (0, cols_max - cols), (0, 0))))
        phases.append(jnp.stack(phase_row, axis=3))  # (n, rows_max, cols_max, sw, cin)
    interleaved = jnp.stack(phases, axis=2)  # (n, rows_max, sh, cols_max, sw, cin): row a * sh + ph, col b * sw + pw
    return interleaved.reshape(n, rows_max * sh, cols_max * sw, cin)[:, :height, :width]


def _valid_correlation(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]):
    """A stride-1 NHWC x HWIO convolution whose padding may be negative (a crop, done as a slice first)."""
    crop = [(max(-lo, 0), max(-hi, 0)) for lo, hi in padding]
    if any(any(c) for c in crop):
        x = x[:, crop[0][0]:x.shape[1] - crop[0][1], crop[1][0]:x.shape[2] - crop[1][1]]
    pads = [(max(lo, 0), max(hi, 0)) for lo, hi in padding]
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSIONS)


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
# stay unrolled: looped inside the scan they made the step 1.02-1.04x slower. XLA's step temporaries, IR-v2 / v4:
# 2247 -> 1740 / 2131 -> 1304 MiB at 299 px, batch 8; 566 -> 490 / 535 -> 459 MiB at 75 px, batch 32 (the step
# 0.99-1.01x the time, benchmarks/bench_step.py programs interleaved in one process, 2026-12-04).
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
    # parallelise it (stem convs: 1.7x faster), and cost extra for wider convs.
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

    On XLA:CPU's own convolution kernels (cpu_codegen "tuned") and outside loops it beats `kernel_gradient`:
    0.52x the time for the stem's 3x3 32 -> 64 at 147 x 147 (batch 8), 0.59x for a 3x3 256 -> 256 at 35 x 35,
    0.76x for the 80 -> 192 at 73 x 73; the step 0.981x (IR-v2, v4 at 299 px), 0.937x (IR-v2 at 75 px). Inside
    a while loop it is ~200x slower (a scan of ten 3x3 64 -> 96 at 35 x 35: 19.7 s against 89 ms), and with
    YNNPACK's convolutions 2.3x slower at the stem: hence `conv2d`'s two conditions.
    """
    transpose = jax.linear_transpose(
        lambda k: jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DIMENSIONS),
        jax.ShapeDtypeStruct(kernel_shape, x.dtype))
    return transpose(dy)[0]


def canonical_kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], strides: tuple[int, int],
                              padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d kernel of a stride-1 convolution as a convolution XLA:CPU runs on its fast path inside loops too.

    The kernel gradient is a correlation of the padded input with the output gradient over the examples: with
    the input transposed to (Cin, H, W, N) as the batch-major, feature-minor "images" and the output gradient to
    (h, w, N, Cout) as an HWIO "kernel", it is a plain NHWC x HWIO VALID convolution whose (Cin, kh, kw, Cout)
    output is the gradient, transposed. XLA makes the same convolution for `xla_kernel_gradient`, but there from
    dimension numbers it rewrites itself, which inside a while loop leaves a generic path ~100x slower (a scan of
    ten 3x3 32 -> 48 convs at 35 x 35, batch 8: 229 ms per block); written out like this it is not: 2.02 ms
    against 2.69 for the per-tap matmuls of `kernel_gradient`, 2.96 vs 4.60 for a 1x7 128 -> 160 at 17 x 17,
    3.94 vs 4.51 for a 7x1 160 -> 192 (IR-v2's A and B blocks at 299 px), and 0.34-1.13 vs 0.76-1.63 ms for the
    A and B blocks' convolutions at 75 px, batch 32. Outside loops XLA's own was as fast or faster, so it stays.
    The stages of blocks of IR-v2 at 299 px, forward and backward: A 0.95-0.98x, B 0.94-0.95x, C 1.02x the time.
    The train step, against the per-tap matmuls: v4 at 75 px 0.96x (programs interleaved in one process, 8
    rounds), 0.98-1.00x and IR-v2 at 75 px 0.97-1.00x (processes alternating), IR-v2 at 299 px 0.95-1.005x.
    """
    if strides != (1, 1):
        raise ValueError(f"canonical_kernel_gradient: stride-1 convolutions only, got strides={strides}")
    kh, kw = kernel_shape[:2]
    padded = pad_spatially(x, padding)
    images = padded.transpose(3, 1, 2, 0)  # (Cin, H, W, N)
    window = dy.transpose(1, 2, 0, 3)  # (h, w, N, Cout)
    grad = jax.lax.conv_general_dilated(images, window, (1, 1), ((0, 0), (0, 0)), dimension_numbers=_DIMENSIONS,
                                        preferred_element_type=jnp.float32)
    return grad[:, :kh, :kw].transpose(1, 2, 0, 3)  # (kh, kw, Cin, Cout)


# `_conv2d`'s kernel gradient for each `dk_mode` (chosen in `conv2d`).
KERNEL_GRADIENTS = {"taps": kernel_gradient, "xla": xla_kernel_gradient, "canonical": canonical_kernel_gradient}


def pad_spatially(x: jax.Array, padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """NHWC `x` with (lo, hi) zero rows and columns added; `x` itself when there are none."""
    return jnp.pad(x, ((0, 0), *padding, (0, 0))) if any(any(p) for p in padding) else x


def moving_tap_window(x: jax.Array, offset: jax.Array, strides: tuple[int, int], out_hw: tuple[int, int]):
    """`tap_window` for a tap (i, j) given as a traced offset: the pixels it spans, then every stride-th of them."""
    span = jax.lax.dynamic_slice(x, (0, offset[0], offset[1], 0), (x.shape[0], *tap_span(strides, out_hw), x.shape[3]))
    return span[:, ::strides[0], ::strides[1]]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *, outside_loops=False,
                         **kwargs):
    """`jax.lax.conv_general_dilated` for nnx.Conv, routing every plain NHWC convolution to `conv2d`."""
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSIONS)
    dims = (jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            if dimension_numbers is not None else None)
    plain = (feature_group_count == 1 and dims == nhwc and precision is None
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and kwargs.get("preferred_element_type") is None and kwargs.get("out_sharding") is None)
    if not plain:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return conv2d(lhs, rhs, strides, padding, outside_loops=outside_loops)


# nnx.Conv's hook for the units that never run inside a loop (one object, so that graphdefs compare equal).
conv_general_dilated_outside_loops = functools.partial(conv_general_dilated, outside_loops=True)


def reachable_taps(size: int, k: int, stride: int, lo: int, hi: int) -> tuple[int, int, int, int]:
    """(first tap, last tap, new lo, new hi): the kernel taps of one spatial dimension that meet an input pixel at
    some output position, and the padding that keeps the output size once the others are cut off."""
    n_out = (size + lo + hi - k) // stride + 1
    first = max(0, lo - (n_out - 1) * stride)  # output o reads input o * stride + tap - lo
    last = min(k - 1, lo + size - 1)
    return first, last, lo - first, hi - (k - 1 - last)


def crop_to_reachable_taps(kernel: jax.Array, in_hw: tuple[int, int], strides: tuple[int, int],
                           padding: tuple[tuple[int, int], tuple[int, int]]):
    """The kernel without the taps that only ever meet padding, and the padding that goes with it.

    On small feature maps SAME padding makes many taps multiply zeros only: a 1x3 or 3x1 conv on the 1x1 grid
    of the C blocks at 75 px (XLA rewrote those into a batch-as-feature convolution on a slow generic path, up to
    35 ms each per Inception-v4 step), a 1x7 conv on a 3-wide grid (5 of 7 taps reach it). The output is the same
    sum without the zero terms, and the cut taps' gradient is zero, as it is for the full kernel.
    """
    (first_h, first_w), (kept_h, kept_w), padding = reachable_cut(kernel.shape, in_hw, strides, padding)
    return kernel[first_h:first_h + kept_h, first_w:first_w + kept_w], padding


def reachable_cut(kernel_shape: tuple[int, ...], in_hw: tuple[int, int], strides: tuple[int, int],
                  padding: tuple[tuple[int, int], tuple[int, int]]):
    """crop_to_reachable_taps' cut as numbers: (first kept tap, kept taps) per spatial dimension, and the padding
    that goes with the kept taps (the padding as given when nothing is cut)."""
    (fh, lh, *pad_h), (fw, lw, *pad_w) = (
        reachable_taps(n, k, s, lo, hi)
        for n, k, s, (lo, hi) in zip(in_hw, kernel_shape[:2], strides, padding, strict=True))
    if (fh, lh, fw, lw) != (0, kernel_shape[0] - 1, 0, kernel_shape[1] - 1):
        padding = (tuple(pad_h), tuple(pad_w))
    return (fh, fw), (lh - fh + 1, lw - fw + 1), padding


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
                 padding: str = "SAME", outside_loops: bool = False, ctx: LayerContext, rngs: nnx.Rngs):
        hook = conv_general_dilated_outside_loops if outside_loops else conv_general_dilated
        self.conv = nnx.Conv(in_channels, out_channels, kernel, strides=stride, padding=padding, use_bias=False,
                             kernel_init=ctx.conv_init, dtype=ctx.dtype, param_dtype=ctx.param_dtype,
                             conv_general_dilated=hook, rngs=rngs)
        self.bn = BatchNorm(out_channels, momentum=ctx.bn_momentum, epsilon=ctx.bn_eps, use_scale=ctx.bn_scale,
                            group_size=ctx.bn_group_size, param_dtype=ctx.param_dtype, dtype=ctx.dtype)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.normalize(self.conv(x), train=train)

    def normalize(self, y: jax.Array, *, train: bool) -> jax.Array:
        """BatchNorm -> ReLU of a convolution output (computed here or, for fused 1x1 heads, by the caller)."""
        return self.bn(y, train=train, relu=True)

    def promoted(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The input and kernel in the dtype this unit's convolution computes in (what nnx.Conv does)."""
        x, kernel, _ = self.conv.promote_dtype((x, self.conv.kernel[...], None), dtype=self.conv.dtype)
        return x, kernel


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


@functools.lru_cache(maxsize=64)
def _same_pool_counts(height: int, width: int) -> np.ndarray:
    """How many real (non-padding) pixels each output of a 3x3 stride-1 SAME window covers."""
    rows = np.minimum(np.arange(height) + 1, height - 1) - np.maximum(np.arange(height) - 1, 0) + 1
    cols = np.minimum(np.arange(width) + 1, width - 1) - np.maximum(np.arange(width) - 1, 0) + 1
    return (rows[:, None] * cols[None, :]).astype(np.float32)[None, :, :, None]


def box_sum_3x3(x: jax.Array) -> jax.Array:
    """Sums over each pixel's 3x3 neighbourhood inside the grid (zero padding), as shifted adds: rows, then columns.

    XLA:CPU's reduce-window emitter ran a 3x3 window 4-6x slower than these fused adds (8x17x17x1024: 3.9 ms
    against 0.6 ms).
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
    return jnp.asarray(1.0 / _same_pool_counts(x.shape[1], x.shape[2]), x.dtype)


def _avg_pool_fwd(x):
    return avg_pool_3x3_same(x), None


def _avg_pool_bwd(_, g):
    return (box_sum_3x3(g * _inverse_counts(g)),)


avg_pool_3x3_same.defvjp(_avg_pool_fwd, _avg_pool_bwd)


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


# The ReLU that ends each scanned residual block, with its backward mask applied one block later. Autodiff of a plain
# ReLU stores its mask (a bool per element) for every block of the scan; but the ReLU's output is the next block's
# input, which the scan keeps anyway (its convolutions need it), and (out > 0) is the mask. So the block ends in
# `relu_unmasked` (forward ReLU, backward passes the gradient through) and the next block starts with
# `mask_gradient(x, 0)` (forward identity, backward masks by x > 0). The first block of a stage starts with
# `mask_gradient(x, -inf)` (nothing to mask) and the stage's output goes through `mask_gradient(y, 0)` for its last
# block. Used only in pairs (models/network.py): alone, `relu_unmasked`'s gradient is wrong.
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
