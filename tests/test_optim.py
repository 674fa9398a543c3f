"""The recipe's optimizer pieces against hand computations of their definitions (docs/architecture.md §6)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inception_jax.configuration import base_config
from inception_jax.training import optim
from inception_jax.training.optim import ema_decay_at, kernel_mask, learning_rate_schedule, make_optimizer


def recipe(**overrides):
    t = base_config().train
    t.update(overrides)
    return t


def _mixed_tree():
    """Leaves below and above optim.PACKED_NORM_MAX_SIZE (packed / reduced alone), nested, one bf16."""
    rng = np.random.default_rng(0)
    big = optim.PACKED_NORM_MAX_SIZE + 5
    return {"big": jnp.asarray(rng.normal(size=(big,)), jnp.float32),
            "small": [jnp.asarray(rng.normal(size=(7,)), jnp.float32),
                      jnp.asarray(rng.normal(size=(3, 4)), jnp.bfloat16)],
            "kernel": jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)}


def test_global_norm_is_the_norm_of_every_element():
    tree = _mixed_tree()
    exact = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    np.testing.assert_allclose(float(optim.global_norm(tree)), exact, rtol=1e-6)
    np.testing.assert_allclose(float(optim.global_norm({"only": tree["small"]})),
                               np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree["small"])), rtol=1e-6)
    assert float(optim.global_norm({})) == 0.0


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_equals_optax_and_keeps_its_state(max_norm):
    """Same formula as optax.clip_by_global_norm (only the norm's summation order differs) and the same empty
    state, so checkpoints of either load into the other."""
    tree = _mixed_tree()
    ours, state = optim.clip_by_global_norm(max_norm).update(tree, optim.clip_by_global_norm(max_norm).init(tree))
    theirs, their_state = optax.clip_by_global_norm(max_norm).update(tree, optax.EmptyState())
    assert state == their_state == optax.EmptyState()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-8)
    clipped_norm = float(optim.global_norm(ours))
    assert clipped_norm == pytest.approx(min(max_norm, float(optim.global_norm(tree))), rel=1e-3)


def test_rmsprop_update_equals_the_tf1_formula():
    """TF1 RMSPropOptimizer: ms <- d*ms + (1-d)*g^2 (ms starts at 1); mom <- m*mom + lr*g/sqrt(ms + eps);
    w <- w - mom. No clipping or decay here, to see the optimizer alone."""
    lr, d, m, eps = 0.045, 0.9, 0.9, 1.0
    tx = make_optimizer(recipe(grad_clip_norm=0.0, weight_decay=0.0), optax.constant_schedule(lr))
    w = {"kernel": jnp.array([0.5, -1.0, 2.0])}
    grads = [jnp.array([0.3, -2.0, 0.01]), jnp.array([-1.0, 0.5, 4.0]), jnp.array([0.2, 0.2, -0.3])]
    state = tx.init(w)
    ms, mom, expected = np.ones(3), np.zeros(3), np.asarray(w["kernel"], np.float64)
    for g in grads:
        updates, state = tx.update({"kernel": g}, state, w)
        w = optax.apply_updates(w, updates)
        gn = np.asarray(g, np.float64)
        ms = d * ms + (1 - d) * gn**2
        mom = m * mom + lr * gn / np.sqrt(ms + eps)
        expected = expected - mom
    np.testing.assert_allclose(w["kernel"], expected, rtol=1e-6)


def test_weight_decay_touches_kernels_only_and_clipping_bounds_the_global_norm():
    params = {"conv": {"kernel": jnp.ones((2, 2))}, "bn": {"bias": jnp.ones(2)}, "residual_scale": jnp.ones(())}
    assert kernel_mask(params) == {"conv": {"kernel": True}, "bn": {"bias": False}, "residual_scale": False}
    tx = make_optimizer(recipe(optimizer="sgd", momentum=0.0, grad_clip_norm=0.0, weight_decay=0.5),
                        optax.constant_schedule(1.0))
    zeros = {"conv": {"kernel": jnp.zeros((2, 2))}, "bn": {"bias": jnp.zeros(2)}, "residual_scale": jnp.zeros(())}
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.5)  # -lr * wd * w
    np.testing.assert_allclose(updates["bn"]["bias"], 0.0)
    clipped = make_optimizer(recipe(optimizer="sgd", momentum=0.0, grad_clip_norm=2.0, weight_decay=0.0),
                             optax.constant_schedule(1.0))
    big = {"conv": {"kernel": jnp.full((2, 2), 10.0)}, "bn": {"bias": jnp.zeros(2)}, "residual_scale": jnp.zeros(())}
    updates, _ = clipped.update(big, clipped.init(params), params)
    assert float(optax.tree.norm(updates)) == pytest.approx(2.0, rel=1e-5)


def test_staircase_learning_rate_drops_by_0_94_every_two_epochs():
    schedule = learning_rate_schedule(recipe(), steps_per_epoch=100, num_steps=10_000)
    assert float(schedule(0)) == pytest.approx(0.045)
    assert float(schedule(199)) == pytest.approx(0.045)  # epoch 1.99: still the first stair
    assert float(schedule(200)) == pytest.approx(0.045 * 0.94)  # epoch 2
    assert float(schedule(399)) == pytest.approx(0.045 * 0.94)
    assert float(schedule(1000)) == pytest.approx(0.045 * 0.94**5)  # epoch 10


def test_warmup_then_cosine():
    schedule = learning_rate_schedule(recipe(lr_schedule="cosine", warmup_steps=10, learning_rate=0.1),
                                      steps_per_epoch=100, num_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(60)) == pytest.approx(0.05, rel=1e-5)  # halfway down the cosine
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_ema_decay_warms_up_like_tf_num_updates():
    assert float(ema_decay_at(jnp.asarray(0), 0.9999)) == pytest.approx(0.1)
    assert float(ema_decay_at(jnp.asarray(90), 0.9999)) == pytest.approx(91 / 100)
    assert float(ema_decay_at(jnp.asarray(10**7), 0.9999)) == pytest.approx(0.9999)


def test_adamw_decays_kernels_decoupled():
    tx = make_optimizer(recipe(optimizer="adamw", weight_decay=0.1, grad_clip_norm=0.0), optax.constant_schedule(1.0))
    params = {"kernel": jnp.ones(3), "bias": jnp.ones(3)}
    updates, _ = tx.update({"kernel": jnp.zeros(3), "bias": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1)
    np.testing.assert_allclose(updates["bias"], 0.0)
    assert isinstance(base_config().train, ml_collections.ConfigDict)
