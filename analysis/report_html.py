"""Render the report as one self-contained HTML file: figures embedded as base64 PNG, tables as HTML tables.

This module only formats what report.py computed; it reads no run files and computes no numbers. Everything
interpolated into the page goes through html.escape, because configs and run names come from arbitrary folders.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.findings import Finding
from analysis.grouping import Group
from analysis.runs import RunRecord
from analysis.tables import Table
from analysis.verdicts import DEFINITION_TEXT, ZERO_FRACTION_DEFINITION

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; } th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { font-size: 12px; color: #555; } .warning { color: #a33; font-size: 13px; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 12px; white-space: pre-wrap; }
details { margin: 0.2em 0; } summary { cursor: pointer; font-size: 13px; }
"""


_HEADERS = {"width": "filter count"}  # the paper's word for derived.deepest_width


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


def _table_html(table: Table, frame: pd.DataFrame, html_id: str, *, caption: bool = True) -> str:
    head = "".join(f"<th>{escape(_HEADERS.get(str(c), str(c)))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    title = f"<h3>{escape(table.title)}</h3>" if caption else ""
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    if frame.empty:
        return f'{title}<p class="note" id="{escape(html_id)}">(none)</p>'
    return f'{title}<table id="{escape(html_id)}"><tr>{head}</tr>{body}</table>{note}'


def _rows_of_group(table: Table, group: Group) -> pd.DataFrame:
    if table.display.empty:
        return table.display
    selected = table.display[table.display["group"] == group.key.label]
    return selected.drop(columns=["group"])


def _figure_html(figure: FigureFile) -> str:
    encoded = base64.b64encode(figure.png.read_bytes()).decode("ascii")
    return (f'<figure id="fig-{escape(figure.name)}"><img alt="{escape(figure.title)}" '
            f'src="data:image/png;base64,{encoded}"><figcaption>{escape(figure.title)}; files: '
            f'<a href="{escape(figure.svg.name)}">{escape(figure.svg.name)}</a>, '
            f'<a href="{escape(figure.png.name)}">{escape(figure.png.name)}</a></figcaption></figure>')


def _config_html(run: RunRecord) -> str:
    summary = (f"{run.label}: {run.model}, filter count {run.deepest_width}, {run.variant}, seed {run.seed} "
               f"({run.path})")
    return (f'<details id="config-{escape(run.label)}"><summary>{escape(summary)}</summary>'
            f"<pre>{escape(json.dumps(run.config, indent=2, sort_keys=True, default=str))}</pre></details>")


def render_report(*, provenance: Provenance, groups: Sequence[Group], figures: Sequence[FigureFile],
                  group_tables: Sequence[Table], tables: Sequence[Table], runs: Sequence[RunRecord],
                  methods: Sequence[str], findings: Mapping[str, Sequence[Finding]] | None = None) -> str:
    """The whole page. `group_tables` are shown per group (their `group` column selects the rows); `tables`
    (runs, skipped) are shown once, after the groups."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>inception_jax report</title>"
             f"<style>{_STYLE}</style></head><body>",
             "<h1>Residual connections and the dying network: report</h1>",
             f"<p>Generated {escape(provenance.generated)} from <code>{escape(str(provenance.root))}</code> "
             f"by <code>{escape(provenance.command)}</code>.<br>Regenerate from the run folders alone: "
             f"<code>{escape(provenance.regenerate)}</code></p>"]
    for sweep in provenance.sweeps:
        parts.append(f"<p class='note'>Sweep <b>{escape(str(sweep.get('name')))}</b> at "
                     f"<code>{escape(str(sweep.get('path')))}</code>, created {escape(str(sweep.get('created')))}, "
                     f"command <code>{escape(str(sweep.get('command')))}</code>, "
                     f"{len(sweep.get('run_ids') or [])} runs listed.</p>")
    skipped = next((t for t in tables if t.name == "skipped"), None)
    parts.append(f"<p>{len(runs)} runs used in {len(groups)} group(s); "
                 f"{0 if skipped is None else len(skipped.data)} skipped (listed under Skipped runs).</p>")
    parts.append("<ul>" + "".join(f'<li><a href="#group-{escape(g.key.slug)}">{escape(g.key.label)}</a></li>'
                                  for g in groups) + "</ul>")
    for label, items in (findings or {}).items():
        parts.append(f"<h2>Findings: {escape(label)}</h2><p class='note'>Stated from these runs' own numbers "
                     "(rules under How the numbers are made); the figures and tables below show them.</p><ul>"
                     + "".join(f"<li>{escape(f.text)}</li>" for f in items) + "</ul>")
    for group in groups:
        parts.append(f'<h2 id="group-{escape(group.key.slug)}">{escape(group.key.label)}</h2>')
        parts.append(f"<p class='note'>{len(group.runs)} runs; filter counts {group.widths}; variants "
                     f"{escape(', '.join(group.labels))}.</p>")
        parts += [f'<p class="warning">Not like for like: {escape(text)}</p>' for text in group.warnings]
        for figure in (f for f in figures if f.group == group.key.label):
            parts.append(_figure_html(figure))
        for table in group_tables:
            parts.append(_table_html(table, _rows_of_group(table, group), f"table-{table.name}-{group.key.slug}"))
    if not groups:
        parts.append("<p class='warning'>No finished run to analyse.</p>")
    parts.append("<h2>All runs</h2>")
    for table in tables:
        parts.append(_table_html(table, table.display, f"table-{table.name}"))
    parts.append("<h2>How the numbers are made</h2><ul>" + "".join(f"<li>{escape(m)}</li>" for m in methods)
                 + "</ul>")
    definitions = sorted({str(r.verdict["definition"]) for r in runs if r.verdict and r.verdict.get("definition")})
    parts.append("<h2>Verdict definitions (inception_jax/training/verdicts.py, the rules training applied)</h2>"
                 f'<pre class="verbatim">{escape(ZERO_FRACTION_DEFINITION)}\n\n{escape(DEFINITION_TEXT)}</pre>')
    if definitions:
        parts.append("<p class='note'>As recorded in the runs' verdict.json:</p>"
                     + "".join(f"<pre>{escape(d)}</pre>" for d in definitions))
    parts.append("<h2>Each run's config</h2>" + "".join(_config_html(run) for run in runs))
    parts.append("</body></html>")
    return "\n".join(parts)
