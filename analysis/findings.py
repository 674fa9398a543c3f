"""The findings the report states first: each comparison the runs allow, as an effect with its 95 % interval, n and
one word (supported / inconclusive), plus the descriptive lines they rest on. Each finding is a sentence plus the
numbers behind it (findings.json), so a reader can check it against the tables, a test can check the wording
against fixed runs, and analysis.compare can match a claim across sweeps by its `claim` id.

Claims (the numbers and the rule are analysis/statistics.py's; stated in the report's methods too), per group:
* top1: at each filter count, every pair of variants, final eval top-1 (later variant in display order minus the
  earlier, so "residual vs plain"), paired by seed where both have the seed.
* steps: at each filter count, each residual variant against plain, steps to one accuracy threshold (the highest
  every plain seed reached, else the lowest), paired by seed; never reaching it is censored (a lower bound).
* deaths: at each filter count, every pair of variants where either had a death: difference of the proportions of
  seeds whose verdict is died.
* width (issue #30's "width effect"): each variant at its smallest filter count against each larger one, deaths
  and final eval top-1.
Descriptive lines (status ""): seeds per cell; deaths per cell with exact intervals and the other verdicts'
counts; the final eval top-1 ranking. Diverged runs have no final evaluation and are left out of top-1 and steps;
they count in a cell's n for deaths (a divergence is never a death).
Order: supported claims first (the headline), then the descriptive lines, then the inconclusive claims.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from analysis import statistics
from analysis.grouping import Curve, Group, run_seed
from analysis.runs import RunRecord
from analysis.statistics import Estimate, RatioEstimate, Steps
from analysis.tables import SOURCE_EVAL, final_values, run_crossings, threshold_source


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str  # claims: "top1" | "steps" | "deaths" | "width"; descriptive: "seeds" | "dying" | "ranking"
    text: str
    data: dict[str, Any]  # claims: effect, low, high, n, method, null, paired, plus the counts behind them
    status: str = ""  # "supported" | "inconclusive" for a claim; "" for a descriptive line
    claim: str = ""  # a claim's id, stable across sweeps: kind/filter count/variants ("" for descriptive lines)

    @property
    def headline(self) -> bool:
        return self.status == statistics.SUPPORTED


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _percent(value: float) -> str:
    return f"{100 * value:.0f} %"


def _points(value: float) -> str:
    return f"{100 * value:+.1f}" if math.isfinite(value) else "–"


def _times(value: float) -> str:
    return f"{value:.2f}x" if math.isfinite(value) else "–"


def _metric_name(source: str) -> str:
    return "eval top-1" if source == SOURCE_EVAL else "train accuracy"


def _interval(estimate: Estimate, fmt) -> str:
    if not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return "no interval"
    return f"95 % interval {fmt(estimate.low)} to {fmt(estimate.high)}"


def _verdict_words(estimate: Estimate, extra: str = "") -> str:
    if estimate.status == statistics.SUPPORTED:
        return "supported"
    why = extra
    if estimate.n < statistics.MIN_SEEDS:
        why = f"at least {statistics.MIN_SEEDS} are needed"
    elif estimate.method == statistics.TIES and not math.isfinite(estimate.low):
        why = f"every seed gave the same value: at least {statistics.MIN_TIED_SEEDS} are needed"
    return f"inconclusive with {_count(estimate.n, 'seed')}" + (f" ({why})" if why else "")


def _claim(kind: str, claim: str, subject: str, estimate: Estimate, body: str, **data: Any) -> Finding:
    return Finding(kind, f"{subject}: {body}.", {"subject": subject, **estimate.to_json(), **data},
                   estimate.status, claim)


def _by_seed(runs: Sequence[RunRecord]) -> dict[tuple[Any, int], RunRecord]:
    """Runs that did not diverge, keyed by (seed, k): the k-th run of that seed in label order. A folder of sweeps
    may hold one seed twice (the same seeds rerun on another machine); the k-th of one curve pairs with the k-th of
    another, and none is dropped."""
    out: dict[tuple[Any, int], RunRecord] = {}
    for run in sorted((r for r in runs if r.verdict_name != "diverged"), key=lambda r: r.label):
        k = 0
        while (run_seed(run), k) in out:
            k += 1
        out[(run_seed(run), k)] = run
    return out


def _seeded(runs: Sequence[RunRecord], value) -> dict[tuple[Any, int], float]:
    """`value(run)` per run that did not diverge, keyed as _by_seed."""
    return {key: value(run) for key, run in _by_seed(runs).items()}


def _pairs(curve: Curve, reference: Curve) -> list[tuple[RunRecord, RunRecord]]:
    """(run of `curve`, its twin in `reference`): same seed (and same k, _by_seed); runs that diverged left out."""
    twins = _by_seed(reference.runs)
    return [(run, twins[key]) for key, run in _by_seed(curve.runs).items() if key in twins]


def _final_top1(run: RunRecord) -> float:
    return final_values(run)["eval_top1"]


def _n_words(estimate: Estimate) -> str:
    return _count(estimate.n, "seed pair") if estimate.paired else f"{_count(estimate.n, 'seed')} each"


def top1_findings(group: Group) -> list[Finding]:
    """At each filter count, every pair of variants: final eval top-1, later minus earlier in display order."""
    findings = []
    for width in group.widths:
        for earlier, later in itertools.combinations(group.curves_at(width), 2):
            a, b = _seeded(later.runs, _final_top1), _seeded(earlier.runs, _final_top1)
            if not any(map(math.isfinite, a.values())) or not any(map(math.isfinite, b.values())):
                continue
            estimate = statistics.difference(a, b)
            subject = f"Filter count {width}, final eval top-1 of {later.name} against {earlier.name}"
            body = (f"{_points(estimate.effect)} points ({_interval(estimate, _points)}, {_n_words(estimate)}): "
                    + _verdict_words(estimate))
            findings.append(_claim("top1", f"top1/{width}/{later.label} vs {earlier.label}", subject, estimate, body,
                                   width=width, variants=[later.label, earlier.label], unit="top-1 difference"))
    return findings


def _censor_bound(run: RunRecord, source: str) -> float:
    """A run that never reached a threshold: its last logged step of `source` plus one logging interval."""
    steps = run.eval.steps if source == SOURCE_EVAL else run.train.steps
    if len(steps) == 0:
        return float(run.last_step + 1)
    interval = int(steps[-1] - steps[-2]) if len(steps) > 1 else 1
    return float(steps[-1] + interval)


def steps_findings(group: Group, thresholds: Sequence[float]) -> list[Finding]:
    """At each filter count, each residual variant against plain: steps to one threshold, paired by seed."""
    findings = []
    if not thresholds:
        return findings
    for width in group.widths:
        curves = [c for c in group.curves_at(width) if any(r.verdict_name != "diverged" for r in c.runs)]
        plain = [c for c in curves if not c.is_residual]
        if len(plain) != 1:
            continue
        reference = plain[0]
        source = threshold_source(curves)
        crossing = {run.label: run_crossings(run, source, thresholds) for c in curves for run in c.runs}
        reached = [t for t in thresholds if all(crossing[r.label][t].step is not None for r in reference.runs)]
        t = max(reached) if reached else min(thresholds)

        steps = {}
        for run in (r for c in curves for r in c.runs):
            step = crossing[run.label][t].step
            steps[run.label] = (Steps(float(step)) if step is not None
                                else Steps(_censor_bound(run, source), censored=True))
        for curve in (c for c in curves if c.is_residual):
            pairs = [(steps[run.label], steps[twin.label], run_seed(run)) for run, twin in _pairs(curve, reference)]
            estimate = statistics.step_ratio([(x, y) for x, y, _ in pairs])
            if estimate.n == 0:  # no pair in which either run reached it: nothing to compare
                continue
            notes = _censoring_notes(estimate, curve.name, pairs)
            subject = (f"Filter count {width}, steps to {_percent(t)} {_metric_name(source)} of {curve.name} "
                       "against plain")
            blocked = ("never-reached runs on the faster side"
                       if statistics.decide(estimate.low, estimate.high, estimate.n, 1.0) == statistics.SUPPORTED
                       else "")
            body = (f"{_times(estimate.effect)} plain's steps ({_interval(estimate, _times)}, {_n_words(estimate)}"
                    + "".join(f"; {note}" for note in notes) + "): " + _verdict_words(estimate, blocked))
            per_seed = [{"seed": seed, "steps": [x.value, y.value], "censored": [x.censored, y.censored]}
                        for x, y, seed in pairs]
            findings.append(_claim("steps", f"steps/{width}/{curve.label} vs {reference.label}", subject, estimate,
                                   body, width=width, variants=[curve.label, reference.label], threshold=t,
                                   source=source, unit="ratio of steps", pairs=per_seed))
    return findings


def _censoring_notes(estimate: RatioEstimate, name: str, pairs: Sequence[tuple[Steps, Steps, Any]]) -> list[str]:
    notes = []
    for side, count, label in ((0, estimate.censored_a, name), (1, estimate.censored_b, "plain")):
        if count:
            bounds = sorted({int(pair[side].value) for pair in pairs
                             if pair[side].censored and not pair[1 - side].censored})
            notes.append(f"{label} never reached it in {count}, counted as step {', '.join(map(str, bounds))}, "
                         "a lower bound")
    if estimate.left_out:
        notes.append(f"{_count(estimate.left_out, 'pair')} where neither reached it left out")
    return notes


def _deaths(curve: Curve) -> tuple[int, int]:
    return sum(run.verdict_name == "died" for run in curve.runs), len(curve.runs)


def deaths_findings(group: Group) -> list[Finding]:
    """At each filter count, every pair of variants where either side had a death: difference of proportions."""
    findings = []
    for width in group.widths:
        for earlier, later in itertools.combinations(group.curves_at(width), 2):
            (k_a, n_a), (k_b, n_b) = _deaths(later), _deaths(earlier)
            if not (k_a or k_b):
                continue
            estimate = statistics.proportion_difference(k_a, n_a, k_b, n_b)
            subject = f"Filter count {width}, deaths of {later.name} against {earlier.name}"
            body = (f"{k_a}/{n_a} vs {k_b}/{n_b}, {_points(estimate.effect)} points ({_interval(estimate, _points)}): "
                    + _verdict_words(estimate))
            findings.append(_claim("deaths", f"deaths/{width}/{later.label} vs {earlier.label}", subject, estimate,
                                   body, width=width, variants=[later.label, earlier.label], died=[k_a, k_b],
                                   seeds=[n_a, n_b], unit="difference of death proportions"))
    return findings


def width_findings(group: Group) -> list[Finding]:
    """The width effect: each variant at its smallest filter count against each larger one, deaths (always, so
    'no death at either width' is a stated result) and final eval top-1."""
    findings = []
    for label in group.labels:
        curves = sorted((c for c in group.curves if c.label == label), key=lambda c: c.width)
        for narrow, wide in ((curves[0], c) for c in curves[1:]):
            name, pair = wide.name, f"{wide.width} against {narrow.width} filters"
            (k_a, n_a), (k_b, n_b) = _deaths(wide), _deaths(narrow)
            estimate = statistics.proportion_difference(k_a, n_a, k_b, n_b)
            body = (f"{k_a}/{n_a} vs {k_b}/{n_b}, {_points(estimate.effect)} points "
                    f"({_interval(estimate, _points)}): " + _verdict_words(estimate))
            findings.append(_claim("width", f"width/deaths/{label}/{wide.width} vs {narrow.width}",
                                   f"Width effect on deaths, {name}, {pair}", estimate, body,
                                   widths=[wide.width, narrow.width],
                                   variant=label, measure="deaths", died=[k_a, k_b], seeds=[n_a, n_b],
                                   unit="difference of death proportions"))
            a, b = _seeded(wide.runs, _final_top1), _seeded(narrow.runs, _final_top1)
            if any(map(math.isfinite, a.values())) and any(map(math.isfinite, b.values())):
                estimate = statistics.difference(a, b)
                body = (f"{_points(estimate.effect)} points ({_interval(estimate, _points)}, "
                        f"{_n_words(estimate)}): " + _verdict_words(estimate))
                findings.append(_claim("width", f"width/top1/{label}/{wide.width} vs {narrow.width}",
                                       f"Width effect on final eval top-1, {name}, {pair}", estimate, body,
                                       widths=[wide.width, narrow.width], variant=label, measure="top1",
                                       unit="top-1 difference"))
    return findings


def _counts_by_width(group: Group, label: str, verdict: str) -> dict[int, tuple[int, int]]:
    out = {}
    for curve in group.curves:
        if curve.label == label:
            out[curve.width] = (sum(run.verdict_name == verdict for run in curve.runs), len(curve.runs))
    return out


def dying_findings(group: Group) -> list[Finding]:
    """Per variant: seeds that died at each filter count, with exact intervals; the other verdicts likewise."""
    findings = []
    died = {label: _counts_by_width(group, label, "died") for label in group.labels}
    parts = []
    for label, counts in died.items():
        cells = []
        for width, (k, n) in sorted(counts.items()):
            _, low, high = statistics.proportion(k, n)
            cells.append(f"{k}/{n} at {width} ({_percent(low)}-{_percent(high)})")
        parts.append(f"{group.name_of(label)} {', '.join(cells)}")
    findings.append(Finding("dying", "Deaths (verdict died) per cell, with exact 95 % intervals of the death rate: "
                            + "; ".join(parts) + ".",
                            {"died": {label: {str(w): list(c) for w, c in counts.items()}
                                      for label, counts in died.items()}}))
    for verdict, words in (("damaged", "Damaged (not dead, but a final pre-pool zero fraction of 0.9 or more)"),
                           ("transient_death", "Died and recovered (transient_death)"),
                           ("not_learning", "Not learning beyond chance (not_learning; never counted as healthy)"),
                           ("diverged", "Diverged (a non-finite loss; never counted as died)")):
        counts = {label: _counts_by_width(group, label, verdict) for label in group.labels}
        hit = {label: c for label, c in counts.items() if any(k for k, _ in c.values())}
        if hit:
            parts = [f"{group.name_of(label)}: {', '.join(f'{k}/{n} at {w}' for w, (k, n) in sorted(c.items()) if k)}"
                     for label, c in hit.items()]
            findings.append(Finding("dying", f"{words}: " + "; ".join(parts) + ".",
                                    {verdict: {label: {str(w): list(v) for w, v in c.items()}
                                               for label, c in hit.items()}}))
    return findings


def ranking_findings(group: Group) -> list[Finding]:
    """Per filter count: final eval top-1 by variant, mean and seed range, best first (the claims compare them)."""
    findings = []
    for width in group.widths:
        ranked = []
        for curve in group.curves_at(width):
            values = [v for v in _seeded(curve.runs, _final_top1).values() if math.isfinite(v)]
            if values:
                ranked.append((curve, sum(values) / len(values), min(values), max(values), len(values)))
        if len(ranked) < 2:
            continue
        ranked.sort(key=lambda r: -r[1])
        text = ", ".join(f"{curve.name} {_percent(mean)} ({_percent(low)}-{_percent(high)}, {_count(n, 'seed')})"
                         for curve, mean, low, high, n in ranked)
        findings.append(Finding("ranking", f"Filter count {width}, final eval top-1 (mean, seed range): {text}.",
                                {"width": width, "ranking": [
                                    {"variant": curve.label, "mean": mean, "min": low, "max": high, "seeds": n}
                                    for curve, mean, low, high, n in ranked]}))
    return findings


def seeds_finding(group: Group) -> Finding:
    per_curve = sorted({len(curve.runs) for curve in group.curves})
    seeds = sorted({str(run_seed(run)) for run in group.runs}, key=lambda s: (not s.isdigit(), int(s) if
                                                                                s.isdigit() else 0, s))
    few = (f" With {per_curve[0]} seed(s) in a cell no comparison with it can be supported (at least "
           f"{statistics.MIN_SEEDS} are needed): add seeds to the same workdir (:seeds= or :seed_offset=); the "
           "report pools every seed it finds." if per_curve and per_curve[0] < statistics.MIN_SEEDS else "")
    return Finding("seeds", f"Seeds per (filter count, variant): {'/'.join(map(str, per_curve))} (seeds "
                            f"{', '.join(seeds)}).{few}", {"per_curve": per_curve, "seeds": seeds})


def group_findings(group: Group, thresholds: Sequence[float]) -> list[Finding]:
    """Every finding of a group: supported claims (the headline), the descriptive lines, inconclusive claims."""
    claims = [*width_findings(group), *top1_findings(group), *steps_findings(group, thresholds),
              *deaths_findings(group)]
    descriptive = [seeds_finding(group), *dying_findings(group), *ranking_findings(group)]
    return ([f for f in claims if f.headline] + descriptive
            + [f for f in claims if f.status == statistics.INCONCLUSIVE])
