"""The rule every claim in the findings follows (analysis.statistics), on fixed numbers: an effect, its 95 %
interval, n, and "supported" only when at least 3 seeds went in and the interval excludes no difference."""

import math

import pytest

from analysis.statistics import (
    INCONCLUSIVE,
    SUPPORTED,
    Steps,
    difference,
    paired_difference,
    proportion,
    proportion_difference,
    step_ratio,
    unpaired_difference,
)


def test_a_clear_paired_difference_is_supported():
    residual = [0.70, 0.72, 0.69, 0.75, 0.71]
    plain = [0.40, 0.45, 0.38, 0.42, 0.41]  # the same seeds, in the same order
    estimate = paired_difference(residual, plain)
    assert estimate.status == SUPPORTED and estimate.paired and estimate.n == 5
    assert estimate.effect == pytest.approx(0.302)
    assert 0 < estimate.low < estimate.effect < estimate.high


def test_overlapping_seeds_are_inconclusive():
    estimate = paired_difference([0.70, 0.40, 0.69, 0.35, 0.71], [0.40, 0.45, 0.68, 0.42, 0.41])
    assert estimate.status == INCONCLUSIVE and estimate.low < 0 < estimate.high


def test_pairing_removes_what_the_seeds_share():
    """Each seed moves both variants alike: paired, the +2-point difference is clear; unpaired, the seeds' spread
    (20 points) hides it."""
    plain = [0.30, 0.50, 0.40, 0.60, 0.45]
    residual = [p + 0.02 + d for p, d in zip(plain, (0.0, 0.001, -0.001, 0.002, 0.0))]
    assert paired_difference(residual, plain).status == SUPPORTED
    assert unpaired_difference(residual, plain).status == INCONCLUSIVE


def test_runs_are_paired_by_seed_when_seeds_are_shared_and_compared_unpaired_otherwise():
    paired = difference({0: 0.7, 1: 0.72, 2: 0.69}, {2: 0.4, 1: 0.45, 0: 0.38})
    assert paired.paired and paired.n == 3 and paired.effect == pytest.approx((0.32 + 0.27 + 0.29) / 3)
    unpaired = difference({0: 0.7, 1: 0.72, 2: 0.69}, {10: 0.4, 11: 0.45, 12: 0.38})
    assert not unpaired.paired and unpaired.method == "Welch t" and unpaired.status == SUPPORTED


def test_fewer_than_three_seeds_are_never_supported_and_never_an_error():
    two = paired_difference([0.70, 0.72], [0.10, 0.11])  # a clear gap, but two seeds
    assert two.status == INCONCLUSIVE and two.n == 2 and math.isfinite(two.low)
    one = paired_difference([0.7], [0.1])
    assert (one.status, one.n) == (INCONCLUSIVE, 1) and math.isnan(one.low) and math.isnan(one.high)
    none = unpaired_difference([], [0.1, 0.2])
    assert none.status == INCONCLUSIVE and none.n == 0 and math.isnan(none.effect)
    assert proportion_difference(2, 2, 0, 2).status == INCONCLUSIVE
    assert proportion_difference(0, 0, 1, 3).status == INCONCLUSIVE


def test_deaths_0_of_5_against_5_of_5_are_supported():
    estimate = proportion_difference(5, 5, 0, 5)
    assert estimate.status == SUPPORTED and estimate.effect == 1.0
    assert estimate.low == pytest.approx(0.386, abs=1e-3) and estimate.high == 1.0  # Newcombe, from Wilson intervals


def test_deaths_1_of_5_against_2_of_5_are_inconclusive():
    estimate = proportion_difference(2, 5, 1, 5)
    assert estimate.status == INCONCLUSIVE and estimate.effect == pytest.approx(0.2)
    assert estimate.low < 0 < estimate.high


def test_a_cell_death_rate_has_its_exact_interval():
    assert proportion(0, 5) == pytest.approx((0.0, 0.0, 0.5218), abs=1e-4)  # Clopper-Pearson: 1 - 0.025 ** (1 / 5)
    assert proportion(5, 5) == pytest.approx((1.0, 0.4782, 1.0), abs=1e-4)
    assert all(math.isnan(v) for v in proportion(0, 0))


def test_never_reaching_a_threshold_is_a_lower_bound_on_the_slower_side():
    # Residual reached 30 % at 180-200 steps; plain at 420, or never (its last eval at 600, one interval 20).
    faster = step_ratio([(Steps(180), Steps(420)), (Steps(200), Steps(410)), (Steps(190), Steps(620, True))])
    assert faster.status == SUPPORTED and faster.high < 1 and faster.censored_b == 1
    # Residual never got there: its bound can only understate how much slower it is.
    never = Steps(620, censored=True)
    slower = step_ratio([(never, Steps(420)), (never, Steps(400)), (never, Steps(380))])
    assert slower.status == SUPPORTED and slower.low > 1
    # A bound on the side the claim calls faster could hide the opposite order: not supported.
    mixed = step_ratio([(Steps(100), Steps(400)), (Steps(120), Steps(420)), (Steps(110), Steps(410)),
                        (Steps(130, True), Steps(400))])
    assert mixed.high < 1 and mixed.status == INCONCLUSIVE
    # Neither reached it: no order, left out.
    both = step_ratio([(Steps(620, True), Steps(620, True))])
    assert (both.n, both.left_out, both.status) == (0, 1, INCONCLUSIVE)


def test_seeds_that_tie_are_not_certainty():
    """Steps are counted at evaluations, so seeds tie. Three pairs giving one ratio (every 75 steps: 150 against
    a censored 262) once came out as 0.57x [0.57x, 0.57x], "supported"; a t interval of width 0 is an artefact.
    Without spread the interval is the sign test's for the median, which needs 6 agreeing pairs for 95 %."""
    tied = [(Steps(150), Steps(262, censored=True))] * 3
    three = step_ratio(tied)
    assert three.effect == pytest.approx(150 / 262) and three.status == INCONCLUSIVE
    assert math.isnan(three.low) and math.isnan(three.high)
    six = step_ratio(tied * 2)
    assert six.status == SUPPORTED and six.low == pytest.approx(150 / 262) == six.high
    same_gap = paired_difference([0.5, 0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1, 0.1])
    assert same_gap.status == INCONCLUSIVE and math.isnan(same_gap.low)
    rounded_gap = paired_difference([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])  # 0.4 each, up to the last bit
    assert rounded_gap.status == INCONCLUSIVE and math.isnan(rounded_gap.low)
    constant_sides = unpaired_difference([0.5] * 5, [0.1] * 5)
    assert constant_sides.status == INCONCLUSIVE and math.isnan(constant_sides.low)


def test_the_statistics_need_no_random_numbers():
    a, b = [0.7, 0.4, 0.69, 0.35, 0.71], [0.4, 0.45, 0.68, 0.42, 0.41]
    assert paired_difference(a, b) == paired_difference(a, b)


def test_a_missing_interval_is_null_in_json():
    record = paired_difference([0.7], [0.1]).to_json()
    assert record["low"] is None and record["high"] is None and record["effect"] == pytest.approx(0.6)
