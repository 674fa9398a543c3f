"""The findings the report states first: what the runs' own numbers support, with how many seeds agree, and what
is within seed noise. Each finding is a sentence plus the numbers behind it (findings.json), so a reader can check
it against the tables and a test can check the wording against fixed runs.

Rules (stated in the report's methods too):
* Convergence: residual and plain runs are paired by seed (same initial weights where shapes agree, same data
  order). The threshold is the highest report threshold every plain seed reached; a pair's ratio is the residual
  run's steps to it over the plain run's. When plain never reaches the lowest threshold, the finding says so and
  counts the residual seeds that did.
* Dying: per variant, the count of seeds whose verdict is `died` at each filter count; `damaged`,
  `transient_death`, `not_learning` and `diverged` are counted and stated too, never folded into "died".
* Noise: at each filter count, variants are ranked by mean final eval top-1; neighbours whose seed ranges
  (min-max) overlap are within seed noise, the others are separated in every seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from analysis.grouping import Group, paired_runs, run_seed
from analysis.tables import SOURCE_EVAL, final_values, run_crossings, threshold_source


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str  # "convergence" | "dying" | "noise" | "diverged" | "seeds"
    text: str
    data: dict[str, Any]


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def _metric_name(source: str) -> str:
    return "eval top-1" if source == SOURCE_EVAL else "train accuracy"


def convergence_findings(group: Group, thresholds: Sequence[float]) -> list[Finding]:
    """Per filter count: each residual variant's steps to the threshold as a multiple of plain's, seed by seed."""
    findings = []
    totals: dict[str, list[int]] = {}  # variant -> [pairs faster, pairs compared]
    for width in group.widths:
        curves = group.curves_at(width)
        plain = [c for c in curves if not c.is_residual]
        if len(plain) != 1 or not thresholds:
            continue
        reference = plain[0]
        source = threshold_source(curves)
        crossing = {run.label: run_crossings(run, source, thresholds) for c in curves for run in c.runs}
        last = max(run.last_step for c in curves for run in c.runs)
        reached = [t for t in thresholds if all(crossing[r.label][t].step is not None for r in reference.runs)]
        residual = [c for c in curves if c.is_residual]
        if reached:
            t = max(reached)
            parts, data = [], {}
            for curve in residual:
                ratios = []
                for run, twin in paired_runs(curve, reference):
                    step, plain_step = crossing[run.label][t].step, crossing[twin.label][t].step
                    ratios.append(None if step is None else step / plain_step)
                faster = sum(r is not None and r < 1 for r in ratios)
                shown = ", ".join(f"{r:.2f}x" if r is not None else f"not reached by step {last}" for r in ratios)
                parts.append(f"{curve.label} {shown} ({faster}/{len(ratios)} seeds faster)")
                data[curve.label] = {"ratios": ratios, "faster": faster, "seeds": len(ratios)}
                total = totals.setdefault(curve.label, [0, 0])
                total[0] += faster
                total[1] += len(ratios)
            plain_steps = [crossing[r.label][t].step for r in reference.runs]
            text = (f"Filter count {width}: steps to {_percent(t)} {_metric_name(source)} as a multiple of plain's "
                    f"(plain: steps {', '.join(map(str, plain_steps))}): " + "; ".join(parts) + ".")
            findings.append(Finding("convergence", text, {"width": width, "threshold": t, "source": source,
                                                          "plain_steps": plain_steps, "variants": data}))
        else:  # no threshold every plain seed reached: the lowest, and which seeds got there at all
            t = min(thresholds)
            plain_steps = [crossing[r.label][t].step for r in reference.runs]
            plain_got = [s for s in plain_steps if s is not None]
            parts, data = [], {}
            for curve in residual:
                steps = [crossing[run.label][t].step for run in curve.runs]
                got = [s for s in steps if s is not None]
                # Seed by seed: faster when it got there and its plain twin did not, or got there first.
                faster = 0
                for run, twin in paired_runs(curve, reference):
                    step, plain_step = crossing[run.label][t].step, crossing[twin.label][t].step
                    faster += step is not None and (plain_step is None or step < plain_step)
                parts.append(f"{curve.label} reached it in {len(got)}/{len(steps)} seeds"
                             + (f" (steps {', '.join(map(str, got))})" if got else "")
                             + (f", {faster}/{len(steps)} seeds faster than plain" if plain_got else ""))
                data[curve.label] = {"steps": steps, "reached": len(got), "seeds": len(steps), "faster": faster}
                total = totals.setdefault(curve.label, [0, 0])
                total[0] += faster
                total[1] += len(steps)
            n = len(reference.runs)
            if plain_got:
                head = (f"plain reached {_percent(t)} {_metric_name(source)} by step {last} in only "
                        f"{len(plain_got)}/{n} seeds (steps {', '.join(map(str, plain_got))})")
            else:
                head = f"plain did not reach {_percent(t)} {_metric_name(source)} by step {last} in {n}/{n} seeds"
            text = f"Filter count {width}: {head}; " + "; ".join(parts) + "."
            findings.append(Finding("convergence", text, {"width": width, "threshold": t, "source": source,
                                                          "plain_steps": plain_steps, "variants": data}))
    if totals:
        summary = "; ".join(f"{label} in {f}/{n}" for label, (f, n) in totals.items())
        findings.insert(0, Finding(
            "convergence", "Residual vs plain, over every (filter count, seed) pair: the residual net reached the "
            f"accuracy threshold in fewer steps than plain (or plain never reached it): {summary}.",
            {"pairs": {label: {"faster": f, "pairs": n} for label, (f, n) in totals.items()}}))
    return findings


def _counts_by_width(group: Group, label: str, verdict: str) -> dict[int, tuple[int, int]]:
    out = {}
    for curve in group.curves:
        if curve.label == label:
            out[curve.width] = (sum(run.verdict_name == verdict for run in curve.runs), len(curve.runs))
    return out


def _describe_counts(counts: dict[int, tuple[int, int]]) -> str:
    values = set(counts.values())
    if len(values) == 1 and len(counts) > 1:
        k, n = values.pop()
        return f"{k}/{n} seeds at every filter count ({', '.join(map(str, sorted(counts)))})"
    return ", ".join(f"{k}/{n} at {width}" for width, (k, n) in sorted(counts.items()))


def dying_findings(group: Group) -> list[Finding]:
    """Per variant: seeds that died at each filter count; the runs that did not learn, or diverged, likewise."""
    findings = []
    died = {label: _counts_by_width(group, label, "died") for label in group.labels}
    parts = [f"{label} died in {_describe_counts(counts)}" for label, counts in died.items()]
    findings.append(Finding("dying", "Deaths (verdict died): " + "; ".join(parts) + ".",
                            {"died": {label: {str(w): list(c) for w, c in counts.items()}
                                      for label, counts in died.items()}}))
    for verdict, words in (("damaged", "Damaged (not dead, but a final pre-pool zero fraction of 0.9 or more)"),
                           ("transient_death", "Died and recovered (transient_death)"),
                           ("not_learning", "Alive but not learning beyond chance (not_learning)"),
                           ("diverged", "Diverged (a non-finite loss; never counted as died)")):
        counts = {label: _counts_by_width(group, label, verdict) for label in group.labels}
        hit = {label: c for label, c in counts.items() if any(k for k, _ in c.values())}
        if hit:
            parts = [f"{label}: {', '.join(f'{k}/{n} at {w}' for w, (k, n) in sorted(c.items()) if k)}"
                     for label, c in hit.items()]
            findings.append(Finding("dying", f"{words}: " + "; ".join(parts) + ".",
                                    {verdict: {label: {str(w): list(v) for w, v in c.items()}
                                               for label, c in hit.items()}}))
    return findings


def noise_findings(group: Group) -> list[Finding]:
    """Per filter count: final eval top-1 by variant (mean and seed range), and which neighbours in that ranking
    are within seed noise (ranges overlap) or separated in every seed."""
    findings = []
    for width in group.widths:
        ranked = []
        for curve in group.curves_at(width):
            values = [final_values(run)["eval_top1"] for run in curve.runs if run.verdict_name != "diverged"]
            values = [v for v in values if math.isfinite(v)]
            if values:
                ranked.append((curve.label, sum(values) / len(values), min(values), max(values), len(values)))
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda r: -r[1])
        shown = ", ".join(f"{label} {_percent(mean)} ({_percent(low)}-{_percent(high)}, {n} seeds)"
                          for label, mean, low, high, n in ranked)
        within, apart = [], []
        for (a, _, a_low, _, na), (b, _, _, b_high, nb) in itertools.pairwise(ranked):
            if na > 1 and nb > 1:
                (within if a_low <= b_high else apart).append(f"{a} vs {b}")
        text = f"Filter count {width}, final eval top-1: {shown}."
        if within:
            text += f" Within seed noise (seed ranges overlap): {', '.join(within)}."
        if apart:
            text += f" Separated in every seed: {', '.join(apart)}."
        findings.append(Finding("noise", text, {"width": width, "ranking": [
            {"variant": label, "mean": mean, "min": low, "max": high, "seeds": n}
            for label, mean, low, high, n in ranked], "within_noise": within, "separated": apart}))
    return findings


def seeds_finding(group: Group) -> Finding:
    per_curve = sorted({len(curve.runs) for curve in group.curves})
    seeds = sorted({str(run_seed(run)) for run in group.runs})
    few = (f" With {per_curve[0]} seed(s) a cell's 'k/{per_curve[0]}' is weak evidence: rerun with other seeds "
           "(the config's seed_offset) before relying on it." if per_curve and per_curve[0] <= 2 else "")
    return Finding("seeds", f"Seeds per (filter count, variant): {'/'.join(map(str, per_curve))} (seeds "
                            f"{', '.join(seeds)}).{few}", {"per_curve": per_curve, "seeds": seeds})


def group_findings(group: Group, thresholds: Sequence[float]) -> list[Finding]:
    return [seeds_finding(group), *convergence_findings(group, thresholds), *dying_findings(group),
            *noise_findings(group)]
