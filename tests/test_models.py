"""The model zoo, as a specification: docs/architecture.md's parameter counts and shapes, the ablation knobs, the
scanned/unrolled layouts, the diagnostics, every refusal, and the same network computed by the CPU backend's
kernels."""

import contextvars

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from inception_jax.cpu import convolution
from inception_jax.cpu.backend import CpuBackend
from inception_jax.cpu.blocks import fused_openings
from inception_jax.models import (
    MODEL_NAMES,
    convert_layout,
    count_params,
    create_model,
    layers,
    model_options,
    spatial_sizes,
)
from inception_jax.models.blocks import ResidualBlock
from inception_jax.models.ops import STOCK
from inception_jax.models.stacking import to_scanned, to_unrolled
from tests.marks import exhaustive
from tests.numerics import assert_trees_close_to_scale, relative_error

TINY = dict(width_multiplier=0.125, block_counts=(2, 2, 2), num_classes=10)

# docs/architecture.md §7.1 (gamma + beta = timm convention = bn_scale=True; beta only = slim = bn_scale=False).
PARAM_COUNTS = {
    "inception_v4": (42_679_816, 42_648_232),
    "inception_resnet_v1": (22_756_328, 22_742_808),
    "inception_resnet_v2_paper": (32_433_928, 32_417_496),
    "inception_resnet_v2": (55_843_464, 55_813_192),
}
# The same networks' BN moving statistics: 2 per BN channel (Keras "total params" adds them, §7.1).
BN_CHANNELS = {"inception_v4": 31_584, "inception_resnet_v1": 13_520, "inception_resnet_v2_paper": 16_432,
               "inception_resnet_v2": 30_272}

# Stage outputs (H, W, C) at 299 px: §2.1, §3.1, §4.1.2, §4.2.8.
STAGES_299 = {
    "inception_v4": {"stem": (35, 35, 384), "blocks_a": (35, 35, 384), "reduction_a": (17, 17, 1024),
                     "blocks_b": (17, 17, 1024), "reduction_b": (8, 8, 1536), "blocks_c": (8, 8, 1536)},
    "inception_resnet_v1": {"stem": (35, 35, 256), "blocks_a": (35, 35, 256), "reduction_a": (17, 17, 896),
                            "blocks_b": (17, 17, 896), "reduction_b": (8, 8, 1792), "blocks_c": (8, 8, 1792)},
    "inception_resnet_v2_paper": {"stem": (35, 35, 384), "blocks_a": (35, 35, 384), "reduction_a": (17, 17, 1152),
                                  "blocks_b": (17, 17, 1152), "reduction_b": (8, 8, 2144),
                                  "blocks_c": (8, 8, 2144)},
    "inception_resnet_v2": {"stem": (35, 35, 320), "blocks_a": (35, 35, 320), "reduction_a": (17, 17, 1088),
                            "blocks_b": (17, 17, 1088), "reduction_b": (8, 8, 2080), "blocks_c": (8, 8, 2080),
                            "final_conv": (8, 8, 1536)},
}
POOLED = {"inception_v4": 1536, "inception_resnet_v1": 1792, "inception_resnet_v2_paper": 2144,
          "inception_resnet_v2": 1536}


def abstract_forward(model, x_shape, **kw):
    """Output shapes of `model.forward` without computing anything."""
    graphdef, state = nnx.split(model)

    def run(state, x):
        return nnx.merge(graphdef, state, copy=True).forward(x, **kw)

    return jax.eval_shape(run, state, jax.ShapeDtypeStruct(x_shape, jnp.float32))


# ------------------------------------------------------------------------------------------ reference numbers
@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("bn_scale", [True, False])
def test_parameter_count_matches_reference(name, bn_scale):
    expected = PARAM_COUNTS[name][0 if bn_scale else 1]
    assert count_params(model_options(name, bn_scale=bn_scale)) == expected


def test_batch_statistics_count_matches_keras_convention():
    opts = model_options("inception_resnet_v2")
    # Keras reports 55,873,736 = beta-only params + moving mean and variance (§7.1, §4.3 row 18).
    assert count_params(opts) + count_params(opts, collection=nnx.BatchStat) == 55_873_736
    for name, channels in BN_CHANNELS.items():
        assert count_params(model_options(name), collection=nnx.BatchStat) == 2 * channels


