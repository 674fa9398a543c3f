"""Dying-network figures across filter counts (docs/dying.md): activity, verdict heatmap, branch ratios, scales.

Every figure covers one group; its columns are the group's filter counts (derived.deepest_width) and its lines the
variants, each the mean over seeds with a min–max band. The metrics come from the train split, measured inside the
train step on the training batch (docs/run_folder.md).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analysis.curves import SMOOTHING_WINDOW, run_series, seed_band
from analysis.grouping import Curve, Group
from analysis.plotting import (
    VERDICT_COLOURS,
    add_legend,
    curve_colours,
    log_scale,
    mark_divergences,
    mark_empty,
    new_figure,
    plot_band,
    text_colour,
)
from analysis.tables import SOURCE_EVAL
from analysis.verdicts import VERDICTS

DEAD_ZERO_FRACTION = 0.99  # docs/dying.md: a window is dead when mean z >= 0.99 (and the loss is near ln C)


def _num_classes(group: Group) -> int | None:
    values = {run.num_classes for run in group.runs if isinstance(run.num_classes, int)}
    return values.pop() if len(values) == 1 else None


def dying_figure(group: Group, *, window: int = SMOOTHING_WINDOW) -> Figure:
    """Rows: pre-pool zero fraction z, dead-channel fraction, train loss (mean of `window` lines); one column per
    filter count. z is not smoothed (death is a jump); the z panel marks 0.99, the loss panel ln C."""
    rows = (("prepool_zero_frac", "pre-pool zero fraction", None),
            ("prepool_dead_chan_frac", "dead-channel fraction", None),
            ("loss", f"train loss (mean of {window} lines)", window))
    colours = curve_colours(group)
    classes = _num_classes(group)
    figure, axes = new_figure(len(rows), len(group.widths))
    figure.suptitle(f"Dying across filter counts\n{group.key.label}", fontsize=10)
    for column, width in enumerate(group.widths):
        for row, (key, title, smooth) in enumerate(rows):
            ax = axes[row, column]
            ax.set_title(f"{title}, filter count {width}", fontsize=9)
            ax.set_xlabel("step")
            drawn = 0
            for curve in group.curves_at(width):
                band = seed_band([run_series(run, "train", key, smooth=smooth) for run in curve.runs])
                if band.has_data():
                    plot_band(ax, band, "step", colours[curve.label], curve.name)
                    drawn += 1
                if key == "loss":
                    mark_divergences(ax, curve.runs, "step", colours[curve.label])
            if not drawn:
                mark_empty(ax, f"no {key} logged")
            elif key == "loss":
                log_scale(ax)  # a diverging run's blow-up must not flatten the others
            if drawn and key == "loss" and classes:
                ax.axhline(math.log(classes), color="gray", linestyle="--", linewidth=1,
                           label=f"ln C = {math.log(classes):.3f}")
                ax.annotate("ln C", (0.01, math.log(classes)), xycoords=("axes fraction", "data"), fontsize=7,
                            color="gray", va="bottom")
            if key != "loss":
                ax.set_ylim(-0.02, 1.02)  # fractions: one fixed scale makes panels comparable at a glance
            if drawn and key == "prepool_zero_frac":
                ax.axhline(DEAD_ZERO_FRACTION, color="gray", linestyle=":", linewidth=1, label="z = 0.99 (dead)")
    add_legend(list(axes.flat))
    return figure


def verdict_heatmap(group: Group, cells: pd.DataFrame) -> Figure:
    """Filter count (rows, ascending upwards) × variant (columns), coloured by the seeds' combined verdict and
    annotated with the verdict counts and the final accuracy. `cells`: tables.verdict_cells(group)."""
    labels, widths = group.labels, group.widths
    figure = Figure(figsize=(1.5 * len(labels) + 2.8, 0.9 * len(widths) + 1.8), dpi=110, layout="constrained")
    ax = figure.add_subplot()
    image = np.ones((len(widths), len(labels), 4))  # white where a (width, variant) was not run
    for cell in cells.itertuples(index=False):
        y, x = widths.index(cell.width), labels.index(cell.variant)
        image[y, x] = to_rgba(VERDICT_COLOURS.get(cell.verdict, VERDICT_COLOURS["unknown"]))
        accuracy = "" if math.isnan(cell.accuracy) else (
            f"\n{'top-1' if cell.accuracy_source == SOURCE_EVAL else 'train acc'} {cell.accuracy:.3f}")
        counts = cell.counts if cell.runs > 1 else cell.verdict
        ax.text(x, y, counts.replace(", ", "\n") + accuracy, ha="center", va="center", fontsize=7,
                color=text_colour(cell.verdict))
    ax.imshow(image, origin="lower", aspect="auto")
    # White lines between cells, so neighbouring cells of one verdict still read as separate configurations.
    ax.set_xticks(np.arange(len(labels) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(widths) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(len(labels)), [group.name_of(label) for label in labels], rotation=30, ha="right")
    ax.set_yticks(range(len(widths)), [str(w) for w in widths])
    ax.set_xlabel("variant (residual scale)")
    ax.set_ylabel("filter count (deepest width)")
    ax.set_title(f"Verdict by filter count and variant\n{group.key.label}", fontsize=9)
    present = [v for v in (*VERDICTS, "unknown") if v in set(cells["verdict"])] if len(cells) else []
    ax.legend(handles=[Patch(color=VERDICT_COLOURS[v], label=v) for v in present], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def stages(group: Group, prefix: str) -> list[str]:
    """Stage names (a, b, c) for which some run logged `prefix/<stage>`."""
    keys = {key for run in group.runs for key in run.train.keys_with_prefix(prefix + "/")}
    return sorted(key.split("/", 1)[1] for key in keys)


def block_ratio_figure(group: Group) -> Figure | None:
    """Per stage (rows) and filter count (columns): the largest residual/shortcut ratio over the stage's blocks,
    RMS(scaled branch) / RMS(shortcut), against step; None when no run logged it (e.g. only plain runs)."""
    names = stages(group, "block_ratio")
    if not names:
        return None
    colours = curve_colours(group)
    figure, axes = new_figure(len(names), len(group.widths))
    figure.suptitle(f"Residual / shortcut ratio, max over a stage's blocks\n{group.key.label}", fontsize=10)
    for column, width in enumerate(group.widths):
        for row, stage in enumerate(names):
            ax = axes[row, column]
            ax.set_title(f"stage {stage}, filter count {width}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("RMS(s·branch) / RMS(shortcut)")
            lowest = []
            for curve in group.curves_at(width):
                band = seed_band([run_series(run, "train", f"block_ratio/{stage}", block="max")
                                  for run in curve.runs])
                if band.has_data():
                    plot_band(ax, band, "step", colours[curve.label], curve.name)
                    lowest.append(np.nanmin(band.low))
            if lowest and min(lowest) > 0:
                log_scale(ax)  # dying blocks climb from ~0.1 to ~100: only a log axis shows both
            if not lowest:
                mark_empty(ax, "no block_ratio logged")
    add_legend(list(axes.flat))
    return figure


def learnable_curves(group: Group) -> dict[str, list[Curve]]:
    """Curve label -> its curves (one per filter count), for curves whose runs logged learnable scales."""
    out: dict[str, list[Curve]] = {}
    for curve in group.curves:
        if any(run.train.keys_with_prefix("residual_scale/") for run in curve.runs):
            out.setdefault(curve.label, []).append(curve)
    return out


def learnable_scale_figure(group: Group, label: str) -> Figure:
    """The learnable scales of one variant: rows = stages, columns = filter counts, one line per block (mean over
    seeds with a band). learnable_channel scales logged per channel are shown as their mean."""
    curves = learnable_curves(group)[label]
    names = stages(group, "residual_scale")
    figure, axes = new_figure(len(names), len(curves))
    figure.suptitle(f"Learnable residual scales ({group.name_of(label)})\n{group.key.label}", fontsize=10)
    for column, curve in enumerate(curves):
        for row, stage in enumerate(names):
            ax = axes[row, column]
            ax.set_title(f"stage {stage}, filter count {curve.width}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("residual scale")
            key = f"residual_scale/{stage}"
            blocks = max((run.train.blocks(key).shape[1] for run in curve.runs), default=0)
            palette = [tuple(float(c) for c in colour) for colour in _block_colours(blocks)]
            for block in range(blocks):
                band = seed_band([run_series(run, "train", key, block=block) for run in curve.runs])
                if band.has_data():
                    plot_band(ax, band, "step", palette[block], f"block {block + 1}")
            if not ax.lines:
                mark_empty(ax, f"no {key} logged")
    add_legend(list(axes.flat))
    return figure


def _block_colours(count: int) -> np.ndarray:
    return colormaps["plasma"](np.linspace(0.0, 0.85, max(count, 1)))
