"""The dying verdicts: their names, how seeds are combined into one verdict, and their definitions.

The verdicts are computed by training (inception_jax/training/verdicts.py) and read from verdict.json; this module never
recomputes them from a history. It orders, combines and documents them with training's own definitions, and brings a
stored verdict under training's final-evaluation rule (`verdicts.with_evaluation`, docs/dying.md §3) so that a run
judged before a rule existed reads as one judged after it (a death never recovered from, at chance, is `died`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from inception_jax.training import verdicts as rules

# The rules are training's (inception_jax/training/verdicts.py: pure Python), quoted here so the report states
# exactly what each verdict name means. Least to most severe: severity only breaks ties when seeds disagree;
# "diverged" is a numerical failure, never a kind of death, and sorts last so a tie with it is never hidden behind
# a milder one.
VERDICTS = rules.VERDICTS
UNKNOWN = "unknown"  # no verdict.json and no verdict in result.json
ZERO_FRACTION_DEFINITION = ("z = prepool_zero_frac: the fraction of exact zeros in the pre-pool activation (the "
                            "output of the last block's ReLU), over the whole batch tensor")
DEFINITION_TEXT = rules.DEFINITION


def current_verdict(stored: Mapping[str, Any], eval_top1: float, num_examples: int | None,
                    num_classes: int | None) -> dict[str, Any]:
    """`stored` (verdict.json) with training's with_evaluation applied to the run's final eval top-1; unchanged
    when the evaluation, its size or the class count is unknown. A changed record keeps the stored verdict under
    "stored_verdict"."""
    if not isinstance(num_classes, int) or num_classes < 2 or not num_examples or not math.isfinite(eval_top1):
        return dict(stored)
    try:
        judged = rules.with_evaluation(rules.Verdict.from_json(stored), eval_top1, int(num_examples), num_classes)
    except (TypeError, ValueError):  # a verdict.json of another shape: shown as stored
        return dict(stored)
    if judged.verdict == stored.get("verdict"):
        return dict(stored)
    return {**stored, "verdict": judged.verdict, "t_death": judged.t_death, "stored_verdict": stored.get("verdict"),
            "final_eval_top1": judged.final_eval_top1, "chance_top1": judged.chance_top1}


def severity(verdict: str) -> int:
    """Position in VERDICTS; an unknown or unrecognised verdict is below every known one."""
    return VERDICTS.index(verdict) if verdict in VERDICTS else -1


def combine_verdicts(verdicts: Iterable[str | None]) -> tuple[str, Counter[str]]:
    """(the cell's verdict, count per verdict) over the seeds of one configuration.

    Rule: the majority among the known verdicts; a tie goes to the more severe one. Runs without a verdict are
    counted as "unknown" but never outvote a known verdict; "unknown" results only when no run has one.
    """
    counts = Counter(v if v in VERDICTS else UNKNOWN for v in verdicts)
    known = {v: n for v, n in counts.items() if v != UNKNOWN}
    if not known:
        return UNKNOWN, counts
    return max(known, key=lambda v: (known[v], severity(v))), counts


def format_counts(counts: Counter[str]) -> str:
    """'died 2/3, diverged 1/3', most severe first."""
    total = sum(counts.values())
    ordered = sorted(counts, key=lambda v: -severity(v))
    return ", ".join(f"{v} {counts[v]}/{total}" for v in ordered)


# One line per verdict for readers (the report's glossary and tooltips); DEFINITION_TEXT is the exact rule.
SHORT_DEFINITIONS = {
    "healthy": "alive and learned something: none of the failures below.",
    "not_learning": f"alive, but the final eval top-1 is within chance (at most 1/C plus {rules.CHANCE_SIGMAS:g} "
                    "binomial standard errors): nothing measurable was learned.",
    "transient_death": "some window of the run was dead (see died), but the run recovered by its end.",
    "damaged": f"not dead at the end, but at least {rules.DAMAGED_ZERO_FRACTION:.0%} of the pre-pool activation "
               "is exactly zero over the last window.",
    "died": f"the paper's 'died': the last layer before pooling went dead (at least {rules.DEAD_ZERO_FRACTION:.0%} "
            f"exact zeros over a window of {rules.WINDOW} logged steps, with the loss at chance, "
            f"{rules.DEAD_LOSS_FRACTION:g}·ln C or more) and the run never recovered.",
    "diverged": "the loss became NaN or infinite: a numerical failure, never counted as died.",
    UNKNOWN: "the run wrote no verdict.",
}
