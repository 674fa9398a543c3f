"""Render the report as one HTML page that reads like a short paper: title block, contents, findings first, figures
with captions, the per-run index, methods, a verdict glossary, and the configs folded away.

The page has inline CSS and no script; figures are the PNG files beside it, by relative path (their SVG twins are
linked). This module only formats what report.py computed; it reads no run files and computes no numbers.
Everything interpolated into the page goes through escape(), because configs and run names come from arbitrary
folders.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.findings import Finding
from analysis.grouping import Group
from analysis.runs import RunRecord
from analysis.tables import Table, final_values, format_number
from analysis.verdicts import DEFINITION_TEXT, SHORT_DEFINITIONS, VERDICTS, ZERO_FRACTION_DEFINITION
from inception_jax.models.variants import display_name
from inception_jax.wording import format_duration

_STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --rule: #d8dee4; --soft: #f6f8fa; --accent: #0b5cad;
        --good: #1a7f37; --warn: #9a6700; --warn-bg: #fff8c5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 16px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { display: grid; grid-template-columns: 13rem minmax(0, 1fr); gap: 2.5rem; max-width: 80rem;
        margin: 0 auto; padding: 1.25rem 1.5rem 4rem; }
nav.toc { position: sticky; top: 1rem; align-self: start; font-size: 14px; max-height: calc(100vh - 2rem);
          overflow-y: auto; border-right: 1px solid var(--rule); padding-right: 1rem; }
nav.toc b { display: block; text-transform: uppercase; font-size: 12px; letter-spacing: .06em; color: var(--muted); }
nav.toc ol { padding-left: 1.2rem; margin: .4rem 0; } nav.toc li { margin: .15rem 0; }
nav.toc ol ol { font-size: 13px; padding-left: 1rem; }
main { min-width: 0; }
main p, main ul, main dl, .caption { max-width: 52rem; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
h1 { font-size: 1.75rem; line-height: 1.25; margin: .2rem 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid var(--rule); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
.subtitle { color: var(--muted); margin: 0 0 .8rem; }
dl.meta { display: grid; grid-template-columns: 7rem minmax(0, 1fr); gap: .15rem 1rem; font-size: 14px;
          margin: 0; padding: .6rem .9rem; background: var(--soft); border: 1px solid var(--rule); border-radius: 6px; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 0 .25em; border-radius: 3px; }
pre { font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
      padding: .7rem; border-radius: 6px; white-space: pre-wrap; overflow-wrap: anywhere; }
ul.findings { list-style: none; padding: 0; }
ul.findings li { margin: .3rem 0; padding: .2rem .7rem; border-left: 4px solid var(--rule); font-size: 15px; }
ul.findings li.supported { border-left-color: var(--good); background: #f0fff4; }
ul.findings li.inconclusive { border-left-color: #d4a72c; background: #fffdf0; }
.badge { display: inline-block; font-size: 11px; font-weight: 700; letter-spacing: .04em; text-transform: uppercase;
         padding: 0 .5em; border-radius: 1em; margin-right: .5em; vertical-align: .1em; }
.badge.supported { background: var(--good); color: #fff; }
.badge.inconclusive { background: var(--warn-bg); color: var(--warn); border: 1px solid #d4a72c; }
.legend { font-size: 13px; color: var(--muted); }
a.verdict { color: inherit; border-bottom: 1px dotted var(--muted); cursor: help; white-space: nowrap; }
a.verdict:hover { text-decoration: none; border-bottom-color: var(--ink); }
figure { margin: 1.2rem 0 1.8rem; } figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { font-size: 14px; color: var(--ink); max-width: 52rem; margin-top: .35rem; }
figcaption .files { color: var(--muted); font-size: 13px; }
.note { font-size: 14px; color: var(--muted); } .warning { color: #b42318; font-size: 14px; }
.table-wrap { overflow-x: auto; margin: .4rem 0 1rem; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--rule); padding: .25rem .6rem; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
#run-index td { white-space: nowrap; }
#methods + ul { font-size: 15px; }
tr:nth-child(even) td { background: #fbfcfd; }
td:first-child, th:first-child, td.text, th.text { text-align: left; }
details { margin: .35rem 0; } summary { cursor: pointer; font-size: 14px; }
details > :not(summary) { margin-left: 1rem; }
dl.glossary dt { font-weight: 600; } dl.glossary dd { margin: 0 0 .5rem 1.2rem; }
@media (max-width: 60rem) { .page { grid-template-columns: 1fr; } nav.toc { position: static; border: 0; } }
"""