def test_aux_head_parameter_count_matches_slim():
    # §4.2.8: the slim aux head has 3,368,425 parameters (gamma+beta) with 1001 classes; §2.8: 3,360,233 for v4.
    for name, aux in (("inception_resnet_v2", 3_368_425), ("inception_v4", 3_360_233)):
        with_aux = count_params(model_options(name, num_classes=1001, bn_scale=True, aux_head=True))
        without = count_params(model_options(name, num_classes=1001, bn_scale=True))
        assert with_aux - without == aux


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stage_shapes_at_299(name):
    model = nnx.eval_shape(lambda: create_model(name))
    out = abstract_forward(model, (2, 299, 299, 3), stages=True)
    for stage, hwc in STAGES_299[name].items():
        assert out.stages[stage].shape == (2, *hwc), stage
    assert out.stages["pooled"].shape == (2, POOLED[name])
    assert out.logits.shape == (2, 1000)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stage_shapes_at_75_and_non_square(name):
    model = nnx.eval_shape(lambda: create_model(name))
    out = abstract_forward(model, (1, 75, 75, 3), stages=True)
    assert out.stages["stem"].shape[1:3] == (7, 7)  # 75 -> 37, 35, 17, 15, 7 (§1.3)
    assert out.stages["reduction_a"].shape[1:3] == (3, 3)
    assert out.stages["blocks_c"].shape[1:3] == (1, 1)
    out = abstract_forward(model, (1, 299, 331, 3), stages=True)
    assert out.stages["blocks_c"].shape[1:3] == (8, 9)


def test_spatial_arithmetic_matches_the_spec_table():
    assert spatial_sizes(299) == (149, 147, 73, 71, 35, 17, 8)
    assert spatial_sizes(75) == (37, 35, 17, 15, 7, 3, 1)
    assert spatial_sizes(107)[4:] == (11, 5, 2)


# ------------------------------------------------------------------------------------------ forward behaviour
def block_input(c, seed=0):
    return jax.nn.relu(jax.random.normal(jax.random.key(seed), (2, 5, 5, c)))


def make_block(residual=True, scale=0.3, mode="constant", plain_scale=1.0):
    model = create_model("inception_resnet_v1", width_multiplier=0.125, block_counts=(1, 1, 1),
                         use_residual=residual, residual_scale=scale, residual_scale_mode=mode,
                         plain_scale=plain_scale, scan_blocks=False)
    return model.blocks_a_0


