"""Programs shared by variants, and precise BatchNorm statistics.

Plain or residual and the residual scale are values of a network, not its structure: one compiled program trains
every variant of a shape. Evaluation can recompute the BatchNorm statistics from training batches (precise BN),
so an eval-mode network is judged with statistics of its current weights, not a lagging running average.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inception_jax.models import block_values, build_model, model_options, program_options
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.evaluation import precise_statistics
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import program_key, programs_for
from inception_jax.training.sharding import global_batch
from inception_jax.training.state import restore_or_init
from inception_jax.training.train_step import model_input
from tests.marks import exhaustive
from tests.training_helpers import tiny_config

TINY = dict(num_classes=10, width_multiplier=0.1, block_counts=(2, 1, 2), dropout_rate=0.0)
IMAGES = jax.random.uniform(jax.random.key(1), (2, 75, 75, 3), minval=-1, maxval=1)


@pytest.mark.parametrize("name,scan_blocks", [
    ("inception_resnet_v2_paper", True), exhaustive("inception_resnet_v2_paper", False),  # the main job's network
    exhaustive("inception_resnet_v2", True), exhaustive("inception_resnet_v2", False)], ids=[
    "scanned-inception_resnet_v2_paper", "unrolled-inception_resnet_v2_paper", "scanned-inception_resnet_v2",
    "unrolled-inception_resnet_v2"])
def test_plain_and_scaled_variants_are_values_written_into_one_network(name, scan_blocks):
    """Every variant's program options are the same; the network built from them, with a variant's values
    written in, computes exactly what that variant built directly computes (the same seed draws the same
    weights). The released IR-v2's linear last block keeps scale 1.0 (and is plain in the plain network)."""
    variants = {"plain": dict(use_residual=False, plain_scale=0.5), "scale 0.1": dict(residual_scale=0.1),
                "per stage": dict(residual_scale=(0.3, 0.2, 0.1))}
    opts = {k: model_options(name, scan_blocks=scan_blocks, **TINY, **v) for k, v in variants.items()}
    assert len({program_options(o) for o in opts.values()}) == 1
    assert len({nnx.graphdef(build_model(program_options(o))) for o in opts.values()}) == 1
    for label, variant in opts.items():
        shared = build_model(program_options(variant), rngs=nnx.Rngs(3), values=block_values(variant))
        direct = build_model(variant, rngs=nnx.Rngs(3))
        np.testing.assert_array_equal(shared(IMAGES), direct(IMAGES), err_msg=label)
        for (_, block, linear), (_, twin, _) in zip(shared.residual_blocks(), direct.residual_blocks(), strict=True):
            np.testing.assert_array_equal(block.shortcut[...], twin.shortcut[...])
            np.testing.assert_array_equal(block.residual_scale[...], twin.residual_scale[...])
            if linear and label != "plain":
                np.testing.assert_array_equal(block.residual_scale[...], 1.0)


def test_the_plain_block_has_no_shortcut():
    plain = build_model(model_options("inception_resnet_v1", **TINY, use_residual=False, scan_blocks=False))
    residual = build_model(model_options("inception_resnet_v1", **TINY, scan_blocks=False))
    for (_, block, _), (_, twin, _) in zip(plain.residual_blocks(), residual.residual_blocks(), strict=True):
        assert float(block.shortcut[...]) == 0.0 and float(twin.shortcut[...]) == 1.0


def test_a_programs_identity_leaves_out_exactly_the_values(shapes_tiny_dir, tmp_path):
    """Rows differing in seed, plain/residual, scale or loop-only settings share a program key; anything the
    programs read (the learning rate, the width, the scale mode, the kernels they are traced with) makes another."""
    def key(**overrides):
        return program_key(prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, **overrides}),
                                       str(tmp_path)))

    base = key()
    for same in ({"seed": 4}, {"model.use_residual": False}, {"model.residual_scale": 0.3},
                 {"train.eval_every_steps": 3}, {"train.checkpoint_every_steps": 2},
                 {"kernels": "cpu"}):  # what "auto" is on CPU
        assert key(**same) == base, same
    for other in ({"train.learning_rate": 0.1}, {"model.width_multiplier": 0.125},
                  {"model.residual_scale_mode": "learnable"}, {"train.batch_size": 16}, {"kernels": "stock"},
                  {"xla_cpu_codegen": "xla_default"}):
        assert key(**other) != base, other


def test_precise_statistics_give_eval_mode_the_batch_statistics_network(shapes_tiny_dir, tmp_path):
    """A fresh network's running statistics (mean 0, variance 1) are stale: eval mode computes something else than
    training mode on the same batch. Recomputed from that batch, the statistics make eval mode compute what
    training mode computes, and bn_batch_top1 is training mode's accuracy. From two batches, every statistic is
    the mean of the two batches' own."""
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.precise_bn_batches": 2})
    run = prepare_run(config, str(tmp_path))
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=100, keep=1)
    state, shardings, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    statistics = programs_for(run, shardings).statistics
    batches = [global_batch(run.train_stream.batch(i), run.mesh) for i in range(2)]
    images, labels = model_input(batches[0]["image"]), batches[0]["label"]

    graphdef = run.step_cfg.statistics_graphdef  # the network without dropout

    def logits(rest, train):
        return nnx.merge(graphdef, state.params, rest, copy=True).forward(images, train=train).logits

    batch_mode = logits(state.rest, train=True)
    stale = logits(state.rest, train=False)
    assert float(jnp.max(jnp.abs(stale - batch_mode))) > 0.1 * float(jnp.max(jnp.abs(batch_mode)))

    rest, values = precise_statistics(state.params, state.rest, statistics, batches[:1])
    np.testing.assert_allclose(logits(rest, train=False), batch_mode, rtol=2e-4, atol=2e-4 * float(
        jnp.max(jnp.abs(batch_mode))))
    assert values["bn_batch_top1"] == pytest.approx(float(jnp.mean(jnp.argmax(batch_mode, -1) == labels)))

    two, _ = precise_statistics(state.params, state.rest, statistics, batches)
    second, _ = precise_statistics(state.params, state.rest, statistics, batches[1:])
    for mean, a, b in zip(jax.tree.leaves(nnx.state(nnx.merge(graphdef, state.params, two),
                                                     nnx.BatchStat)),
                          jax.tree.leaves(nnx.state(nnx.merge(graphdef, state.params, rest),
                                                    nnx.BatchStat)),
                          jax.tree.leaves(nnx.state(nnx.merge(graphdef, state.params, second),
                                                    nnx.BatchStat)), strict=True):
        np.testing.assert_allclose(mean, (np.asarray(a) + np.asarray(b)) / 2, rtol=1e-6, atol=1e-7)
