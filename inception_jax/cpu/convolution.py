"""The CPU backend's convolution: NHWC x HWIO with a hand-written backward that XLA:CPU runs fast, in and out of
loops. It replaces the stock convolution of every nnx.Conv (models/layers.py `conv_general_dilated`).

Which kernel gradient a convolution takes depends on two facts of the program being traced: whether it compiles for
XLA:CPU's own convolution kernels (`xla_kernel_gradients`, set by `CpuBackend.tracing`) and whether the convolution
belongs to a repeated block, the blocks the scan over a stage's blocks loops over (`inside_loops`, set by the CPU
backend's `run_branches`, blocks.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp

from inception_jax.cpu.kernel_gradients import (
    DIMENSIONS,
    canonical_kernel_gradient,
    kernel_gradient,
    pixel_contraction,
    xla_kernel_gradient,
)

# Set while a train step compiled for XLA:CPU's own convolution kernels is traced (codegen "tuned";
# CpuBackend.xla_kernel_gradients): the convolutions outside loops then take XLA's kernel gradient, and the
# stride-1 convolutions inside the repeated blocks `canonical_kernel_gradient`.
_XLA_KERNEL_GRADIENTS = contextvars.ContextVar("xla_kernel_gradients", default=False)
# Set while the branches of a repeated block are traced: the block may run inside the scan over blocks.
_INSIDE_LOOPS = contextvars.ContextVar("inside_loops", default=False)


@contextlib.contextmanager
def xla_kernel_gradients(enabled: bool):
    """While tracing under it, float32 convolutions outside loops take `xla_kernel_gradient`, the others
    (stride 1) `canonical_kernel_gradient`."""
    token = _XLA_KERNEL_GRADIENTS.set(enabled)
    try:
        yield
    finally:
        _XLA_KERNEL_GRADIENTS.reset(token)


@contextlib.contextmanager
def inside_loops(enabled: bool):
    """While tracing under it, the convolutions traced are taken to run inside a loop (`conv2d`'s
    `outside_loops=False`)."""
    token = _INSIDE_LOOPS.set(enabled)
    try:
        yield
    finally:
        _INSIDE_LOOPS.reset(token)


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]], *, outside_loops: bool = False) -> jax.Array:
    """NHWC x HWIO convolution (explicit padding) with the backward of `_conv2d`. `outside_loops`: this
    convolution is never inside a loop (the stem, the reductions, the aux head: not the repeated blocks), so under
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
    stem's 3x3 VALID convs: slower than matmuls) and far slower inside a while loop (the backward of a scan over
    stacked blocks; docs/performance.md §3.1). Here the kernel gradient is kh*kw matmuls of the (strided) shifted
    input windows with the output gradient (`dk_mode` "taps"), and the input gradient a plain HWIO convolution
    with the flipped kernel (benchmarks/model_compile.py, benchmarks/profile_step.py). Compiled for XLA:CPU's own
    convolution kernels, the kernel gradient is XLA's outside loops ("xla") and, stride 1, a convolution written
    out in a form XLA keeps on its fast path inside loops ("canonical"; see `conv2d`). Taps that only meet
    padding are cut off first, and what is left of a 1x1 stride-1 convolution is a matmul.

    The backward keeps the kernel exactly as it came in, cut and reshaped again there: inside the scan over
    stacked blocks JAX then passes the stacked kernels to the backward as they are, where a cut or reshaped
    kernel would be a residual of its own, copied per block into a stacked buffer, which cost memory and time
    (docs/performance.md §3.1).
    """
    kept, pads = crop_to_reachable_taps(kernel, x.shape[1:3], strides, padding)
    if _is_matmul(kept, strides, pads):
        return jnp.einsum("bhwc,cd->bhwd", x, kept[0, 0])
    return jax.lax.conv_general_dilated(x, kept, strides, pads, dimension_numbers=DIMENSIONS)


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


def input_gradient(dy: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], strides: tuple[int, int],
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """d loss / d input: the output gradient (dilated by the stride) convolved with the flipped kernel.

    Written out because JAX's own transpose gives XLA an IO-swapped kernel layout (`01oi`), which XLA:CPU runs
    on a generic path, far slower inside while loops (docs/performance.md §3.1); here the kernel is transposed to
    HWIO explicitly.
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
                                        dimension_numbers=DIMENSIONS)


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
    convolution path and multiplies the dilation's zeros too: several times slower at the stem's 3x3 stride-2
    convs (docs/performance.md §3.1).
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
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=DIMENSIONS)


# `_conv2d`'s kernel gradient for each `dk_mode` (chosen in `conv2d`).
KERNEL_GRADIENTS = {"taps": kernel_gradient, "xla": xla_kernel_gradient, "canonical": canonical_kernel_gradient}


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *,
                         outside_loops: bool | None = None, **kwargs):
    """`jax.lax.conv_general_dilated` as nnx.Conv calls it, every plain NHWC convolution routed to `conv2d`.
    `outside_loops` None: outside loops unless traced `inside_loops`."""
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMENSIONS)
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
    if outside_loops is None:
        outside_loops = not _INSIDE_LOOPS.get()
    return conv2d(lhs, rhs, strides, padding, outside_loops=outside_loops)


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
    of the C blocks at 75 px (XLA rewrote those into a batch-as-feature convolution on a slow generic path:
    docs/performance.md §6.3), a 1x7 conv on a 3-wide grid (5 of 7 taps reach it). The output is the same
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

