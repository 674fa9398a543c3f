"""matplotlib pieces shared by the figure modules: colours, a mean line with its seed band, panels, saving.

Figures are built as `matplotlib.figure.Figure` objects, never through pyplot, so they need no GUI backend and no
global state (PNG goes through Agg); callers get the Figure back to inspect or save. A curve label keeps one colour
in every figure of its group: shortcut-free variants in black and greys, constant scales along viridis in
ascending order, learnable ones in warm colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.curves import Band
from analysis.grouping import Group, variant_order

VERDICT_COLOURS = {
    "healthy": "#4daf4a",
    "not_learning": "#9ecae1",
    "transient_death": "#fed976",
    "damaged": "#fd8d3c",
    "died": "#d7301f",
    "diverged": "#807dba",
    "unknown": "#d9d9d9",
}
_DARK_VERDICTS = {"died", "diverged"}  # white text reads better on these
_GREYS = ("black", "dimgray", "gray", "darkgray")
_WARM = ("tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:olive")
DPI = 110


def curve_colours(group: Group) -> dict[str, str | tuple[float, ...]]:
    """Label -> colour for every curve label in the group (see the module docstring)."""
    kinds: dict[str, int] = {}
    for curve in group.curves:
        kinds[curve.label] = variant_order(curve.variant, curve.is_residual)[0]
    labels = group.labels
    plain = [label for label in labels if kinds[label] == 0]
    constant = [label for label in labels if kinds[label] == 1]
    other = [label for label in labels if kinds[label] >= 2]
    colours: dict[str, str | tuple[float, ...]] = {}
    for i, label in enumerate(plain):
        colours[label] = _GREYS[i % len(_GREYS)]
    viridis = colormaps["viridis"]
    for label, position in zip(constant, np.linspace(0.1, 0.85, max(len(constant), 1))):
        colours[label] = tuple(float(c) for c in viridis(position))
    for i, label in enumerate(other):
        colours[label] = _WARM[i % len(_WARM)]
    return colours


def text_colour(verdict: str) -> str:
    return "white" if verdict in _DARK_VERDICTS else "black"


def new_figure(rows: int, columns: int, *, panel_size: tuple[float, float] = (3.6, 2.7)) -> tuple[Figure, np.ndarray]:
    """A Figure with a rows × columns grid of axes (always a 2-D array)."""
    figure = Figure(figsize=(panel_size[0] * columns + 0.6, panel_size[1] * rows + 0.8), dpi=DPI,
                    layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def curve_label(label: str, seeds: int) -> str:
    """The legend entry: the curve label, with the seed count when a band is drawn."""
    return f"{label} ({seeds} seeds)" if seeds > 1 else label


def plot_band(ax: Axes, band: Band, x: str, colour: str | tuple[float, ...], label: str) -> Line2D:
    """The mean over seeds as a line (markers when there are few points), the min–max band when several seeds."""
    xs = band.steps if x == "step" else band.times
    few_points = np.count_nonzero(band.count) <= 30
    (line,) = ax.plot(xs, band.mean, color=colour, label=curve_label(label, band.seeds), linewidth=1.4,
                      marker="o" if few_points else None, markersize=3)
    if band.seeds > 1:
        ax.fill_between(xs, band.low, band.high, color=colour, alpha=0.2, linewidth=0)
    return line


def log_scale(ax: Axes) -> None:
    """A log y axis labelled with plain numbers (2, 3, 5, 1e+07), not '3x10^0': losses span a decade or two, or
    eight when a run diverges."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))


def mark_divergences(ax: Axes, runs: Sequence, x: str, colour: str | tuple[float, ...], key: str = "loss") -> None:
    """An x at each diverged run's last finite value of `key`, labelled with its step: the curve stops there (its
    next loss was not a number), and the panel's log axis keeps the blow-up before it from flattening the others."""
    for run in runs:
        if run.verdict_name != "diverged" or not run.train.has(key):
            continue
        values = run.train.scalar(key)
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size == 0:
            continue
        last = finite[-1]
        xs = run.train.steps if x == "step" else run.train.times
        ax.plot([xs[last]], [values[last]], marker="x", markersize=8, color=colour, linestyle="none")
        ax.annotate(f"diverged ({run.label}, step {int(run.train.steps[last]) + 1})", (xs[last], values[last]),
                    fontsize=6, color=colour, xytext=(3, 3), textcoords="offset points")


def mark_empty(ax: Axes, text: str) -> None:
    """Say why a panel has no lines, instead of leaving a blank panel that reads as 'all zero'."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray", fontsize=9)


def add_legend(axes: Sequence[Axes]) -> None:
    """One legend for the figure, from the first panel that has labelled lines."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="best")
            return


def save_figure(figure: Figure, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write stem.png and stem.svg into out_dir; returns their paths."""
    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    figure.savefig(png, dpi=DPI)
    # The first save placed the axes; keeping those positions spares the SVG a second constrained-layout pass.
    figure.set_layout_engine("none")
    figure.savefig(svg)
    return png, svg
