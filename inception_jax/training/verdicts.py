"""The verdict a run's logged history gets (docs/dying.md): dead windows, died / transient death / damaged /
diverged, and not learning. Pure Python, so the analysis reads the same rules without loading JAX; the README and
the report quote DEFINITION.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

WINDOW = 10  # K logged steps per window
DEAD_ZERO_FRACTION = 0.99
DEAD_LOSS_FRACTION = 0.95  # of ln C
DAMAGED_ZERO_FRACTION = 0.9
# Least to most severe (the report breaks ties between seeds by it).
VERDICTS = ("healthy", "not_learning", "transient_death", "damaged", "died", "diverged")
CHANCE_SIGMAS = 3.0  # not_learning: final eval top-1 within this many binomial standard errors of chance
# A run that had died has not recovered while its final loss stays >= DEAD_LOSS_FRACTION * ln C and its final eval
# top-1 is at most this multiple of 1/C (or the chance bound, when that is higher): a few units firing again is
# not recovery when the network still predicts no better than the class prior (docs/dying.md §3).
RECOVERY_TOP1_FACTOR = 1.5

DEFINITION = (
    f"Windows are K={WINDOW} consecutive logged train steps. The window ending at step t is dead iff "
    f"mean(prepool_zero_frac) >= {DEAD_ZERO_FRACTION} and mean(loss) >= {DEAD_LOSS_FRACTION}*ln(C) over it "
    "(C = number of classes; prepool_zero_frac = fraction of exact zeros in the pre-pool activation). "
    "diverged: any non-finite loss (never called died). died: the last window is dead; t_death is the first step "
    "of the earliest window in the final unbroken run of dead windows. transient_death: some window was dead but "
    f"the last is not. damaged: not dead, but the last window's mean zero fraction >= {DAMAGED_ZERO_FRACTION}. "
    "Once the final eval top-1 is known: a transient_death whose last window's mean loss is still >= "
    f"{DEAD_LOSS_FRACTION}*ln(C) and whose final eval top-1 is at most max(chance bound, {RECOVERY_TOP1_FACTOR:g}/C) "
    "has not recovered and is died (t_death: the first step of its last unbroken run of dead windows); a "
    "transient_death or healthy run whose final eval top-1 is at most the chance bound "
    f"1/C + {CHANCE_SIGMAS:g}·sqrt((1/C)(1 - 1/C)/n) (n eval examples) is not_learning: alive, and nothing "
    "measurable learned. healthy: none of these.")


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: str
    t_death: int | None
    final_zero_frac: float
    final_loss: float
    window: int = WINDOW
    final_eval_top1: float | None = None
    chance_top1: float | None = None  # the not_learning bound for this run's classes and eval set
    definition: str = DEFINITION
    # The first step of the last unbroken run of dead windows (died: t_death; transient_death: the death it came
    # back from, or, once evaluated, did not). None when no window was dead.
    t_last_death: int | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Verdict:
        """A verdict.json record, also one written before a field existed (missing numbers read as NaN/None)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in record.items() if k in fields}
        known.setdefault("t_death", None)
        for key in ("final_zero_frac", "final_loss"):
            value = known.get(key)
            known[key] = float(value) if isinstance(value, (int, float)) else math.nan
        return cls(**known)


def chance_top1(num_classes: int, num_examples: int) -> float:
    """The top-1 accuracy guessing stays at or below, but for a 1-in-740 chance: 1/C plus CHANCE_SIGMAS binomial
    standard errors over `num_examples` examples."""
    p = 1.0 / num_classes
    return p + CHANCE_SIGMAS * math.sqrt(p * (1.0 - p) / max(num_examples, 1))


def recovery_top1(num_classes: int, num_examples: int) -> float:
    """The final eval top-1 a run that had died must exceed (or else leave the dead loss band) to count as
    recovered: RECOVERY_TOP1_FACTOR / C, or the chance bound when a small eval set makes that higher."""
    return max(RECOVERY_TOP1_FACTOR / num_classes, chance_top1(num_classes, num_examples))


