"""The residual blocks' scaled up-projection in the CPU backend (inception_jax/cpu/projection.py): the folded form
computes scale * (x @ W + b) and its gradients in all four inputs, and a residual block computes the same output
whichever form it takes, and the same as the models' stock scale * UP(x)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inception_jax.cpu import projection
from inception_jax.cpu.backend import CpuBackend
from inception_jax.cpu.projection import folds_scale, scaled_projection
from tests.numerics import relative_error


def textbook(x, kernel, bias, scale, dy):
    """float64 numpy: scale * (x @ W + b) and the gradients of <output, dy> in x, W, b and the scale."""
    x, w, b, s, dy = (np.asarray(a, np.float64) for a in (x, kernel[0, 0], bias, scale, dy))
    r = np.einsum("bhwc,cd->bhwd", x, w) + b
    g = dy * s
    ds = (dy * r).sum((0, 1, 2))
    return s * r, (np.einsum("bhwd,cd->bhwc", g, w), np.einsum("bhwc,bhwd->cd", x, g)[None, None], g.sum((0, 1, 2)),
                   ds.sum() if np.ndim(s) == 0 else ds)


@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar scale", "per-channel scale"])
def test_folded_projection_matches_the_formula_and_its_gradients(per_channel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 6)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 6, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    scale = (rng.uniform(0.1, 1.0, 4) if per_channel else np.asarray(0.17)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 5, 4)).astype(np.float32)
    out, vjp = jax.vjp(scaled_projection, *(jnp.asarray(a) for a in (x, kernel, bias, scale)))
    grads = vjp(jnp.asarray(dy))
    ref_out, ref_grads = textbook(x, kernel, bias, scale, dy)
    assert relative_error(out, ref_out) < 1e-6
    for name, ours, ref in zip(("x", "kernel", "bias", "scale"), grads, ref_grads, strict=True):
        assert ours.shape == np.shape(ref), name
        assert relative_error(ours, ref) < 1e-5, name


def test_the_scale_is_folded_only_where_the_kernel_is_small_next_to_the_activations():
    ratio = projection.FOLD_MIN_PIXELS_PER_INPUT_CHANNEL
    assert folds_scale((1, 1, 128, 320), (8, 35, 35, 128))  # IR-v2's A blocks at 299 px: 9,800 pixels
    assert folds_scale((1, 1, 384, 1088), (8, 17, 17, 384))  # B blocks: 2,312 pixels
    assert not folds_scale((1, 1, 448, 2080), (8, 8, 8, 448))  # C blocks: 512 pixels
    assert folds_scale((1, 1, 10, 7), (1, 1, ratio * 10, 10))
    assert not folds_scale((1, 1, 10, 7), (1, 1, ratio * 10 - 1, 10))


@pytest.mark.parametrize("scale_mode", ["constant", "learnable_channel"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "plain"])
def test_a_residual_block_computes_the_same_in_either_form(monkeypatch, residual, scale_mode):
    """An A block's output and gradients with the scale folded equal those with the output scaled, under the CPU
    kernels, and those of the stock block (float rounding)."""
    from inception_jax.models import build_model, model_options

    opts = model_options("inception_resnet_v2", num_classes=10, width_multiplier=0.125, use_residual=residual,
                         residual_scale_mode=scale_mode)
    graphdef, params, rest = nnx.split(build_model(opts, rngs=nnx.Rngs(0)).blocks_a, nnx.Param, ...)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 35, 35, 40)), jnp.float32)

    def loss(params):
        first = [jax.tree.map(lambda a: a[0], s) for s in (params, rest)]  # block 0 of the stacked blocks
        y, _ = nnx.merge(graphdef, *first)(x, train=True)
        return jnp.sum(y * jnp.cos(y)), y

    results = []
    for fold in (True, False):
        monkeypatch.setattr("inception_jax.cpu.projection.folds_scale", lambda *_, fold=fold: fold)
        with CpuBackend().tracing():
            results.append(jax.value_and_grad(loss, has_aux=True)(params))
    results.append(jax.value_and_grad(loss, has_aux=True)(params))  # stock
    ((_, y_folded), g_folded), *others = results
    for (_, y), grads in others:
        assert relative_error(y_folded, y) < 1e-5
        leaves = jax.tree.leaves(grads)
        assert len(leaves) == len(jax.tree.leaves(g_folded)) >= 14  # 6 units x (kernel, BN bias), UP kernel and bias
        for ours, ref in zip(jax.tree.leaves(g_folded), leaves, strict=True):
            assert relative_error(ours, ref) < 1e-4
