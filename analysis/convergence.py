"""Convergence figures in the style of the paper's Figs. 21–26: loss and error against step and wall time.

One figure per comparison (a group at one filter count): the top row against step, the bottom row against wall
time (training and evaluation from the first step: compiling happens before a run's clock starts); columns are
train loss, train top-1 error, eval top-1 error and eval top-5 error (the eval columns only when the runs logged
eval lines); one line per variant (plain and each residual scale), the mean over seeds with a min–max band. Errors
are in percent, as in the paper. Loss is on a log axis, so a diverging run's blow-up (1e7 before its NaN) leaves
the other curves readable; each diverged run is marked where its curve stops.
"""

from __future__ import annotations

import dataclasses

from matplotlib.figure import Figure

from analysis.curves import SMOOTHING_WINDOW, run_series, seed_band
from analysis.grouping import Group
from analysis.plotting import add_legend, curve_colours, log_scale, mark_divergences, mark_empty, new_figure, plot_band


@dataclasses.dataclass(frozen=True)
class Panel:
    split: str
    key: str
    title: str
    smoothed: bool  # train metrics are per batch: smooth them; eval points already average the eval set
    error_percent: bool


PANELS = (
    Panel("train", "loss", "train loss", smoothed=True, error_percent=False),
    Panel("train", "accuracy", "train top-1 error", smoothed=True, error_percent=True),
    Panel("eval", "top1", "eval top-1 error", smoothed=False, error_percent=True),
    Panel("eval", "top5", "eval top-5 error", smoothed=False, error_percent=True),
)
# (Band axis, title word, label)
X_AXES = (("step", "step", "step"), ("time", "wall time", "wall time from the first step (s)"))


def convergence_figure(group: Group, width: int, *, window: int = SMOOTHING_WINDOW) -> Figure:
    """The comparison figure for `group` at filter count `width` (panels titled '<metric> vs step|wall time').
    The eval columns are left out when no run of the comparison logged an eval line."""
    curves = group.curves_at(width)
    colours = curve_colours(group)
    has_eval = any(len(run.eval) for curve in curves for run in curve.runs)
    panels = PANELS if has_eval else tuple(p for p in PANELS if p.split != "eval")  # no empty eval columns
    figure, axes = new_figure(len(X_AXES), len(panels))
    figure.suptitle(f"Convergence at filter count {width}\n{group.key.label}", fontsize=10)
    for row, (x, x_title, x_label) in enumerate(X_AXES):
        for column, panel in enumerate(panels):
            ax = axes[row, column]
            ax.set_title(f"{panel.title} vs {x_title}", fontsize=9)
            ax.set_xlabel(x_label)
            if panel.error_percent:
                ax.set_ylabel("error (%)" + (f", mean of {window} lines" if panel.smoothed else ""))
            else:
                ax.set_ylabel(f"loss, mean of {window} lines")
            drawn = 0
            for curve in curves:
                series = [run_series(run, panel.split, panel.key, smooth=window if panel.smoothed else None,
                                     error_percent=panel.error_percent) for run in curve.runs]
                band = seed_band(series)
                if band.has_data():
                    plot_band(ax, band, x, colours[curve.label], curve.name)
                    drawn += 1
                if panel.key == "loss":
                    mark_divergences(ax, curve.runs, x, colours[curve.label])
            if not drawn:
                mark_empty(ax, f"no {panel.split} {panel.key} logged")
            elif panel.key == "loss":
                log_scale(ax)
    add_legend(list(axes.flat))
    return figure