def up_projection_by_hand(block, x):
    """UP(concat(branches)) written out with lax: the expectation the block is compared against."""
    m = block.mixed(x, train=False)
    k, b = block.up.kernel[...], block.up.bias[...]
    return jax.lax.conv_general_dilated(m, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


# In make test the fused heads are checked inside whole networks (test_stock_and_cpu_kernels_compute_the_same_network).
@pytest.mark.parametrize("name", [exhaustive("inception_v4"), exhaustive("inception_resnet_v1"),
                                  exhaustive("inception_resnet_v2")])
def test_blocks_with_fused_1x1_heads_equal_the_blocks_as_written(name):
    """The CPU backend runs the repeated blocks' opening 1x1 convs as one matmul, and v4's pool branch as 1x1 conv
    -> pool (cpu/blocks.py: both linear, so they commute); outputs, input gradient and every parameter gradient
    match the stock blocks, the layers in the order docs/architecture.md writes them."""
    model = create_model(name, width_multiplier=0.125, block_counts=(1, 1, 1), scan_blocks=False)
    for block in (model.blocks_a_0, model.blocks_b_0, model.blocks_c_0):
        in_channels = block.b0_0.conv.in_features
        x = block_input(in_channels, seed=in_channels)
        assert len(fused_openings(block, x, train=False)) >= 2
        graphdef, params, rest = nnx.split(block, nnx.Param, ...)

        def loss(p, x_, kernels, graphdef=graphdef, rest=rest):
            with kernels.tracing():
                y, _ = nnx.merge(graphdef, p, rest)(x_, train=False)
            return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y

        (_, y_fused), g_fused = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, CpuBackend())
        (_, y_written), g_written = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, STOCK)
        np.testing.assert_allclose(y_fused, y_written, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_written), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_only_convolutions_outside_the_repeated_blocks_may_take_xlas_kernel_gradient(monkeypatch, name):
    """XLA:CPU runs a convolution's own kernel gradient ~200x slower inside a while loop (cpu/convolution.py), so
    under the CPU kernels the repeated blocks, which the scan over blocks loops over, never ask for it (here
    unrolled, so every unit is seen); the stem, the reductions and the aux head do. Every nnx.Conv has the one stock
    hook."""
    model = create_model(name, width_multiplier=0.125, block_counts=(1, 1, 1), scan_blocks=False, aux_head=True,
                         image_size=107)
    hooks = {module.conv_general_dilated for _, module in nnx.iter_graph(model) if isinstance(module, nnx.Conv)}
    assert hooks == {layers.conv_general_dilated}
    unit = contextvars.ContextVar("unit", default=None)
    seen: dict[int, set[bool]] = {}
    call_unit, conv2d = layers.ConvBN.__call__, convolution.conv2d

    def calling_unit(self, x, *, train):
        token = unit.set(id(self))
        try:
            return call_unit(self, x, train=train)
        finally:
            unit.reset(token)

    def recording_conv2d(x, kernel, strides, padding, *, outside_loops):
        seen.setdefault(unit.get(), set()).add(outside_loops)
        return conv2d(x, kernel, strides, padding, outside_loops=outside_loops)

    monkeypatch.setattr(layers.ConvBN, "__call__", calling_unit)
    monkeypatch.setattr(convolution, "conv2d", recording_conv2d)
    where: dict[int | None, str] = {None: "blocks"}  # not in a CBR unit: a residual block's up-projection
    graphdef, state = nnx.split(model)

    def forward(state, x):
        traced = nnx.merge(graphdef, state)
        where.update({id(m): "blocks" if str(path[0]).startswith("blocks_") else "elsewhere"
                      for path, m in nnx.iter_graph(traced) if isinstance(m, layers.ConvBN)})
        with CpuBackend().tracing():
            return traced.forward(x, train=True, dropout_key=jax.random.key(0)).logits

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((2, 107, 107, 3), jnp.float32))
    flags = {"blocks": set(), "elsewhere": set()}
    for unit_id, outside in seen.items():
        flags[where[unit_id]] |= outside
    assert flags == {"blocks": {False}, "elsewhere": {True}}


@pytest.mark.parametrize("scale", [0.1, 0.3, 1.0])
def test_residual_block_is_relu_of_shortcut_plus_scaled_branch(scale):
    block = make_block(scale=scale)
    x = block_input(block.up.out_features)
    y, _ = block(x, train=False)
    np.testing.assert_allclose(y, jax.nn.relu(x + scale * up_projection_by_hand(block, x)), atol=1e-5)


def test_plain_block_drops_the_shortcut_and_keeps_the_parameters():
    residual, plain = make_block(residual=True), make_block(residual=False, plain_scale=0.5)
    shapes = lambda b: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(b, nnx.Param)))  # noqa: E731
    assert shapes(residual) == shapes(plain)
    x = block_input(plain.up.out_features)
    y, _ = plain(x, train=False)
    np.testing.assert_allclose(y, jax.nn.relu(0.5 * up_projection_by_hand(plain, x)), atol=1e-5)
    # Same weights, different function: the shortcut really is gone.
    nnx.update(plain, nnx.state(residual, nnx.Param))
    assert not np.allclose(plain(x, train=False)[0], residual(x, train=False)[0])


def test_constant_scale_is_not_a_parameter_and_learnable_scales_get_gradients():
    constant = make_block(mode="constant")
    assert "residual_scale" not in nnx.to_pure_dict(nnx.state(constant, nnx.Param))
    for mode, shape in (("learnable", ()), ("learnable_channel", (32,))):
        block = make_block(mode=mode, scale=0.2)
        assert block.residual_scale[...].shape == shape
        np.testing.assert_allclose(block.residual_scale[...], 0.2)
        graphdef, params, rest = nnx.split(block, nnx.Param, ...)
        x = block_input(32)

        def loss(p, graphdef=graphdef, rest=rest, x=x):
            return jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(x, train=False)[0] ** 2)

        grad = jax.grad(loss)(params)
        assert float(jnp.abs(grad["residual_scale"][...]).sum()) > 0


