"""Compare two sweeps claim by claim: which findings replicated, which became inconclusive, which flipped.

    python -m analysis.compare A B

A and B: a sweep workdir, its runs/ or report/ folder, or any folder of run folders. A sweep's report/findings.json
is read when it has claims (ids and statuses, analysis/findings.py); otherwise the findings are computed from the
runs with the default thresholds. Claims are matched by group and claim id (kind / filter count / variants). One
line per claim, then a count; exit 0. A folder with neither runs nor findings.json: one line on stderr, exit 2.

Categories (a claim's sign: its effect above or below "no difference"):
* replicated: the same status in both and the same sign;
* flipped: opposite signs where at least one side is supported;
* became inconclusive / became supported: the status changed, the sign did not;
* still inconclusive: inconclusive in both, with opposite signs;
* only in A / only in B: the other sweep does not state it (no runs of that cell, or no death on either side).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.findings import group_findings
from analysis.grouping import group_runs
from analysis.runs import load_runs
from analysis.statistics import SUPPORTED
from analysis.tables import DEFAULT_THRESHOLDS

CATEGORIES = ("replicated", "became inconclusive", "flipped", "became supported", "still inconclusive", "only in A",
              "only in B")
Claims = dict[tuple[str, str], dict[str, Any]]  # (group label, claim id) -> finding as in findings.json


class NoRunsError(Exception):
    pass


def _findings_json(folder: Path) -> Path | None:
    candidates = [folder / "findings.json", folder / "report" / "findings.json"]
    if folder.name == "runs":
        candidates.append(folder.parent / "report" / "findings.json")
    return next((path for path in candidates if path.is_file()), None)


def _claims_of(stored: dict[str, list[dict[str, Any]]]) -> Claims:
    return {(group, item["claim"]): item for group, items in stored.items() for item in items if item.get("claim")}


def load_claims(folder: str | Path) -> tuple[Claims, str]:
    """(claims, where they came from). Raises NoRunsError for a folder without runs or usable findings.json."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoRunsError(f"{folder}: not a folder")
    stored_path = _findings_json(folder)
    if stored_path is not None:
        try:
            claims = _claims_of(json.loads(stored_path.read_text()))
        except (OSError, json.JSONDecodeError, AttributeError, TypeError):
            claims = {}
        if claims:
            return claims, str(stored_path)
    root = folder.parent if folder.name == "report" else folder
    runs = load_runs(root).runs
    if not runs:
        raise NoRunsError(f"{folder}: no finished runs under {root} and no findings.json with claims")
    stored = {group.key.label: [dataclasses.asdict(f) for f in group_findings(group, DEFAULT_THRESHOLDS)]
              for group in group_runs(runs)}
    return _claims_of(stored), f"{len(runs)} runs under {root}"


def _sign(claim: dict[str, Any]) -> int:
    data = claim.get("data", {})
    effect, null = data.get("effect"), data.get("null", 0.0)
    if not isinstance(effect, (int, float)) or not math.isfinite(effect) or effect == null:
        return 0
    return 1 if effect > null else -1


def classify(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if b is None:
        return "only in A"
    if a is None:
        return "only in B"
    sign_a, sign_b = _sign(a), _sign(b)
    opposite = sign_a * sign_b < 0
    supported_a, supported_b = a.get("status") == SUPPORTED, b.get("status") == SUPPORTED
    if opposite and (supported_a or supported_b):
        return "flipped"
    if supported_a and not supported_b:
        return "became inconclusive"
    if supported_b and not supported_a:
        return "became supported"
    if supported_a or sign_a == sign_b:
        return "replicated"
    return "still inconclusive"


def _shown(claim: dict[str, Any]) -> str:
    data = claim.get("data", {})
    ratio = data.get("null") == 1.0

    def number(value: Any) -> str:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return "–"
        return f"{value:.2f}x" if ratio else f"{100 * value:+.1f}"

    interval = (f" [{number(data.get('low'))}, {number(data.get('high'))}]"
                if number(data.get("low")) != "–" else "")
    return f"{number(data.get('effect'))}{interval} n={data.get('n')} {claim.get('status') or '?'}"


def compare(a: Claims, b: Claims) -> list[tuple[str, str]]:
    """(category, line) per claim, in A's order then B's extra claims; the group is named only when the sweeps
    hold several."""
    keys = list(a) + [k for k in b if k not in a]
    several_groups = len({group for group, _ in keys}) > 1
    lines = []
    for key in keys:
        first, second = a.get(key), b.get(key)
        category = classify(first, second)
        subject = (first or second or {}).get("data", {}).get("subject", key[1])
        group = f" ({key[0]})" if several_groups else ""
        sides = "; ".join(f"{name} {_shown(claim)}" for name, claim in (("A", first), ("B", second)) if claim)
        lines.append((category, f"{category}: {subject}{group}: {sides}"))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="the first sweep: workdir, runs/ or report/ folder")
    parser.add_argument("b", help="the second sweep")
    args = parser.parse_args(argv)
    try:
        (claims_a, from_a), (claims_b, from_b) = load_claims(args.a), load_claims(args.b)
    except NoRunsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    groups = sorted({group for group, _ in [*claims_a, *claims_b]})
    print(f"A: {from_a}\nB: {from_b}" + (f"\ngroup: {groups[0]}" if len(groups) == 1 else ""))
    results = compare(claims_a, claims_b)
    for _, line in results:
        print(line)
    counts = Counter(category for category, _ in results)
    print(f"{len(results)} claims: " + ", ".join(f"{counts[c]} {c}" for c in CATEGORIES if counts[c]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
