"""The CPU backend's layers compute exactly what the models' stock layers compute: its convolution XLA's convolution
and both gradients, for every stride, padding and kernel shape the networks use (the backward is hand-written for
XLA:CPU, inception_jax/cpu/convolution.py); its poolings the stock poolings and XLA's gradients of them; its fused
1x1 heads the separate convolutions; its deferred ReLU mask the ReLU's gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception_jax.cpu.blocks import mask_gradient, pointwise_heads, relu_unmasked
from inception_jax.cpu.convolution import conv_general_dilated, inside_loops, reachable_taps, xla_kernel_gradients
from inception_jax.cpu.kernel_gradients import UNROLLED_WINDOW_MAX_BYTES, canonical_kernel_gradient, kernel_gradient
from inception_jax.cpu.pooling import avg_pool_3x3_same, max_pool_3x3_s2
from inception_jax.models import layers

conv_outside_loops = functools.partial(conv_general_dilated, outside_loops=True)
conv_inside_loops = functools.partial(conv_general_dilated, outside_loops=False)

CASES = [  # (input NHWC, kernel HWIO, stride, padding): stem, factorised, reduction and 1x1 convolutions
    ((2, 15, 15, 3), (3, 3, 3, 8), 2, "VALID"),
    ((2, 13, 13, 8), (3, 3, 8, 8), 1, "VALID"),
    ((2, 9, 9, 8), (3, 3, 8, 12), 1, "SAME"),
    ((2, 9, 9, 16), (1, 7, 16, 12), 1, "SAME"),
    ((2, 9, 9, 16), (7, 1, 16, 12), 1, "SAME"),
    ((2, 9, 9, 16), (1, 1, 16, 24), 1, "SAME"),
    ((2, 11, 11, 16), (3, 3, 16, 24), 2, "VALID"),
    ((2, 6, 6, 96), (3, 3, 96, 128), 1, "SAME"),  # cin * cout above the per-example threshold
    ((2, 17, 17, 8), (3, 3, 8, 8), 1, "SAME"),  # 256 pixels or more per example: the flattened per-example dot
    ((2, 8, 8, 4), (2, 2, 4, 4), 1, "SAME"),  # an even kernel: padding not symmetric
    ((2, 9, 9, 16), (1, 1, 16, 24), 1, ((0, 0), (0, 0))),  # explicit padding pairs: still a matmul
    ((2, 9, 9, 8), (3, 3, 8, 8), 2, ((1, 0), (2, 1))),  # explicit, asymmetric, strided
    # small grids, where SAME padding leaves taps that meet no pixel (they are cut off, cpu/convolution.py)
    ((2, 1, 1, 16), (1, 3, 16, 12), 1, "SAME"),  # the C blocks' 1x3 / 3x1 convs on a 1x1 grid: a matmul
    ((2, 1, 1, 16), (3, 1, 16, 12), 1, "SAME"),
    ((2, 3, 3, 16), (1, 7, 16, 12), 1, "SAME"),  # a 1x7 conv on a 3-wide grid: 5 of 7 taps remain
    ((2, 2, 2, 8), (3, 3, 8, 8), 1, "SAME"),
    ((2, 1, 1, 8), (3, 3, 8, 8), 1, "SAME"),
    ((2, 3, 3, 8), (3, 3, 8, 8), 2, "SAME"),  # strided: the padded last row is never read
    ((2, 4, 4, 8), (3, 3, 8, 8), 2, ((2, 3), (1, 0))),  # explicit padding wider than the reach of the taps
    # strided input gradients, phase by phase: a phase no tap reaches, even sizes, stride 3, a non-square input
    ((2, 8, 8, 4), (1, 1, 4, 6), 2, "VALID"),
    ((2, 10, 10, 4), (3, 3, 4, 6), 2, "SAME"),
    ((2, 10, 9, 4), (3, 3, 4, 6), 3, "VALID"),
    ((2, 12, 12, 4), (2, 2, 4, 6), 2, "VALID"),
]
DN = ("NHWC", "HWIO", "NHWC")


def _reference(x, k, stride, padding):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), padding, dimension_numbers=DN)


def _ours(x, k, stride, padding):
    return conv_inside_loops(x, k, (stride, stride), padding, dimension_numbers=DN)


@pytest.mark.parametrize("x_shape,k_shape,stride,padding", CASES)
def test_outputs_and_both_gradients_equal_xla_convolution(x_shape, k_shape, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    y_ref = _reference(x, k, stride, padding)
    weights = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)  # a loss whose gradient is not uniform

    def loss(conv):
        return lambda x_, k_: jnp.sum(conv(x_, k_, stride, padding) * weights)

    np.testing.assert_allclose(_ours(x, k, stride, padding), y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.grad(loss(_ours), (0, 1))(x, k), jax.grad(loss(_reference), (0, 1))(x, k),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def _conv_count(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated[")


@pytest.mark.parametrize("x_shape,k_shape,stride,padding", [c for c in CASES if c[1][:2] != (1, 1)])
def test_a_tuned_step_takes_xlas_kernel_gradient_outside_loops_and_the_canonical_one_inside(x_shape, k_shape, stride,
                                                                                             padding):
    """Under `xla_kernel_gradients` (a train step compiled for XLA:CPU's own convolution kernels), a convolution
    outside loops takes XLA's kernel gradient and one that may run in the scan over blocks, if stride 1,
    `canonical_kernel_gradient`: each one convolution instead of per-tap matmuls. A strided one in a loop, and
    any one without the flag, keeps the per-tap matmuls. All get XLA's gradients."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    weights = jnp.asarray(rng.normal(size=_reference(x, k, stride, padding).shape), jnp.float32)

    def grads(conv):
        return jax.grad(lambda x_, k_: jnp.sum(conv(x_, k_, (stride, stride), padding, dimension_numbers=DN)
                                               * weights), (0, 1))

    per_tap = _conv_count(grads(conv_outside_loops), x, k)
    assert _conv_count(grads(conv_inside_loops), x, k) == per_tap
    one_conv = 1 if per_tap else 0  # cut down to a matmul (1x3 on a 1x1 grid): nothing to swap
    with xla_kernel_gradients(True):
        assert _conv_count(grads(conv_outside_loops), x, k) == per_tap + one_conv
        assert _conv_count(grads(conv_inside_loops), x, k) == per_tap + (one_conv if stride == 1 else 0)
        got = [grads(conv)(x, k) for conv in (conv_outside_loops, conv_inside_loops)]
    want = grads(jax.lax.conv_general_dilated)(x, k)
    for ours in got:
        for g, w in zip(ours, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))