def test_final_released_block_is_linear_with_scale_one():
    model = create_model("inception_resnet_v2", **TINY)
    last = model.blocks_c_1
    assert (last.activation, float(last.residual_scale[...])) == (False, 1.0)
    assert model.blocks_c.activation and np.allclose(model.blocks_c.residual_scale[...], 0.2)
    paper = create_model("inception_resnet_v2_paper", **TINY)
    assert not hasattr(paper, "blocks_c_1") and paper.blocks_c.activation


# ------------------------------------------------------------------------------------------ layouts
def eval_and_train_forward(model, x):
    """One compiled program: the eval-mode output, then the train-mode output and updated batch statistics."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state, copy=True)
        eval_out = m.forward(x, diagnostics=True)
        train_out = m.forward(x, train=True, dropout_key=jax.random.key(1), diagnostics=True)
        return eval_out, train_out, nnx.state(m, nnx.BatchStat)

    return run(state, x)


@pytest.mark.parametrize("name", [n if n == "inception_resnet_v2" else exhaustive(n) for n in MODEL_NAMES])
def test_scanned_and_unrolled_layouts_agree(name):
    scanned = create_model(name, **TINY, bn_momentum=0.9)
    unrolled = create_model(name, **TINY, bn_momentum=0.9, scan_blocks=False)
    # Same seed, same draws: the layouts differ only in how the weights are stored.
    converted = convert_layout(scanned, scan_blocks=False)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(converted)), nnx.to_pure_dict(nnx.state(unrolled)))
    x = jax.random.uniform(jax.random.key(0), (4, 75, 75, 3), minval=-1, maxval=1)
    *outs_s, stats_s = eval_and_train_forward(scanned, x)
    *outs_u, stats_u = eval_and_train_forward(unrolled, x)
    for out_s, out_u in zip(outs_s, outs_u):
        np.testing.assert_allclose(out_s.logits, out_u.logits, rtol=1e-5, atol=1e-5)
        for stage in out_s.blocks:
            for key in out_s.blocks[stage]:
                np.testing.assert_allclose(out_s.blocks[stage][key], out_u.blocks[stage][key], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(to_unrolled(nnx.to_pure_dict(stats_s)), nnx.to_pure_dict(stats_u), atol=1e-5)


@pytest.mark.parametrize("name,knobs", [("inception_resnet_v2", {}),
                                        exhaustive("inception_resnet_v1", {"use_residual": False}),
                                        ("inception_resnet_v2", {"remat_blocks": True})])
def test_scanned_residual_blocks_have_the_unrolled_gradients_and_keep_no_relu_mask_per_block(name, knobs):
    """Under the CPU kernels the scan applies each block's final ReLU mask in the next block's backward, from that
    block's input (cpu/blocks.py, relu_unmasked): gradients equal the unrolled network's, and the program stacks no
    bool array."""
    x = jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1, maxval=1)
    scanned = create_model(name, **{**TINY, "block_counts": (3, 3, 3)}, dropout_rate=0.0, **knobs)

    def grad_fn(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            with CpuBackend().tracing():
                return jnp.mean(nnx.merge(graphdef, p, rest, copy=True)(x, train=True) ** 2)

        return jax.jit(jax.grad(loss)), params

    fn, params = grad_fn(scanned)
    assert "pred[3," not in fn.lower(params).compile().as_text()  # a bool per element and block: a stacked mask
    unrolled_fn, unrolled_params = grad_fn(convert_layout(scanned, scan_blocks=False))
    # Relative to each leaf's scale: a BatchNorm bias gradient is a sum that cancels (-0.42 among terms of 90), and
    # the two layouts fuse the sums differently.
    assert_trees_close_to_scale(to_unrolled(nnx.to_pure_dict(fn(params))),
                                nnx.to_pure_dict(unrolled_fn(unrolled_params)), 2e-5)


# v4: its stem, Fork heads and pooled branches; the released IR-v2: a pooled stem module, residual blocks (scanned
# with the deferred ReLU mask, and the linear last one) and final_conv. Between them, every unit of the four.
@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_stock_and_cpu_kernels_compute_the_same_network(name):
    """The network traced with the CPU backend's kernels (tuned for XLA:CPU, with XLA's kernel gradients outside
    loops) computes what the stock network computes: eval-mode logits to float32 rounding; in training the logits,
    the batch statistics it leaves and every gradient, which BatchNorm over the 8 values per channel of the 1x1
    grid at the end amplifies rounding in (the forms' own gradients: test_layers.py, test_batchnorm.py,
    test_projection.py)."""
    x = jax.random.uniform(jax.random.key(0), (8, 75, 75, 3), minval=-1, maxval=1)
    model = create_model(name, **{**TINY, "block_counts": (1, 2, 2)}, dropout_rate=0.0, bn_momentum=0.5)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def run(kernels):
        def forward(p, train):
            with kernels.tracing():
                m = nnx.merge(graphdef, p, rest, copy=True)
                logits = m(x, train=train)
            return jnp.mean(jnp.sin(logits)), (logits, nnx.state(m, nnx.BatchStat))

        train = jax.value_and_grad(forward, has_aux=True)
        return jax.jit(lambda p: (forward(p, False)[1][0], train(p, True)))(params)

    (eval_logits, ((_, (logits, stats)), grads)) = run(STOCK)
    (cpu_eval_logits, ((_, (cpu_logits, cpu_stats)), cpu_grads)) = run(CpuBackend(xla_kernel_gradients=True))
    assert relative_error(cpu_eval_logits, eval_logits) < 1e-5
    assert relative_error(cpu_logits, logits) < 1e-4
    assert_trees_close_to_scale(nnx.to_pure_dict(cpu_stats), nnx.to_pure_dict(stats), 1e-4)
    assert_trees_close_to_scale(nnx.to_pure_dict(cpu_grads), nnx.to_pure_dict(grads), 1e-3, tree_fraction=1e-4)


def test_layout_conversion_round_trips():
    model = create_model("inception_resnet_v2", **TINY, residual_scale_mode="learnable")
    pure = nnx.to_pure_dict(nnx.state(model))
    unrolled = to_unrolled(pure)
    assert "blocks_b" not in unrolled and {"blocks_b_0", "blocks_b_1", "blocks_c_0", "blocks_c_1"} <= set(unrolled)
    chex.assert_trees_all_equal(to_scanned(unrolled, model.stacked_counts()), pure)
    back = convert_layout(convert_layout(model, scan_blocks=False), scan_blocks=True)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(back)), pure)


@pytest.mark.exhaustive  # remat is opt-in (model.remat_blocks); its scan is also in the gradient test above
def test_remat_recomputes_the_blocks_to_the_same_bits_in_less_memory():
    """remat_blocks: the backward recomputes each scanned block from its input. Loss, gradients, diagnostics and
    BatchNorm statistics are bit-identical to keeping the activations; XLA's temporaries shrink."""
    x = jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1, maxval=1)

    def step(model):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            out = m.forward(x, train=True, dropout_key=jax.random.key(1), diagnostics=True)
            return jnp.mean(out.logits ** 2), (out.blocks, nnx.state(m, nnx.BatchStat))

        compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile()
        return compiled(params), compiled.memory_analysis().temp_size_in_bytes

    deep = {**TINY, "block_counts": (6, 6, 6)}
    kept, kept_bytes = step(create_model("inception_resnet_v2", **deep))
    remat, remat_bytes = step(create_model("inception_resnet_v2", **deep, remat_blocks=True))
    chex.assert_trees_all_equal(remat, kept)
    assert remat_bytes < 0.95 * kept_bytes, (remat_bytes, kept_bytes)