_HEADERS = {"width": "filter count"}  # the paper's word for derived.deepest_width
_PAPER = ("Szegedy et al. 2016, <i>Inception-v4, Inception-ResNet and the Impact of Residual Connections on "
          "Learning</i>")
# What to look at in each kind of figure, and what the paper found there.
_CAPTIONS = {
    "heatmap": ("One cell per filter count × variant, coloured by the verdict most of its seeds got (the counts and "
                "the mean final accuracy are written in it). Look for red (<i>died</i>) cells: where they sit in "
                "the residual, unscaled column at the largest filter counts, and whether the scaled columns stay "
                "green.", "The paper: with more than about 1000 filters the residual variants became unstable and "
                "“died” early in training; scaling the residuals by about 0.1 to 0.3 before adding them kept "
                "them alive."),
    "dying": ("Top row: the fraction of exact zeros in the last layer before average pooling (1 = dead); middle: "
              "the fraction of its channels that are dead; bottom: train loss, with chance level ln C dashed. Look "
              "for a curve that jumps to 1 and stays there while the loss sits at ln C.",
              "The paper: a network that died produced only zeros in the last layer before pooling, after a few "
              "tens of thousands of iterations, and never recovered."),
    "block_ratio": ("How large each block's residual branch (after scaling) is relative to the shortcut it is added "
                    "to, the largest over a stage's blocks. Look for ratios that grow in the last stage before a "
                    "death: the branch overwhelms the shortcut.",
                    "The paper scaled the residuals down to stabilise training; this is the quantity the scaling "
                    "acts on."),
    "learnable_scales": ("The residual scales the network learned, per block, against step. Look for where "
                         "they settle compared with the hand-picked 0.1 to 0.3.",
                         "The paper used fixed scales between 0.1 and 0.3; it did not learn them."),
    "convergence": ("Error (100 × (1 − accuracy)) and loss against step (top row) and wall time (bottom row); "
                    "the line is the mean over seeds, the band their range. Look for the residual curves falling "
                    "below the plain one earlier, at the same filter count.",
                    "The paper: residual connections speed up the training of Inception networks significantly; the "
                    "final accuracy depends mostly on the model size, not on the shortcuts."),
}


@dataclasses.dataclass(frozen=True)
class FigureFile:
    """A saved figure: `name` is the file stem of `png` and `svg` in the report folder."""

    name: str
    title: str
    kind: str  # convergence | dying | heatmap | block_ratio | learnable_scales
    group: str  # the group's label
    png: Path
    svg: Path


@dataclasses.dataclass(frozen=True)
class Provenance:
    command: str  # what produced this report
    regenerate: str  # the command that rebuilds it from the run folders alone
    generated: str  # ISO time
    root: Path
    sweeps: Sequence[dict[str, Any]]
    machines: Sequence[str] = ()  # config.json derived.machine, each distinct value
    train_seconds: float = 0.0  # the runs' wall times summed (training and evaluation)
    run_dates: str = ""  # when the runs finished, e.g. "2026-12-07 08:10 – 08:12 UTC"
    logdir: Path | None = None  # for `tensorboard --logdir`

    @property
    def run_commands(self) -> list[str]:
        """The commands that ran the runs (their sweeps' sweep.json), else this report's own."""
        return [str(s["command"]) for s in self.sweeps if s.get("command")] or [self.command]


def _verdict(name: str) -> str:
    """A verdict name with its definition as a tooltip (and a link to the glossary)."""
    definition = SHORT_DEFINITIONS.get(name)
    if definition is None:
        return escape(name)
    return f'<a class="verdict" href="#verdict-{escape(name)}" title="{escape(name)}: {escape(definition)}">' \
           f"{escape(name)}</a>"


_VERDICT_WORD = re.compile(r"\b(" + "|".join(sorted(VERDICTS, key=len, reverse=True)) + r")\b")


