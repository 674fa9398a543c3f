"""Effect sizes with 95 % intervals, and the one word a finding may use for them: thin wrappers over scipy.stats.

Every comparison the findings state goes through here, so the rule is written once (and quoted by the report's
methods, METHODS):
* a difference of means (final eval top-1): paired by seed when the runs have twins (same seed: same data order,
  same initial weights where shapes agree), a Student-t interval on the per-seed differences (scipy.stats.ttest_1samp);
  unpaired otherwise, Welch's t interval (scipy.stats.ttest_ind, equal_var=False);
* a ratio of steps to an accuracy threshold: the paired t interval on log ratios, exponentiated (a geometric mean
  ratio); a run that never reached the threshold is censored (see step_ratio);
* a proportion of deaths: the exact Clopper-Pearson interval (scipy.stats.binomtest(...).proportion_ci("exact"));
  a difference of two: Newcombe's hybrid score interval, built from scipy's two Wilson intervals (Newcombe 1998,
  method 10; statsmodels' default for this);
* per-seed values without spread (ties: steps are counted at evaluations): the sign test's distribution-free
  interval for the median (order statistics) instead of a t interval of width 0; it exists from MIN_TIED_SEEDS
  agreeing seeds on.
Status: "supported" only when at least MIN_SEEDS seeds (pairs) went in and the interval excludes no difference
(0, or 1 for a ratio); otherwise "inconclusive". Nothing here raises on tiny samples: an interval that cannot be
formed is NaN, and the claim is inconclusive.

Why t intervals and not a bootstrap: with 3-10 seeds a bootstrap interval of a mean is too narrow (percentile:
about 75 % coverage at 3 seeds and 85 % at 5 for a nominal 95 %), and with 2 seeds it is just the two values. The
t interval widens with few seeds as it should and needs no random numbers, so a report is reproducible bit for bit.
This module states numbers only; the wording is analysis/findings.py's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # fewer seeds (or pairs) per side: the seed-to-seed spread is itself unknown, never "supported"
# Seeds (pairs) that all give one value support a claim from this many on: the sign test's interval needs them.
MIN_TIED_SEEDS = next(n for n in range(1, 64) if 2 * 0.5**n <= 1 - CONFIDENCE)
SUPPORTED = "supported"
INCONCLUSIVE = "inconclusive"
STATUSES = (SUPPORTED, INCONCLUSIVE)
TIES = "sign test (no spread)"  # the method of an interval formed by _median_interval

METHODS = (
    "Claims: every comparison in the findings gives an effect, its 95 % interval and n (seeds, or seed pairs), and "
    f"one word: '{SUPPORTED}' only when at least {MIN_SEEDS} seeds per side went in and the interval excludes no "
    f"difference (0, or 1 for a ratio of steps); otherwise '{INCONCLUSIVE}', stated with its n. Supported claims "
    "come first (the headline); an inconclusive one is not evidence of no difference, only of too few seeds for "
    "its spread.",
    "Pairing: runs with the same seed see the same data order (and the same initial weights where shapes agree), "
    "so a comparison takes the per-seed differences when both sides have that seed (paired t interval); otherwise "
    "the two sides' seeds are compared unpaired (Welch's t interval). A t interval and not a bootstrap: with 3-10 "
    "seeds a bootstrap interval is too narrow (about 75-85 % coverage for a nominal 95 %).",
    "Steps to a threshold: the geometric mean over seed pairs of residual steps / plain steps, with a t interval on "
    "the log ratios. A run that never reached the threshold counts as its last logged step plus one logging "
    "interval, a lower bound, and a claim is supported only when such bounds lie on its slower side (so they can "
    "only understate the effect); pairs in which neither run reached it carry no order and are left out.",
    "Ties: steps are counted at evaluations, so seeds can give identical values. When every per-seed value is the "
    "same, a t interval would have width 0; the interval is then the sign test's distribution-free one for the "
    f"median, which needs at least {MIN_TIED_SEEDS} seed pairs (all agreeing) to reach 95 %, so fewer are "
    "inconclusive. Two "
    "unpaired sides that are both without spread get no interval.",
    "Deaths: a cell's proportion of seeds whose verdict is died, with its exact (Clopper-Pearson) interval; a "
    "difference between two cells (two variants at a filter count, or one variant at two filter counts: the width "
    "effect) with Newcombe's hybrid score interval (from two Wilson intervals), unpaired.",
    "Why one seed does not pin one outcome: a run's seed fixes its data order and initial weights, but not its "
    "floating-point summation order, which changes with the thread count and the machine; training at this "
    "learning rate is chaotic, so such rounding differences grow until the same seed can die on one machine and "
    "train on another. Seeds are samples of that variation, which is why a claim needs several and an interval.",
)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An effect with its 95 % interval (NaN when it cannot be formed) and the status that follows."""

    effect: float
    low: float
    high: float
    n: int  # seed pairs when paired, else the smaller side's seeds
    method: str
    status: str
    null: float = 0.0  # the value meaning "no difference"
    paired: bool = False

    def to_json(self) -> dict:
        """The fields, a missing interval as null: findings.json stays strict JSON (no bare NaN)."""
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in dataclasses.asdict(self).items()}