# ------------------------------------------------------------------------------------------ diagnostics
def test_diagnostics_report_every_block_and_cost_nothing_when_not_requested():
    model = create_model("inception_resnet_v2", **TINY, residual_scale_mode="learnable")
    x = jnp.zeros((2, 75, 75, 3))
    out = abstract_forward(model, x.shape, diagnostics=True)
    assert out.prepool.shape == (2, 1, 1, 192)  # released IR-v2: final_conv output is the pre-pool layer
    assert set(out.blocks) == {"a", "b", "c"}
    assert set(out.blocks["c"]) == {"zero_frac", "branch_rms", "shortcut_rms", "scale"}
    assert out.blocks["c"]["zero_frac"].shape == (2,)  # one scanned block + the linear last one
    plain_out = abstract_forward(model, x.shape)
    assert plain_out.prepool is None and plain_out.blocks is None
    # Not requested means not computed: the diagnostics' reductions are absent from the program.
    graphdef, state = nnx.split(model)
    hlo_plain = jax.jit(lambda s: nnx.merge(graphdef, s, copy=True).forward(x).logits).lower(state).as_text()
    hlo_diag = jax.jit(lambda s: nnx.merge(graphdef, s, copy=True).forward(x, diagnostics=True).blocks
                       ).lower(state).as_text()
    assert hlo_plain.count("sqrt") < hlo_diag.count("sqrt")


