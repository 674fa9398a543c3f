"""The dying verdicts: their names, how seeds are combined into one verdict, and their definitions.

The verdicts are computed by training (inception_jax/diagnostics.py) and read from verdict.json; this module
never recomputes them, it only orders, combines and documents them. DEFINITION_TEXT is DYING.md's definition,
copied verbatim so the report shows exactly what the verdict names mean.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

# Least to most severe. Severity only breaks ties when seeds disagree; "diverged" is a numerical failure,
# never a kind of death, and sorts last so that a tie with it is never hidden behind a milder verdict.
VERDICTS = ("healthy", "transient_death", "damaged", "died", "diverged")
UNKNOWN = "unknown"  # no verdict.json and no verdict in result.json

# The z metric of the definition, then the definition itself (shared/reference/DYING.md, verbatim).
ZERO_FRACTION_DEFINITION = (
    "| `prepool_zero_frac` z_t | mean(1[a == 0]) over the B×H×W×C pre-pool tensor `a` (output of the last block's "
    "ReLU) | the paper's symptom; the main death signal |"
)
DEFINITION_TEXT = """\
**Definition of "died"** (C = number of classes, K = 10
logged steps):

* The window ending at step t is **dead** iff mean(z[t-K+1..t]) >= 0.99 **and**
  mean(loss[t-K+1..t]) >= 0.95·ln C.
* The run **died** iff the last window of the run is dead. **t_death** is the first step of
  the earliest window in the final unbroken run of dead windows.
* **transient death**: some window was dead but the last one is not (the net recovered).
  **damaged**: final z >= 0.9 without meeting the dead condition.
* **diverged**: any non-finite loss. Report it separately and never call it "died".
* Do not use "all activations exactly zero" (the strict version). Only 2 of 53 probe runs had
  a final z that rounds to 1.0000, and only those 2 had batches with every pre-pool value
  exactly 0. The other deaths ended with z between 0.990 and 0.9999,
  with a few channels occasionally firing but too weakly to learn (loss 2.21 to 2.43,
  accuracy about 10 %).
"""


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
