"""Build the report (HTML, PNG, SVG, CSV) from run folders alone.

    python -m analysis.report [--runs=]<sweep_dir | runs dir | folder of sweeps> [--out=<dir>] \\
        [--thresholds=0.3,0.4,0.5] [--smooth=10]

The main job calls `generate_report(sweep_dir, command=...)` when it ends. The output goes to `<runs>/report/`
(`<sweep_dir>/report/` when given a sweep's runs/ folder) unless --out says otherwise: report.html (inline CSS,
no script, the figures by relative path), every figure as .png and .svg, every table as .csv, and manifest.json
(the files written). The report is written into a folder beside it and swapped in whole, so an interrupted run
leaves the previous report as it was; files a user added to the old folder are carried over. Missing, partial and
broken runs are listed, never fatal; a folder with no run folder at all is an error, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.convergence import convergence_figure
from analysis.curves import SMOOTHING_WINDOW
from analysis.dying import block_ratio_figure, dying_figure, learnable_curves, learnable_scale_figure, verdict_heatmap
from analysis.findings import Finding, group_findings
from analysis.grouping import GROUP_FIELDS, Group, group_runs
from analysis.plotting import save_figure
from analysis.report_folder import replaced_whole, unusable_reason, write_manifest
from analysis.report_html import FigureFile, Provenance, render_report
from analysis.runs import RunRecord, RunSet, SkippedRun, load_runs
from analysis.statistics import METHODS as CLAIM_METHODS
from analysis.tables import (
    DEFAULT_THRESHOLDS,
    SOURCE_EVAL,
    SOURCE_TRAIN,
    final_values,
    runs_table,
    skipped_table,
    thresholds_table,
    verdict_cells,
    verdicts_table,
)
from analysis.verdicts import VERDICTS


@dataclasses.dataclass(frozen=True)
class ReportResult:
    html: Path
    out_dir: Path
    figures: tuple[FigureFile, ...]
    findings: dict[str, tuple[Finding, ...]]  # group label -> what its runs support (findings.py)
    summary: Path  # summary.md: the findings as text, with date, machine and command
    tables: dict[str, Path]  # table name -> CSV file
    frames: dict[str, pd.DataFrame]  # table name -> its exact values
    runs_used: tuple[str, ...]  # run labels (run ids unless two runs share one)
    runs_skipped: tuple[SkippedRun, ...]
    groups: tuple[str, ...]  # group labels
    errors: tuple[str, ...]  # figures that could not be drawn (the report is written anyway)


def methods(thresholds: Sequence[float], window: int) -> list[str]:
    """The rules behind the numbers, stated in the report."""
    fields = ", ".join(field for field, _ in GROUP_FIELDS)
    return [
        f"Groups: runs share a figure only when they agree on {fields}. A curve is one (model, filter count = "
        "derived.deepest_width, variant = derived.variant) with all its seeds. Other config values that differ "
        "inside a group or a curve are listed as warnings under the group.",
        f"Smoothing: train loss and train accuracy are a trailing mean over the last {window} train log lines; a "
        "window holding a non-finite value is left empty, so a diverged run's curve stops at the divergence. "
        "Pre-pool zero and dead-channel fractions are not smoothed.",
        "Seeds: the line is the mean over the seeds that have a finite value at that step; the shaded band is "
        "their min–max. Against wall time, x is the mean over those seeds of the time of that step.",
        "Errors: eval top1/top5 and train accuracy are accuracies in [0, 1]; the figures plot 100·(1 − accuracy).",
        f"Steps to accuracy (thresholds {', '.join(f'{t:g}' for t in thresholds)}): '{SOURCE_EVAL}' (unsmoothed) "
        f"when every run of the comparison logged eval top-1, else '{SOURCE_TRAIN}' (the {window}-line trailing "
        "mean, counted only once a full window exists). A curve's value is the median over its seeds, a seed that "
        "never reached counting as infinitely late; ratio = residual / plain at the same filter count, only when "
        "both reached.",
        "Verdicts are read from verdict.json (else result.json), never recomputed from the history; a stored "
        "verdict is read under training's final-evaluation rule (docs/dying.md §3), so a death never recovered from, "
        "at chance-level eval top-1, is died and no run at chance is healthy. A heatmap cell's colour is the "
        f"majority verdict over its seeds, a tie going to the more severe one ({' < '.join(VERDICTS)}); the cell "
        "lists every verdict's count and the mean final eval top-1 (train accuracy when a seed has no eval; "
        "diverged seeds are left out of the mean).",
        "Runs used: those with result.json, and diverged runs (verdict.json 'diverged') even without it. Runs "
        "without result.json are partial (unfinished or still running): listed under Skipped runs, never plotted.",
        *CLAIM_METHODS,
    ]


def _figures_for(group: Group, cells: pd.DataFrame, window: int) -> list[tuple[str, str, Callable[[], Figure | None]]]:
    """(kind, name suffix, builder) for every figure of a group; builders run one at a time to bound memory."""
    builders: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("heatmap", "verdict_heatmap", lambda: verdict_heatmap(group, cells)),
        ("dying", "dying", lambda: dying_figure(group, window=window)),
        ("block_ratio", "block_ratio", lambda: block_ratio_figure(group)),
    ]
    for label in learnable_curves(group):
        builders.append(("learnable_scales", "learnable_scales_" + re.sub(r"[^A-Za-z0-9.=-]+", "_", label),
                         lambda label=label: learnable_scale_figure(group, label)))
    for width in group.widths:
        builders.append(("convergence", f"convergence_w{width}",
                         lambda width=width: convergence_figure(group, width, window=window)))
    return builders


def _unique_slugs(groups: Sequence[Group]) -> dict[str, str]:
    """Group label -> file prefix; a suffix keeps two groups whose labels sanitise alike apart."""
    slugs: dict[str, str] = {}
    for group in groups:
        slug, n = group.key.slug, 2
        while slug in slugs.values():
            slug, n = f"{group.key.slug}-{n}", n + 1
        slugs[group.key.label] = slug
    return slugs


class ReportError(ValueError):
    """Nothing can be reported (no run folder) or written (an output folder that is not a report's)."""


def generate_report(runs_dir: str | Path, out_dir: str | Path | None = None, *, command: str | None = None,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, window: int = SMOOTHING_WINDOW) -> ReportResult:
    """Write the report for every run folder under `runs_dir` into `out_dir` (default `<runs_dir>/report`, or
    `<sweep_dir>/report` when `runs_dir` is a sweep's `runs/` folder).

    `command`: how the caller was invoked, shown in the report. Raises FileNotFoundError only when `runs_dir` is not
    a directory; bad runs are skipped and listed, and a figure that fails is listed in `errors`.
    """
    runs_dir = Path(runs_dir)
    if out_dir is None:  # a sweep's report lives beside its runs/ folder (docs/run_folder.md)
        out_dir = (runs_dir.parent if runs_dir.name == "runs" else runs_dir) / "report"
    out_dir = Path(out_dir)
    if any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds={list(thresholds)}: each must be an accuracy in (0, 1]")
    run_set = load_runs(runs_dir)
    if not run_set.runs and all(skipped.status == "missing" for skipped in run_set.skipped):
        raise ReportError(f"{runs_dir} holds no run folders (a run folder has config.json and metrics.jsonl)")
    problem = unusable_reason(out_dir)
    if problem:
        raise ReportError(problem)
    with replaced_whole(out_dir) as work:  # an interrupted report leaves the previous one as it was
        return _write_report(run_set, runs_dir, work, out_dir, command, thresholds, window)


def _write_report(run_set: RunSet, runs_dir: Path, work: Path, out_dir: Path, command: str | None,
                  thresholds: Sequence[float], window: int) -> ReportResult:
    """Every file of the report into `work`; the paths returned are those they will have in `out_dir`."""
    groups = group_runs(run_set.runs)
    slugs = _unique_slugs(groups)

    figures: list[FigureFile] = []
    errors: list[str] = []
    for group in groups:
        cells = verdict_cells(group)
        for kind, suffix, build in _figures_for(group, cells, window):
            name = f"{slugs[group.key.label]}__{suffix}"
            try:
                figure = build()
                if figure is None:
                    continue
                title = figure.get_suptitle() or (figure.axes[0].get_title() if figure.axes else name)
                title = title.replace("\n", ": ")
                png, svg = save_figure(figure, work, name)
            except Exception as error:  # one broken figure must not cost the whole report at the end of a job
                errors.append(f"{name}: {type(error).__name__}: {error}")
                traceback.print_exc(file=sys.stderr)
                continue
            figures.append(FigureFile(name, title, kind, group.key.label, out_dir / png.name, out_dir / svg.name))

    findings = {group.key.label: tuple(group_findings(group, thresholds)) for group in groups}
    group_tables = [thresholds_table(groups, thresholds, window), verdicts_table(groups)]
    tables = [runs_table(groups), skipped_table(run_set.skipped)]
    csv_paths = {}
    for table in (*group_tables, *tables):
        table.data.to_csv(work / f"{table.name}.csv", index=False)
        csv_paths[table.name] = out_dir / f"{table.name}.csv"

    regenerate = (f"python -m analysis.report --runs={shlex.quote(str(runs_dir))} "
                  f"--out={shlex.quote(str(out_dir))} --thresholds={','.join(f'{t:g}' for t in thresholds)} "
                  f"--smooth={window}")
    root = runs_dir.resolve()
    provenance = Provenance(command=command or f"analysis.report.generate_report({str(runs_dir)!r})",
                            regenerate=regenerate, root=root, sweeps=run_set.sweeps,
                            generated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                            machines=tuple(sorted({str(run.get("derived.machine")) for run in run_set.runs
                                                   if run.get("derived.machine")})),
                            train_seconds=sum(t for t in (final_values(run)["wall_time_s"] for run in run_set.runs)
                                              if math.isfinite(t)),
                            run_dates=_finish_dates(run_set.runs),
                            logdir=root / "runs" if (root / "runs").is_dir() else root)
    methods_text = methods(thresholds, window) + [f"Figure not drawn: {e}" for e in errors]
    page = render_report(provenance=provenance, groups=groups, figures=figures, group_tables=group_tables,
                         tables=tables, runs=run_set.runs, methods=methods_text, findings=findings, out_dir=out_dir)
    (work / "report.html").write_text(page, encoding="utf-8")
    (work / "findings.json").write_text(json.dumps({label: [dataclasses.asdict(f) for f in items]
                                                   for label, items in findings.items()}, indent=1, default=str))
    (work / "summary.md").write_text(summary_markdown(provenance, run_set.runs, findings), encoding="utf-8")
    write_manifest(work)
    return ReportResult(html=out_dir / "report.html", out_dir=out_dir, figures=tuple(figures), findings=findings,
                        summary=out_dir / "summary.md", tables=csv_paths,
                        frames={t.name: t.data for t in (*group_tables, *tables)},
                        runs_used=tuple(run.label for run in run_set.runs), runs_skipped=run_set.skipped,
                        groups=tuple(group.key.label for group in groups), errors=tuple(errors))


def _finish_dates(runs: Sequence[RunRecord]) -> str:
    """When the runs finished (their result.json / verdict.json times), as a UTC range."""
    times = []
    for run in runs:
        for name in ("result.json", "verdict.json"):
            try:
                times.append((run.path / name).stat().st_mtime)
                break
            except OSError:
                continue
    if not times:
        return ""
    first, last = (datetime.datetime.fromtimestamp(t, datetime.UTC) for t in (min(times), max(times)))
    end = last.strftime("%H:%M" if first.date() == last.date() else "%Y-%m-%d %H:%M")
    return f"{first:%Y-%m-%d %H:%M} to {end} UTC" if end != f"{first:%H:%M}" else f"{first:%Y-%m-%d %H:%M} UTC"


def summary_markdown(provenance: Provenance, runs: Sequence[RunRecord],
                     findings: dict[str, tuple[Finding, ...]]) -> str:
    """The findings as a short text (README's main-job section quotes one): when, on what, by which command."""
    ran = [c for c in provenance.run_commands if c != provenance.command]
    by = f"`{provenance.command}`" + (f" (runs: {', '.join(f'`{c}`' for c in ran)})" if ran else "")
    lines = [f"Generated {provenance.generated} from {len(runs)} runs ({provenance.train_seconds:.0f} s of training "
             f"and evaluation) on {'; '.join(provenance.machines) or 'an unrecorded machine'}, by {by}.", ""]
    for label, items in findings.items():
        lines += [f"**{label}**", ""] + [f"- **{f.text}**" if f.headline else f"- {f.text}" for f in items] + [""]
    return "\n".join(lines)


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--thresholds={text!r}: expected accuracies like 0.3,0.5") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--thresholds={text!r}: each must be an accuracy in (0, 1]")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", nargs="?", help="the same as --runs")
    parser.add_argument("--runs", help="a sweep folder, its runs/ folder, a folder of sweeps or a run")
    parser.add_argument("--out", default=None, help="output folder (default: <runs>/report, or <sweep>/report for a "
                                                    "sweep's runs/ folder)")
    parser.add_argument("--thresholds", type=_thresholds, default=DEFAULT_THRESHOLDS,
                        help="accuracies for the steps-to-accuracy table, comma separated (default 0.3,0.4,0.5)")
    parser.add_argument("--smooth", type=int, default=SMOOTHING_WINDOW,
                        help="train-metric moving mean, in log lines (default 10)")
    args = parser.parse_args(argv)
    if (args.runs is None) == (args.runs_dir is None):
        parser.error("give the folder to report on once: python -m analysis.report <dir> (or --runs=<dir>)")
    if args.smooth < 1:
        parser.error(f"--smooth={args.smooth}: must be a positive number of log lines")
    command = "python -m analysis.report " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                              else argv))
    try:
        result = generate_report(args.runs or args.runs_dir, args.out, command=command, thresholds=args.thresholds,
                                 window=args.smooth)
    except (FileNotFoundError, ReportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"report: {result.html}")
    print(f"{len(result.runs_used)} runs used in {len(result.groups)} group(s), {len(result.figures)} figures")
    for skipped in result.runs_skipped:
        print(f"skipped {skipped.label} ({skipped.status}): {skipped.reason}")
    for error in result.errors:
        print(f"figure not drawn: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