def test_ghost_batchnorm_normalises_each_group_on_its_own():
    whole = create_model("inception_resnet_v1", **TINY, scan_blocks=False)
    ghost = create_model("inception_resnet_v1", **TINY, scan_blocks=False, bn_group_size=2)
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, 3))
    conv_whole, conv_ghost = whole.stem.conv1a, ghost.stem.conv1a
    y_ghost = conv_ghost(x, train=True)
    # Each group of 2 examples, normalised alone, equals the whole-batch unit applied to that group alone.
    for g in range(2):
        np.testing.assert_allclose(y_ghost[2 * g:2 * g + 2], conv_whole(x[2 * g:2 * g + 2], train=True), atol=1e-5)
    with pytest.raises(ValueError, match="bn_group_size=2 does not divide the batch of 3"):
        conv_ghost(x[:3], train=True)


def test_train_step_compiles_once():
    model = create_model("inception_resnet_v2", **TINY)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def grad_step(params, rest, x, y, key):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            logits = m.forward(x, train=True, dropout_key=key).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.grad(loss)(params)

    x, y = jnp.ones((2, 75, 75, 3)), jnp.zeros((2,), jnp.int32)
    for step in range(3):
        grad_step(params, rest, x + step, y, jax.random.key(step))


def test_bfloat16_compute_keeps_float32_parameters():
    model = create_model("inception_resnet_v2", **TINY, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = abstract_forward(model, (2, 75, 75, 3), stages=True)
    assert out.stages["blocks_b"].dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32


def test_width_multiplier_scales_filters_and_derives_the_residual_width():
    opts = model_options("inception_resnet_v2", width_multiplier=0.5, filters={"reduction_b.b0_1": 500})
    table = opts.filter_table
    assert table["block_b.b1_1"] == 80 and table["final_conv"] == 768 and table["reduction_b.b0_1"] == 500
    model = nnx.eval_shape(lambda: create_model("inception_resnet_v2", width_multiplier=0.5,
                                                filters={"reduction_b.b0_1": 500}))
    # C width = B width (544) + reduction_b branches (500 + 144 + 160): the up-projection follows it.
    assert model.blocks_c.up.kernel.shape == (10 - 1, 1, 1, 96 + 128, 544 + 500 + 144 + 160)


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kwargs, message", [
    (dict(name="inception_resnet_v3"), r"unknown model id 'inception_resnet_v3' \(did you mean 'inception_resnet_v2"),
    (dict(widht_multiplier=0.5), r"unknown knob 'widht_multiplier' \(did you mean 'width_multiplier'\?\)"),
    (dict(residual_scale=-0.1), r"residual_scale=-0.1 is out of range; it must be >= 0"),
    (dict(residual_scale=float("nan")), r"residual_scale=nan is not a finite number"),
    # As a flag or a spreadsheet cell spells them: the whole value is quoted, not its first letter.
    (dict(residual_scale="nan"), r"residual_scale='nan' must be one number or one per block type \(a, b, c\)"),
    (dict(residual_scale="abc"), r"residual_scale='abc' must be one number or one per block type"),
    (dict(residual_scale=(0.1, float("nan"), 0.2)), r"residual_scale=\(0.1, nan, 0.2\): stage b's nan is not a "
                                                     r"finite number"),
    (dict(block_counts=(1, "x", 2)), r"block_counts=\(1, 'x', 2\): stage b's 'x' must be an integer >= 0"),
    (dict(residual_scale=(0.1, 0.2)), r"must be one number or one per block type \(a, b, c\)"),
    (dict(residual_scale_mode="rezero"), r"residual_scale_mode='rezero' is not one of \['constant', 'learnable'"),
    (dict(width_multiplier=0.01), r"width_multiplier=0.01 leaves .* zero filters .*use width_multiplier >= 0.016"),
    (dict(width_multiplier=0), r"width_multiplier=0 is out of range; it must be > 0"),
    (dict(block_counts=(1, 2)), r"block_counts=\(1, 2\) must list 3 repeat counts"),
    (dict(block_counts=(1, 2, 0)), r"final_block_linear=True needs at least one C block"),
    (dict(filters={"block_b.b1_7": 3}), r"unknown entry 'block_b.b1_7' \(did you mean 'block_b.b1_2'"),
    (dict(image_size=74), r"image_size=74 is below the minimum input size 75"),
    (dict(aux_head=True, image_size=100), r"image_size=100 is below the minimum input size 107 with the aux head"),
    (dict(bn_momentum=1.5), r"bn_momentum=1.5 is out of range"),
    (dict(dtype="float8"), r"dtype='float8' is not one of \['float32', 'bfloat16', 'float16'\]"),
    (dict(remat_blocks=True, scan_blocks=False), r"remat_blocks=True needs scan_blocks=True"),
])
def test_bad_knobs_are_refused_with_a_message(kwargs, message):
    name = kwargs.pop("name", "inception_resnet_v2")
    with pytest.raises((ValueError, TypeError), match=message):
        model_options(name, **kwargs)