@pytest.mark.parametrize("x_shape,k_shape,stride,padding", [c for c in CASES if c[2] == 1])
def test_the_canonical_kernel_gradient_equals_xlas(x_shape, k_shape, stride, padding):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k_zero = jnp.zeros(k_shape, jnp.float32)
    pads = padding if not isinstance(padding, str) else jax.lax.padtype_to_pads(x_shape[1:3], k_shape[:2], (1, 1),
                                                                                 padding)
    dy = jnp.asarray(rng.normal(size=_reference(x, k_zero, 1, padding).shape), jnp.float32)
    want = jax.vjp(lambda k_: _reference(x, k_, 1, padding), k_zero)[1](dy)[0]
    got = canonical_kernel_gradient(x, dy, k_shape, (1, 1), tuple(map(tuple, pads)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
    with pytest.raises(ValueError, match="strides=\\(2, 2\\)"):
        canonical_kernel_gradient(x, dy, k_shape, (2, 2), tuple(map(tuple, pads)))


def test_gradients_inside_a_scan_equal_xla_convolution():
    """The scanned layout's backward (a while loop) gets the same kernel gradients as XLA's own convolution."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 8)), jnp.float32)
    kernels = jnp.asarray(rng.normal(size=(3, 3, 3, 8, 8)) * 0.2, jnp.float32)

    def loss(conv):
        def body(h, k):
            return jnp.tanh(conv(h, k, 1, "SAME")), None
        return lambda ks: jnp.sum(jax.lax.scan(body, x, ks)[0] ** 2)

    want = jax.grad(loss(_reference))(kernels)
    np.testing.assert_allclose(jax.grad(loss(_ours))(kernels), want, rtol=1e-4, atol=1e-5)
    with xla_kernel_gradients(True):  # the canonical kernel gradient in the loop
        np.testing.assert_allclose(jax.jit(jax.grad(loss(_ours)))(kernels), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k_shape,hw,kept_taps", [((1, 1, 128, 128), 3, 1), ((1, 7, 128, 128), 3, 5),
                                                   ((3, 3, 128, 128), 1, 1)])
def test_a_scan_hands_its_stacked_kernels_to_the_backward_without_copying_them(k_shape, hw, kept_taps):
    """A 1x1 conv's matmul kernel, or a kernel cut to its reachable taps, is a reshaped or sliced kernel: saved
    for the backward as such, the scan would stack a copy of every block's (IR-v2 at 75 px: 137 MiB of a 703 MiB
    step). Saved as it came in, the kernels pass through, and the step's temporaries hold activations only."""
    x = jnp.ones((1, hw, hw, k_shape[2]))
    kernels = jnp.full((8, *k_shape), 0.01, jnp.float32)

    def loss(ks):
        def body(h, k):
            return jnp.tanh(_ours(h, k, 1, "SAME")), None
        return jnp.sum(jax.lax.scan(body, x, ks)[0] ** 2)

    temps = jax.jit(jax.grad(loss)).lower(kernels).compile().memory_analysis().temp_size_in_bytes
    kept_kernels_bytes = kernels.nbytes * kept_taps // (k_shape[0] * k_shape[1])
    assert temps < kept_kernels_bytes / 2, (temps, kept_kernels_bytes)


@pytest.mark.parametrize("x_shape,k_shape,stride,padding", [c for c in CASES if c[1][:2] != (1, 1)])
def test_kernel_gradient_in_a_loop_over_the_taps_equals_xla_convolution(x_shape, k_shape, stride, padding):
    """Above a size the taps' windows are copied one at a time in a loop (what the stem's convs at 299 px run);
    that loop computes the same gradient, strided and padded alike."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    y, vjp = jax.vjp(lambda k_: _reference(x, k_, stride, padding), k)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    pads = (jax.lax.padtype_to_pads(x_shape[1:3], k_shape[:2], (stride, stride), padding)
            if isinstance(padding, str) else padding)
    looped = kernel_gradient(x, dy, k_shape, (stride, stride), tuple(map(tuple, pads)), unrolled_max_bytes=0)
    want = vjp(dy)[0]
    np.testing.assert_allclose(looped, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_kernel_gradient_loop_with_the_batch_sharded_over_devices_equals_xla_convolution():
    """Data parallelism shards the batch that each tap's matmul contracts: the loop's partial sums still add up."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(jax.device_count(), 9, 9, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 8, 12)), jnp.float32)
    y, vjp = jax.vjp(lambda k_: _reference(x, k_, 2, "VALID"), k)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    looped = jax.jit(lambda x_, dy_: kernel_gradient(x_, dy_, k.shape, (2, 2), ((0, 0), (0, 0)),
                                                     unrolled_max_bytes=0))(jax.device_put(x, batch),
                                                                            jax.device_put(dy, batch))
    want = vjp(dy)[0]
    np.testing.assert_allclose(looped, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_a_large_kernel_gradient_holds_one_tap_window_at_a_time():
    """Unrolled, XLA:CPU copies every tap's input window before the matmuls, all alive at once (the stem's 3x3
    convs at 299 px: 9 x 21 MiB each); the loop over the taps keeps the step's temporaries near one window."""
    x = jax.ShapeDtypeStruct((8, 74, 74, 32), jnp.float32)
    dy = jax.ShapeDtypeStruct((8, 72, 72, 32), jnp.float32)
    window_bytes = 8 * 72 * 72 * 32 * 4

    def temps(max_bytes):
        grad = jax.jit(lambda x_, dy_: kernel_gradient(x_, dy_, (3, 3, 32, 32), (1, 1), ((0, 0), (0, 0)),
                                                       unrolled_max_bytes=max_bytes))
        return grad.lower(x, dy).compile().memory_analysis().temp_size_in_bytes

    assert window_bytes > UNROLLED_WINDOW_MAX_BYTES  # so the default loops here
    looped, unrolled = temps(UNROLLED_WINDOW_MAX_BYTES), temps(1 << 62)
    assert looped < 1.5 * window_bytes and unrolled > 6 * window_bytes, (looped, unrolled, window_bytes)


def test_a_convolution_is_outside_loops_unless_traced_inside_a_repeated_block():
    """The hook nnx.Conv calls takes `outside_loops` from the trace: inside `inside_loops` (set while a repeated
    block's branches are traced) a tuned program's stride-1 kernel gradient is the canonical one, elsewhere XLA's."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 8, 12)), jnp.float32)

    def jaxpr(conv):
        return str(jax.make_jaxpr(jax.grad(lambda k_: jnp.sum(conv(x, k_, (1, 1), "SAME", dimension_numbers=DN))))(k))

    with xla_kernel_gradients(True):
        outside, inside = jaxpr(conv_outside_loops), jaxpr(conv_inside_loops)
        assert outside != inside
        assert jaxpr(conv_general_dilated) == outside
        with inside_loops(True):
            assert jaxpr(conv_general_dilated) == inside


def test_grouped_or_dilated_convolutions_fall_back_to_xla():
    x = jnp.ones((1, 5, 5, 4))
    k = jnp.ones((3, 3, 2, 4))
    y = conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)
    assert y.shape == (1, 5, 5, 4)
    np.testing.assert_allclose(y, jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN,
                                                               feature_group_count=2))


xla_max_pool = layers.max_pool_3x3_s2.stock  # the models' own: XLA's reduce_window and select-and-scatter


@pytest.mark.parametrize("side", [7, 8, 9, 16, 35])
@pytest.mark.parametrize("ties", ["continuous", "relu zeros", "small integers"])
def test_max_pool_gradient_equals_xlas_first_maximum_rule(side, ties):
    rng = np.random.default_rng(side)
    x = rng.normal(size=(2, side, side + 2, 3)).astype(np.float32)
    if ties == "relu zeros":  # whole windows of zeros, as after a ReLU: the first zero takes the gradient
        x = np.maximum(x - 1.0, 0.0)
    elif ties == "small integers":
        x = np.round(x).astype(np.float32)
    g = rng.normal(size=xla_max_pool(x).shape).astype(np.float32)
    ours, ours_vjp = jax.vjp(max_pool_3x3_s2, jnp.asarray(x))
    theirs, their_vjp = jax.vjp(xla_max_pool, jnp.asarray(x))
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours_vjp(jnp.asarray(g))[0], their_vjp(jnp.asarray(g))[0])


@pytest.mark.parametrize("size,k,stride,lo,hi,expected", [
    (1, 3, 1, 1, 1, (1, 1, 0, 0)),  # only the centre tap meets the single pixel
    (3, 7, 1, 3, 3, (1, 5, 2, 2)),
    (9, 7, 1, 3, 3, (0, 6, 3, 3)),  # a large grid: every tap is kept
    (3, 3, 2, 1, 1, (0, 2, 1, 1)),
    (4, 3, 2, 2, 3, (0, 2, 2, 3)),
    (1, 3, 1, 0, 2, (0, 0, 0, 0)),
])
def test_reachable_taps_keep_exactly_the_taps_that_meet_a_pixel_and_the_output_size(size, k, stride, lo, hi,
                                                                                       expected):
    first, last, new_lo, new_hi = reachable_taps(size, k, stride, lo, hi)
    assert (first, last, new_lo, new_hi) == expected
    n_out = (size + lo + hi - k) // stride + 1
    assert (size + new_lo + new_hi - (last - first + 1)) // stride + 1 == n_out
    met = {tap for o in range(n_out) for tap in range(k) if 0 <= o * stride + tap - lo < size}
    assert met == set(range(first, last + 1))


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (2, 2, 5, 4), (2, 7, 7, 8), (1, 17, 17, 16)])
def test_average_pool_and_its_gradient_equal_tf_semantics_reduce_window(shape):
    """AvgPool(3, 1, SAME) as TF computes it (padding excluded from the divisor), and XLA's gradient of that: the
    CPU backend's box sums and the models' stock pool alike."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    weights = jnp.asarray(rng.normal(size=shape), jnp.float32)

    def reference(x_):
        total = jax.lax.reduce_window(x_, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
        count = jax.lax.reduce_window(jnp.ones_like(x_), 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
        return total / count

    for pool in (avg_pool_3x3_same, layers.avg_pool_3x3_same.stock):
        np.testing.assert_allclose(pool(x), reference(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jax.grad(lambda x_, pool=pool: jnp.sum(pool(x_) * weights))(x),
                                   jax.grad(lambda x_: jnp.sum(reference(x_) * weights))(x), rtol=1e-6, atol=1e-6)


def test_fused_pointwise_heads_compute_each_1x1_convolution_and_its_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 16)), jnp.float32)
    kernels = tuple(jnp.asarray(rng.normal(size=(1, 1, 16, c)), jnp.float32) for c in (8, 4, 12))
    weights = [jnp.asarray(rng.normal(size=(2, 5, 5, k.shape[-1])), jnp.float32) for k in kernels]

    def loss(heads):
        return lambda x_, ks: sum(jnp.sum(y * w) for y, w in zip(heads(x_, ks), weights, strict=True))

    def separately(x_, ks):
        return tuple(_reference(x_, k, 1, "SAME") for k in ks)

    for got, want in zip(pointwise_heads(x, kernels), separately(x, kernels), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got, want = jax.grad(loss(pointwise_heads), (0, 1))(x, kernels), jax.grad(loss(separately), (0, 1))(x, kernels)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))


def test_a_relu_whose_mask_is_applied_downstream_has_the_relus_gradient():
    """relu_unmasked followed by mask_gradient(., 0) is jax.nn.relu, gradient included (zero at z = 0, as
    jax.nn.relu's); mask_gradient with floor -inf passes every gradient."""
    z = jnp.array([-2.0, -0.5, 0.0, 0.0, 0.5, 3.0])
    w = jnp.arange(1.0, 7.0)

    def deferred(z):
        return jnp.sum(mask_gradient(relu_unmasked(z), jnp.float32(0)) * w)

    np.testing.assert_array_equal(relu_unmasked(z), jax.nn.relu(z))
    np.testing.assert_array_equal(jax.grad(deferred)(z), jax.grad(lambda z: jnp.sum(jax.nn.relu(z) * w))(z))
    np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(relu_unmasked(z) * w))(z), w)  # alone: unmasked
    np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(mask_gradient(z, jnp.float32(-jnp.inf)) * w))(z), w)