def _excludes(low: float, high: float, null: float) -> bool:
    return math.isfinite(low) and math.isfinite(high) and (low > null or high < null)


def decide(low: float, high: float, n: int, null: float = 0.0) -> str:
    """The rule: supported when n >= MIN_SEEDS and [low, high] excludes `null`, else inconclusive."""
    return SUPPORTED if n >= MIN_SEEDS and _excludes(low, high, null) else INCONCLUSIVE


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    return x[np.isfinite(x)]


def _no_spread(values: np.ndarray) -> bool:
    """Whether the values are all the same, up to float rounding: 0.6 - 0.2 and 0.5 - 0.1 differ in the last bit,
    and a t interval on such "different" values is as spurious as one of width 0."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.max(np.abs(values)))))


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high) of a one-sample t interval; one value gives none, and values without spread the sign
    test's interval (_median_interval) instead of a t interval of width 0."""
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    if _no_spread(values):
        return mean, *_median_interval(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_1samp(values, 0.0).confidence_interval(CONFIDENCE)
    return mean, float(interval.low), float(interval.high)


def _median_interval(values: np.ndarray) -> tuple[float, float]:
    """The distribution-free interval for the median from order statistics (the sign test's): [x_(k), x_(n+1-k)]
    covers it with probability 1 - 2 P(Binom(n, 1/2) < k), for the largest k that keeps that >= 95 %. Used when
    every value is the same (steps are counted at evaluations, so ties happen): a t interval would then have width
    0 and call 3 identical seeds certain. It exists from MIN_TIED_SEEDS values on (NaN below: never supported)."""
    n = len(values)
    k = int(stats.binom.ppf((1 - CONFIDENCE) / 2, n, 0.5))  # the largest k with P(Binom(n, 1/2) < k) < 2.5 %
    if k < 1:
        return math.nan, math.nan
    ordered = np.sort(values)
    return float(ordered[k - 1]), float(ordered[n - k])


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a - b) over seed pairs (a[i] and b[i] share a seed) with the paired t interval; non-finite pairs are
    left out."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired_difference: {len(x)} values against {len(y)}; pairs need one of each")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    effect, low, high = _t_interval(x - y)  # a paired t interval is the one-sample t interval of the differences
    method = TIES if len(x) >= 2 and _no_spread(x - y) else "paired t"
    return Estimate(effect, low, high, len(x), method, decide(low, high, len(x)), paired=True)


def unpaired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) with Welch's t interval (needs 2 finite values a side)."""
    x, y = _finite(a), _finite(b)
    n = min(len(x), len(y))
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "Welch t", INCONCLUSIVE)
    effect = float(np.mean(x) - np.mean(y))
    low = high = math.nan
    if n >= 2:
        if _no_spread(x) and _no_spread(y):
            pass  # no spread on either side: Welch's interval is undefined, and no width can be inferred
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                interval = stats.ttest_ind(x, y, equal_var=False).confidence_interval(CONFIDENCE)
            low, high = float(interval.low), float(interval.high)
    return Estimate(effect, low, high, n, "Welch t", decide(low, high, n))