def test_residual_knobs_are_refused_for_inception_v4_and_aux_for_paper_variants():
    with pytest.raises(ValueError, match=r"inception_v4 has no residual blocks"):
        model_options("inception_v4", use_residual=False)
    with pytest.raises(ValueError, match=r"only inception_v4 and inception_resnet_v2 define an auxiliary head"):
        model_options("inception_resnet_v1", aux_head=True)


@pytest.mark.parametrize("shape, message", [
    ((2, 74, 74, 3), r"input 74x74 is below the minimum size 75x75"),
    ((2, 99, 99, 1), r"input has 1 channels"),
    ((99, 99, 3), r"expected images shaped \(batch, height, width, 3\)"),
])
def test_bad_inputs_are_refused_before_compiling(shape, message):
    model = nnx.eval_shape(lambda: create_model("inception_resnet_v2", **TINY))
    with pytest.raises(ValueError, match=message):
        abstract_forward(model, shape)


def test_aux_head_needs_its_image_size_in_training():
    model = nnx.eval_shape(lambda: create_model("inception_v4", **TINY, aux_head=True, image_size=107))
    out = abstract_forward(model, (2, 107, 107, 3), train=True, dropout_key=jax.random.key(0))
    assert out.aux_logits.shape == (2, 10)
    with pytest.raises(ValueError, match=r"aux head was built for image_size=107 but got 299x299"):
        abstract_forward(model, (2, 299, 299, 3), train=True, dropout_key=jax.random.key(0))


def test_residual_scale_accepts_one_value_per_block_type():
    opts = model_options("inception_resnet_v1", residual_scale={"b": 0.3})
    assert opts.residual_scale == (0.17, 0.3, 0.2)
    model = create_model("inception_resnet_v1", **TINY, residual_scale=(0.1, 0.2, 0.3))
    scales = [m.residual_scale[...] for m in (model.blocks_a, model.blocks_b, model.blocks_c)]
    np.testing.assert_allclose(scales, [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]])  # stacked: one per block
    assert isinstance(model.blocks_a, ResidualBlock)