def _with_verdicts(text: str) -> str:
    """Escaped text whose verdict names carry their definitions (findings name them: 'died', 'not_learning')."""
    return _VERDICT_WORD.sub(lambda m: _verdict(m.group(1)), escape(text))


def _table_html(table: Table, frame: pd.DataFrame, html_id: str) -> str:
    if frame.empty:
        return f'<p class="note" id="{escape(html_id)}">(none)</p>'
    head = "".join(f"<th>{escape(_HEADERS.get(str(c), str(c)))}</th>" for c in frame.columns)
    verdict_columns = {i for i, c in enumerate(frame.columns) if c == "verdict"}
    body = "".join("<tr>" + "".join(f"<td>{_verdict(str(v)) if i in verdict_columns else escape(str(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in frame.itertuples(index=False))
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return f'<div class="table-wrap"><table id="{escape(html_id)}"><tr>{head}</tr>{body}</table></div>{note}'


def _folded_table(table: Table, frame: pd.DataFrame, html_id: str, *, open_: bool = False) -> str:
    rows = f"{len(frame)} row{'s' if len(frame) != 1 else ''}"
    return (f"<details{' open' if open_ else ''}><summary>Table: {escape(table.title)} ({rows}; "
            f'<a href="{escape(table.name)}.csv">{escape(table.name)}.csv</a>)</summary>'
            f"{_table_html(table, frame, html_id)}</details>")


def _rows_of_group(table: Table, group: Group) -> pd.DataFrame:
    if table.display.empty:
        return table.display
    selected = table.display[table.display["group"] == group.key.label].drop(columns=["group"])
    if "variant" in selected:  # the curve labels in a reader's words; the CSV keeps the stored names
        selected = selected.assign(variant=[group.name_of(label) for label in selected["variant"]])
    return selected


def _figure_html(figure: FigureFile, number: int) -> str:
    look, paper = _CAPTIONS.get(figure.kind, ("", ""))
    png, svg = escape(figure.png.name), escape(figure.svg.name)
    return (f'<figure id="fig-{escape(figure.name)}"><a href="{png}"><img alt="{escape(figure.title)}" '
            f'src="{png}"></a><figcaption><b>Figure {number}.</b> {escape(figure.title)}. {look} {paper} '
            f'<span class="files">Files: <a href="{svg}">SVG</a>, <a href="{png}">PNG</a>.</span>'
            "</figcaption></figure>")


def _findings_html(findings: Mapping[str, Sequence[Finding]], several_groups: bool) -> str:
    """The findings in analysis.findings' order (supported claims first: the headline), each claim marked."""
    parts = ['<section id="findings"><h2>Findings</h2>']
    statuses = {getattr(f, "status", "") for items in findings.values() for f in items}
    if statuses & {"supported", "inconclusive"}:
        parts.append('<p class="legend"><span class="badge supported">supported</span>the runs support it; '
                     '<span class="badge inconclusive">inconclusive</span>the runs do not decide it (within seed '
                     'noise, or too few seeds); unmarked lines describe the runs. Rules: <a href="#methods">How the '
                     "numbers are made</a>.</p>")
    order = {"supported": 0, "inconclusive": 1}
    for label, items in findings.items():
        if several_groups:
            parts.append(f"<h3>{escape(label)}</h3>")
        parts.append('<ul class="findings">')
        for finding in items:
            status = getattr(finding, "status", "") or ""
            badge = f'<span class="badge {escape(status)}">{escape(status)}</span>' if status in order else ""
            parts.append(f'<li class="{escape(status) or "descriptive"}">{badge}{_with_verdicts(finding.text)}</li>')
        parts.append("</ul>")
    if not findings:
        parts.append("<p class='warning'>No finished run to analyse.</p>")
    return "\n".join(parts) + "</section>"


def _title_block(provenance: Provenance, runs: Sequence[RunRecord], skipped: int) -> str:
    sweeps = ", ".join(str(s.get("name")) for s in provenance.sweeps if s.get("name"))
    widths = sorted({run.deepest_width for run in runs})
    variants = list(dict.fromkeys(display_name(run.variant, run.is_residual) for run in runs))
    subtitle = (f"{'Sweep ' + escape(sweeps) + ': ' if sweeps else ''}{len(runs)} runs, filter counts "
                f"{escape(', '.join(map(str, widths)) or '–')}, variants {escape('; '.join(variants) or '–')}"
                + (f"; {skipped} skipped" if skipped else "") + ".")
    commands = provenance.run_commands
    when = f"{format_duration(provenance.train_seconds)} of training and evaluation (the runs' wall times summed)"
    if provenance.run_dates:
        when += f"; runs finished {escape(provenance.run_dates)}"
    rows = [("Command", "<br>".join(f"<code>{escape(c)}</code>" for c in commands)),
            ("Machine", escape("; ".join(provenance.machines) or "not recorded")),
            ("Time", when),
            ("Report", f"generated {escape(provenance.generated.replace('T', ' ').replace('+00:00', ' UTC'))}" + (
                "" if commands == [provenance.command] else f" by <code>{escape(provenance.command)}</code>")),
            ("Curves", f"<code>tensorboard --logdir {escape(str(provenance.logdir or provenance.root))}</code>")]
    return ("<header><h1>Residual connections and dying Inception-ResNets</h1>"
            f'<p class="subtitle">{subtitle}</p><dl class="meta">'
            + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows) + "</dl></header>")


def _toc(groups: Sequence[Group], figures: Sequence[FigureFile]) -> str:
    items = ['<li><a href="#findings">Findings</a></li>']
    for group in groups:
        sub = "".join(f'<li><a href="#fig-{escape(f.name)}">{escape(f.title.split(":")[0])}</a></li>'
                      for f in figures if f.group == group.key.label)
        items.append(f'<li><a href="#group-{escape(group.key.slug)}">{escape(group.key.label)}</a>'
                     + (f"<ol>{sub}</ol>" if sub else "") + "</li>")
    items += ['<li><a href="#runs">Runs</a></li>', '<li><a href="#methods">How the numbers are made</a></li>',
              '<li><a href="#glossary">Verdicts</a></li>', '<li><a href="#configs">Configs</a></li>']
    return f'<nav class="toc"><b>Contents</b><ol>{"".join(items)}</ol></nav>'


def _run_index(runs: Sequence[RunRecord], out_dir: Path | None, provenance: Provenance) -> str:
    """One line per run: where it sits in the sweep, what it got, and its folder."""
    head = ("<tr><th class='text'>run</th><th class='text'>row</th><th>filter count</th><th class='text'>variant"
            "</th><th>seed</th><th class='text'>verdict</th><th>steps</th><th>eval top-1</th><th>train loss</th>"
            "<th>wall time</th><th class='text'>folder</th></tr>")
    lines = []
    for run in sorted(runs, key=lambda r: (r.deepest_width, r.label)):
        finals = final_values(run)
        folder = os.path.relpath(run.path, out_dir) if out_dir is not None else str(run.path)
        lines.append(
            f"<tr><td>{escape(run.label)}</td><td class='text'>{escape(str(run.get('sweep.row', '–')))}</td>"
            f"<td>{run.deepest_width}</td><td class='text'>{escape(display_name(run.variant, run.is_residual))}</td>"
            f"<td>{escape(str(run.seed))}</td><td class='text'>{_verdict(finals['verdict'])}</td>"
            f"<td>{format_number(finals['steps'], '{:.0f}')}</td>"
            f"<td>{format_number(finals['eval_top1'], '{:.3f}')}</td>"
            f"<td>{format_number(finals['final_train_loss'], '{:.4f}')}</td>"
            f"<td>{format_number(finals['wall_time_s'], '{:.1f} s')}</td>"
            f"<td class='text'><a href=\"{escape(folder)}/\">{escape(folder)}</a></td></tr>")
    logdir = escape(str(provenance.logdir or provenance.root))
    return (f"<p>Every run's curves, step by step: <code>tensorboard --logdir {logdir}</code>. Each folder holds "
            "config.json, metrics.jsonl, verdict.json and result.json (docs/run_folder.md).</p>"
            f'<div class="table-wrap"><table id="run-index">{head}{"".join(lines)}</table></div>')


def _config_html(run: RunRecord) -> str:
    summary = (f"{run.label}: {run.model}, filter count {run.deepest_width}, "
               f"{display_name(run.variant, run.is_residual)}, seed {run.seed}")
    return (f'<details id="config-{escape(run.label)}"><summary>{escape(summary)}</summary>'
            f"<pre>{escape(json.dumps(run.config, indent=2, sort_keys=True, default=str))}</pre></details>")


def _glossary(runs: Sequence[RunRecord]) -> str:
    entries = "".join(f'<dt id="verdict-{name}">{name}</dt><dd>{escape(SHORT_DEFINITIONS[name])}</dd>'
                      for name in (*VERDICTS, "unknown"))
    recorded = sorted({str(r.verdict["definition"]) for r in runs if r.verdict and r.verdict.get("definition")})
    exact = (f"<details><summary>The exact rules (inception_jax/training/verdicts.py, as training applied them)"
             f"</summary><pre>{escape(ZERO_FRACTION_DEFINITION)}\n\n{escape(DEFINITION_TEXT)}</pre>"
             + ("<p class='note'>As recorded in the runs' verdict.json:</p>" if recorded else "")
             + "".join(f"<pre>{escape(d)}</pre>" for d in recorded) + "</details>")
    return (f'<h2 id="glossary">Verdicts</h2><p>Every run gets one verdict when it ends, from its logged pre-pool zero '
            f"fraction and loss (docs/dying.md); C is the number of classes.</p>"
            f'<dl class="glossary">{entries}</dl>{exact}')


def render_report(*, provenance: Provenance, groups: Sequence[Group], figures: Sequence[FigureFile],
                  group_tables: Sequence[Table], tables: Sequence[Table], runs: Sequence[RunRecord],
                  methods: Sequence[str], findings: Mapping[str, Sequence[Finding]] | None = None,
                  out_dir: Path | None = None) -> str:
    """The whole page. `group_tables` are shown per group (their `group` column selects the rows); `tables`
    (runs, skipped) are shown once, after the groups. `out_dir`: where the page will live, for links to the runs."""
    skipped = next((t for t in tables if t.name == "skipped"), None)
    skipped_count = 0 if skipped is None else len(skipped.data)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>Report: residual connections and dying Inception-ResNets</title><style>{_STYLE}</style>"
             "</head><body><div class='page'>", _toc(groups, figures), "<main>",
             _title_block(provenance, runs, skipped_count),
             _findings_html(findings or {}, len(groups) > 1)]
    number = 0
    for group in groups:
        parts.append(f'<section><h2 id="group-{escape(group.key.slug)}">{escape(group.key.label)}</h2>')
        shown = "; ".join(dict.fromkeys(display_name(c.variant, c.is_residual) for c in group.curves))
        parts.append(f"<p class='note'>{len(group.runs)} runs; filter counts "
                     f"{escape(', '.join(map(str, group.widths)))}; variants {escape(shown)}. The paper: "
                     f"{_PAPER}.</p>")
        parts += [f'<p class="warning">Not like for like: {escape(text)}</p>' for text in group.warnings]
        for figure in (f for f in figures if f.group == group.key.label):
            number += 1
            parts.append(_figure_html(figure, number))
        for table in group_tables:
            parts.append(_folded_table(table, _rows_of_group(table, group), f"table-{table.name}-{group.key.slug}"))
        parts.append("</section>")
    parts.append('<section><h2 id="runs">Runs</h2>' + _run_index(runs, out_dir, provenance))
    for table in tables:
        shown = table.display
        if "variant" in shown and len(shown):
            shown = shown.assign(variant=[display_name(str(v)) for v in shown["variant"]])
        parts.append(_folded_table(table, shown, f"table-{table.name}",
                                   open_=table.name == "skipped" and skipped_count > 0))
    parts.append("</section>")
    parts.append('<section><h2 id="methods">How the numbers are made</h2><ul>'
                 + "".join(f"<li>{escape(m)}</li>" for m in methods) + "</ul>"
                 f"<p>Regenerate this report from the run folders alone: <code>{escape(provenance.regenerate)}</code>"
                 "</p></section>")
    parts.append(f"<section>{_glossary(runs)}</section>")
    parts.append('<section><h2 id="configs">Configs</h2><p class="note">Each run\'s config.json, as it ran.</p>'
                 + "".join(_config_html(run) for run in runs) + "</section>")
    parts.append("</main></div></body></html>")
    return "\n".join(parts)
