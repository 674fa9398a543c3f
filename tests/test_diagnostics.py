"""The dying verdict (docs/dying.md) on synthetic histories, and on a network made dead by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inception_jax.models import create_model
from inception_jax.training.diagnostics import activation_stats
from inception_jax.training.verdicts import Verdict, chance_top1, dead_windows_at_end, judge, with_evaluation

LN10 = math.log(10)


def history(n, z_before, z_after, loss_before, loss_after, change_at):
    steps = list(range(1, n + 1))
    z = [z_before if s < change_at else z_after for s in steps]
    loss = [loss_before if s < change_at else loss_after for s in steps]
    return steps, z, loss


def test_a_net_dead_from_step_12_died_at_12():
    steps, z, loss = history(60, 0.3, 0.999, 1.5, LN10, change_at=12)
    verdict = judge(steps, z, loss, 10)
    assert (verdict.verdict, verdict.t_death) == ("died", 12)


def test_a_net_that_recovers_is_a_transient_death():
    steps, z, loss = history(80, 0.999, 0.5, LN10, 1.0, change_at=41)  # dead for 30+ windows, then alive
    verdict = judge(steps, z, loss, 10)
    assert verdict.verdict == "transient_death" and verdict.t_death is None


def test_a_non_finite_loss_is_divergence_never_death():
    steps, z, loss = history(40, 0.999, 0.999, LN10, LN10, change_at=1)
    loss[-3] = float("nan")
    assert judge(steps, z, loss, 10).verdict == "diverged"


def test_damaged_and_healthy():
    steps, z, loss = history(30, 0.95, 0.95, 1.0, 1.0, change_at=1)
    assert judge(steps, z, loss, 10).verdict == "damaged"  # mostly zeros, but learning
    steps, z, loss = history(30, 0.995, 0.995, 1.2, 1.2, change_at=1)
    assert judge(steps, z, loss, 10).verdict == "damaged"  # zeros >= 0.99 but the loss is below 0.95 ln C
    steps, z, loss = history(30, 0.4, 0.4, 1.0, 1.0, change_at=1)
    assert judge(steps, z, loss, 10).verdict == "healthy"
    assert dead_windows_at_end(*history(30, 0.3, 0.999, 1.0, LN10, change_at=11)[1:], 10) == 11


def test_a_huge_negative_bias_in_the_last_up_projection_kills_the_net_within_k_steps():
    """docs/dying.md detector test 4: ReLU(x + s * (UP(m) - 1e3)) is exactly zero everywhere, the loss is ln C."""
    model = create_model("inception_resnet_v1", width_multiplier=0.0625, block_counts=(1, 1, 1), num_classes=10,
                         scan_blocks=False, dropout_rate=0.0)
    model.blocks_c_0.up.bias[...] = jnp.full_like(model.blocks_c_0.up.bias[...], -1e3)
    model.head.fc.bias[...] = jnp.zeros_like(model.head.fc.bias[...])
    graphdef, state = nnx.split(model)

    @jax.jit
    def step_stats(state, x, y):
        m = nnx.merge(graphdef, state, copy=True)
        out = m.forward(x, train=True, diagnostics=True)
        loss = jnp.mean(-jax.nn.log_softmax(out.logits)[jnp.arange(x.shape[0]), y])
        return activation_stats(out)["prepool_zero_frac"], loss

    steps, zs, losses = [], [], []
    for step in range(1, 11):
        x = jax.random.uniform(jax.random.key(step), (4, 75, 75, 3), minval=-1, maxval=1)
        z, loss = step_stats(state, x, jnp.arange(4) % 10)
        steps.append(step), zs.append(float(z)), losses.append(float(loss))
    assert min(zs) == 1.0
    np.testing.assert_allclose(losses, LN10, rtol=1e-6)
    verdict = judge(steps, zs, losses, 10)
    assert (verdict.verdict, verdict.t_death) == ("died", 1)


def test_an_alive_run_at_chance_is_not_learning_never_healthy():
    """not_learning: no death, but the final eval top-1 within 3 binomial standard errors of chance (10 classes,
    500 examples: 0.1 + 3 * sqrt(0.09 / 500) = 0.140)."""
    steps, z, loss = history(60, 0.5, 0.5, 2.2, 2.2, change_at=1)
    healthy = judge(steps, z, loss, 10)
    assert healthy.verdict == "healthy"
    assert chance_top1(10, 500) == pytest.approx(0.1402, abs=1e-4)
    assert with_evaluation(healthy, 0.13, 500, 10).verdict == "not_learning"
    assert with_evaluation(healthy, 0.15, 500, 10).verdict == "healthy"
    assert with_evaluation(healthy, None, 0, 10).verdict == "healthy"  # no evaluation: nothing to judge by
    dead = judge(*history(60, 0.3, 0.999, 1.5, LN10, change_at=12), 10)
    assert with_evaluation(dead, 0.1, 500, 10).verdict == "died"  # the dying verdicts stand
    record = with_evaluation(healthy, 0.13, 500, 10).to_json()
    assert record["final_eval_top1"] == 0.13 and record["chance_top1"] == pytest.approx(0.1402, abs=1e-4)


def dead_then_limping(final_z=0.982, final_loss=2.255):
    """Issue #30's unscaled 640-filter runs: dead from step 5 to 99, then the zero fraction dips under 0.99
    while the loss stays at chance level, to step 600."""
    steps = list(range(1, 601))
    z = [0.3 if s < 5 else 0.999 if s < 100 else final_z for s in steps]
    loss = [1.5 if s < 5 else LN10 if s < 100 else final_loss for s in steps]
    return steps, z, loss


@pytest.mark.parametrize("final_top1", [0.142, 0.094])  # the two seeds' final eval top-1 (500 examples)
def test_a_death_never_recovered_from_at_chance_is_died_not_transient(final_top1):
    """docs/dying.md §3: loss 2.255 >= 0.95 ln 10 = 2.187 and an eval top-1 within max(chance bound, 1.5/C) =
    0.15: the run had died and has not recovered, whatever its zero fraction does."""
    judged = judge(*dead_then_limping(), 10)
    assert (judged.verdict, judged.t_death, judged.t_last_death) == ("transient_death", None, 5)
    final = with_evaluation(judged, final_top1, 500, 10)
    assert (final.verdict, final.t_death) == ("died", 5)
    assert with_evaluation(final, final_top1, 500, 10) == final  # applying it again changes nothing
    assert Verdict.from_json(final.to_json()) == final


def test_a_death_recovered_from_stays_transient_and_recovery_means_learning():
    judged = judge(*dead_then_limping(), 10)
    assert with_evaluation(judged, 0.30, 500, 10).verdict == "transient_death"  # eval top-1 well above chance
    alive_again = judge(*dead_then_limping(final_z=0.5, final_loss=1.0), 10)
    assert with_evaluation(alive_again, 0.60, 500, 10).verdict == "transient_death"
    # Its loss left the dead band but its eval top-1 is at chance: alive again, nothing learned.
    assert with_evaluation(alive_again, 0.11, 500, 10).verdict == "not_learning"
    assert with_evaluation(judged, None, 0, 10).verdict == "transient_death"  # no evaluation: nothing to judge by


def test_a_verdict_json_written_before_the_rule_reads_back():
    """analysis/verdicts.py re-judges stored runs: an older verdict.json has no t_last_death field."""
    stored = {"verdict": "transient_death", "t_death": None, "final_zero_frac": 0.982, "final_loss": 2.255,
              "window": 10, "definition": "older text"}
    final = with_evaluation(Verdict.from_json(stored), 0.142, 500, 10)
    assert (final.verdict, final.t_death) == ("died", None)