def difference(a: dict[Any, float], b: dict[Any, float]) -> Estimate:
    """mean(a) - mean(b) for values keyed by seed (any hashable key naming one seed's run): paired on the keys both
    have when at least two are shared, else unpaired (then every value of each side counts)."""
    shared = [seed for seed in a if seed in b and math.isfinite(a[seed]) and math.isfinite(b[seed])]
    if len(shared) >= 2:
        return paired_difference([a[s] for s in shared], [b[s] for s in shared])
    return unpaired_difference(list(a.values()), list(b.values()))


@dataclasses.dataclass(frozen=True)
class Steps:
    """Steps to a threshold for one run; censored: it never got there and `value` is a lower bound."""

    value: float
    censored: bool = False


@dataclasses.dataclass(frozen=True)
class RatioEstimate(Estimate):
    censored_a: int = 0  # pairs used in which a's run never reached the threshold (value a lower bound)
    censored_b: int = 0
    left_out: int = 0  # pairs in which neither run reached it


def step_ratio(pairs: Sequence[tuple[Steps, Steps]]) -> RatioEstimate:
    """Geometric mean of a / b over seed pairs, with the t interval on log ratios.

    Censoring: a run that never reached the threshold enters with its lower bound. A ratio claim stays valid when
    every bound is on the claim's slower side (a faster with only b censored, or a slower with only a censored):
    the true ratio is then further from 1 than the one computed. Otherwise the claim is inconclusive. Pairs in
    which neither run reached it say nothing about the order and are left out.
    """
    used = [(x, y) for x, y in pairs if not (x.censored and y.censored) and x.value > 0 and y.value > 0]
    left_out = len(pairs) - len(used)
    logs = np.array([math.log(x.value / y.value) for x, y in used], dtype=np.float64)
    mean, low, high = _t_interval(logs)
    effect, low, high = (math.exp(v) if math.isfinite(v) else math.nan for v in (mean, low, high))
    censored_a = sum(x.censored for x, _ in used)
    censored_b = sum(y.censored for _, y in used)
    status = decide(low, high, len(used), 1.0)
    if status == SUPPORTED and ((high < 1.0 and censored_a) or (low > 1.0 and censored_b)):
        status = INCONCLUSIVE  # a bound on the faster side: the true ratio may be nearer 1, or past it
    method = TIES if len(logs) >= 2 and _no_spread(logs) else "paired t on log ratios"
    return RatioEstimate(effect, low, high, len(used), method, status, 1.0, True,
                         censored_a, censored_b, left_out)


def proportion(k: int, n: int) -> tuple[float, float, float]:
    """(k/n, low, high): the exact Clopper-Pearson 95 % interval; NaN for n = 0."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    interval = stats.binomtest(k, n).proportion_ci(CONFIDENCE, method="exact")
    return k / n, float(interval.low), float(interval.high)


def proportion_difference(k_a: int, n_a: int, k_b: int, n_b: int) -> Estimate:
    """k_a/n_a - k_b/n_b with Newcombe's hybrid score interval (method 10) from the two Wilson intervals."""
    if n_a <= 0 or n_b <= 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "Newcombe", INCONCLUSIVE)
    p_a, p_b = k_a / n_a, k_b / n_b
    wilson_a = stats.binomtest(k_a, n_a).proportion_ci(CONFIDENCE, method="wilson")
    wilson_b = stats.binomtest(k_b, n_b).proportion_ci(CONFIDENCE, method="wilson")
    effect = p_a - p_b
    low = effect - math.hypot(p_a - wilson_a.low, wilson_b.high - p_b)
    high = effect + math.hypot(wilson_a.high - p_a, p_b - wilson_b.low)
    low, high = max(low, -1.0), min(high, 1.0)
    n = min(n_a, n_b)
    return Estimate(effect, low, high, n, "Newcombe", decide(low, high, n))