def with_evaluation(verdict: Verdict, eval_top1: float | None, num_examples: int, num_classes: int) -> Verdict:
    """The verdict once the final evaluation is known (DEFINITION, docs/dying.md §3):
    * a transient_death still in the dead loss band (final loss >= 0.95 ln C) with an eval top-1 at most
      recovery_top1 never recovered: died, dated by its last death;
    * a healthy or transient_death run whose eval top-1 is within chance is not_learning (alive, maybe alive
      again, and nothing measurable learned).
    So no run whose final eval top-1 is at chance is healthy or recovered. Applying it twice changes nothing, so
    the analysis applies it to stored verdicts written before a rule existed."""
    if eval_top1 is None or not math.isfinite(eval_top1) or num_examples < 1:
        return verdict
    bound = chance_top1(num_classes, num_examples)
    name, t_death = verdict.verdict, verdict.t_death
    in_dead_band = math.isfinite(verdict.final_loss) and verdict.final_loss >= DEAD_LOSS_FRACTION * math.log(
        num_classes)
    if name == "transient_death" and in_dead_band and eval_top1 <= recovery_top1(num_classes, num_examples):
        name, t_death = "died", verdict.t_last_death
    elif name in ("healthy", "transient_death") and eval_top1 <= bound:
        name = "not_learning"
    return dataclasses.replace(verdict, verdict=name, t_death=t_death, final_eval_top1=float(eval_top1),
                               chance_top1=bound)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def judge(steps: Sequence[int], zero_fracs: Sequence[float], losses: Sequence[float], num_classes: int,
          *, window: int = WINDOW) -> Verdict:
    """The verdict of DEFINITION for a run's logged train history (one entry per logged step, in step order)."""
    if len(steps) != len(zero_fracs) or len(steps) != len(losses):
        raise ValueError(f"judge: {len(steps)} steps, {len(zero_fracs)} zero fractions, {len(losses)} losses")
    if not steps:
        return Verdict("healthy", None, math.nan, math.nan, window)
    if any(not math.isfinite(v) for v in losses):
        finite = [v for v in zero_fracs if math.isfinite(v)]
        return Verdict("diverged", None, finite[-1] if finite else math.nan, math.nan, window)
    k = min(window, len(steps))
    loss_floor = DEAD_LOSS_FRACTION * math.log(num_classes)
    dead = [(_mean(zero_fracs[i - k + 1:i + 1]) >= DEAD_ZERO_FRACTION
             and _mean(losses[i - k + 1:i + 1]) >= loss_floor) for i in range(k - 1, len(steps))]
    final_z, final_loss = _mean(zero_fracs[-k:]), _mean(losses[-k:])
    if any(dead):
        last = max(i for i, d in enumerate(dead) if d)
        first = last
        while first > 0 and dead[first - 1]:
            first -= 1
        # Window index `first` ends at history index first + k - 1 and so starts at history index `first`.
        t_last_death = int(steps[first])
        if dead[-1]:
            return Verdict("died", t_last_death, final_z, final_loss, window, t_last_death=t_last_death)
        return Verdict("transient_death", None, final_z, final_loss, window, t_last_death=t_last_death)
    if final_z >= DAMAGED_ZERO_FRACTION:
        return Verdict("damaged", None, final_z, final_loss, window)
    return Verdict("healthy", None, final_z, final_loss, window)


def dead_windows_at_end(zero_fracs: Sequence[float], losses: Sequence[float], num_classes: int,
                        *, window: int = WINDOW) -> int:
    """How many consecutive windows, ending with the latest, are dead (for stopping dead runs early)."""
    count = 0
    loss_floor = DEAD_LOSS_FRACTION * math.log(num_classes)
    for end in range(len(zero_fracs), window - 1, -1):
        z, loss = zero_fracs[end - window:end], losses[end - window:end]
        if _mean(z) >= DEAD_ZERO_FRACTION and _mean(loss) >= loss_floor:
            count += 1
        else:
            break
    return count
