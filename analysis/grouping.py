"""Sort runs into groups that may share an axis and curves that average seeds, never mixing them silently.

A group holds the runs that can be compared on one figure: same dataset, image size, class count, optimizer,
learning rate and batch size (GROUP_FIELDS). Inside a group a curve is one (model, deepest width, variant) with all
its seeds. Any other config value that still differs inside a group or inside a curve is reported as a warning,
because then the comparison or the seed band is not like for like.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from analysis.runs import RunRecord
from inception_jax.models.variants import display_name, order_key

# (config key, how the value reads in a label). Changing one of these changes what "comparable" means.
GROUP_FIELDS = (
    ("data.name", "{}"),
    ("data.image_size", "{} px"),
    ("derived.num_classes", "{} classes"),
    ("train.optimizer", "{}"),
    ("train.learning_rate", "lr {}"),
    ("train.batch_size", "batch {}"),
)
# Values expected to differ between runs that are still comparable: identity, seeds, places on disk.
_BOOKKEEPING_PREFIXES = ("sweep.", "derived.")
# Across curves the model knobs differ by design (width multiplier, residual on/off, scale).
_CURVE_DEFINING_PREFIXES = ("model.",)


def variant_order(variant: str, is_residual: bool) -> tuple[int, float, str]:
    """Sort key: plain first (then other shortcut-free variants), constant scales ascending, learnable, the rest."""
    return order_key(variant, is_residual)


@dataclasses.dataclass(frozen=True)
class GroupKey:
    values: tuple[tuple[str, Any], ...]  # (config key, value) in GROUP_FIELDS order

    @property
    def label(self) -> str:
        formats = dict(GROUP_FIELDS)
        return ", ".join(formats[key].format(value) for key, value in self.values if value is not None)

    @property
    def slug(self) -> str:
        """A file-name-safe form of the label, stable across reruns."""
        text = "_".join(str(value) for _, value in self.values if value is not None)
        return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "group"


@dataclasses.dataclass(frozen=True)
class Curve:
    """One line on a figure: a (model, deepest width, variant) and its seeds (sorted by seed)."""

    model: str
    width: int
    variant: str
    is_residual: bool
    runs: tuple[RunRecord, ...]
    label: str  # the variant, prefixed by the model when the group holds several models
    warnings: tuple[str, ...] = ()
    name: str = ""  # the label in a reader's words ("residual, scale 0.3"): figure legends, the report's tables


@dataclasses.dataclass(frozen=True)
class Group:
    key: GroupKey
    runs: tuple[RunRecord, ...]
    curves: tuple[Curve, ...]  # by width, then model, then variant_order
    warnings: tuple[str, ...]

    @property
    def widths(self) -> list[int]:
        return sorted({curve.width for curve in self.curves})

    @property
    def labels(self) -> list[str]:
        """Curve labels in display order, each once: the heatmap's columns and the colour order."""
        return list(dict.fromkeys(curve.label for curve in sorted(self.curves, key=_label_order)))

    def name_of(self, label: str) -> str:
        """A curve label in a reader's words (Curve.name)."""
        return next((curve.name for curve in self.curves if curve.label == label), label)

    def curves_at(self, width: int) -> list[Curve]:
        return [curve for curve in self.curves if curve.width == width]

    def reference_for(self, curve: Curve) -> Curve | None:
        """The shortcut-free curve a residual curve is compared with: same width, same model when there is one,
        else the only shortcut-free curve at that width. None when there is no unambiguous reference."""
        plain = [c for c in self.curves_at(curve.width) if not c.is_residual]
        same_model = [c for c in plain if c.model == curve.model]
        candidates = same_model or plain
        return candidates[0] if len(candidates) == 1 else None


def run_seed(run: RunRecord) -> Any:
    """The run's seed (its label when the config has none): what pairs a residual run with its plain twin."""
    return run.seed if run.seed is not None else run.label


def paired_runs(curve: Curve, reference: Curve) -> list[tuple[RunRecord, RunRecord]]:
    """(run of `curve`, run of `reference`) with the same seed: same data order, same initial weights where the
    shapes agree, so a per-seed ratio compares like with like."""
    twins = {run_seed(run): run for run in reference.runs}
    return [(run, twins[run_seed(run)]) for run in curve.runs if run_seed(run) in twins]


def _label_order(curve: Curve) -> tuple[str, tuple[int, float, str]]:
    return curve.model, variant_order(curve.variant, curve.is_residual)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    leaves: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            leaves.update(_flatten(value, f"{name}."))
        else:
            leaves[name] = json.dumps(value, sort_keys=True, default=str)
    return leaves


def _is_bookkeeping(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return (key == "run_id" or key.startswith(_BOOKKEEPING_PREFIXES) or "seed" in last
            or last.endswith(("dir", "path")))


def config_differences(runs: Iterable[RunRecord], ignore_prefixes: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Config leaves (dotted keys) whose values differ among `runs`, with the distinct values; bookkeeping and
    `ignore_prefixes` are left out. A key absent from some runs counts as the value '(absent)'."""
    flat = [_flatten(run.config) for run in runs]
    keys = sorted({key for leaves in flat for key in leaves})
    differences = {}
    for key in keys:
        if _is_bookkeeping(key) or key.startswith(ignore_prefixes):
            continue
        values = sorted({leaves.get(key, "(absent)") for leaves in flat})
        if len(values) > 1:
            differences[key] = values
    return differences


def _describe(differences: dict[str, list[str]]) -> list[str]:
    shown = 6  # enough to recognise the values without flooding the report
    return [f"{key} differs: {', '.join(values[:shown])}{' …' if len(values) > shown else ''}"
            for key, values in differences.items()]


def _hashable(value: Any) -> Any:
    """Group values as dict keys: a structured value (a learning-rate schedule, an image size pair) as its JSON."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else value


def group_runs(runs: Iterable[RunRecord]) -> list[Group]:
    """Runs split into groups (sorted by label) and curves; see the module docstring."""
    by_key: dict[GroupKey, list[RunRecord]] = {}
    for run in runs:
        key = GroupKey(tuple((field, _hashable(run.get(field))) for field, _ in GROUP_FIELDS))
        by_key.setdefault(key, []).append(run)
    groups = []
    for key, members in by_key.items():
        several_models = len({run.model for run in members}) > 1
        by_curve: dict[tuple[str, int, str, bool], list[RunRecord]] = {}
        for run in members:
            by_curve.setdefault((run.model, run.deepest_width, run.variant, run.is_residual), []).append(run)
        curves = []
        for (model, width, variant, is_residual), seeds in by_curve.items():
            seeds.sort(key=lambda run: (run.seed if isinstance(run.seed, int) else 0, run.label))
            label = f"{model} {variant}" if several_models else variant
            name = display_name(variant, is_residual)
            warnings = tuple(f"{label} at width {width}: " + text for text in _describe(config_differences(seeds)))
            curves.append(Curve(model, width, variant, is_residual, tuple(seeds), label, warnings,
                                f"{model} {name}" if several_models else name))
        curves.sort(key=lambda c: (c.width, *_label_order(c)))
        group_warnings = _describe(config_differences(members, _CURVE_DEFINING_PREFIXES))
        group_warnings += [text for curve in curves for text in curve.warnings]
        groups.append(Group(key, tuple(members), tuple(curves), tuple(group_warnings)))
    return sorted(groups, key=lambda g: g.key.label)
