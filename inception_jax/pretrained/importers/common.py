"""What the importers share: the spec's modules in creation order, a registry of source tensors that knows which
were used, a writer that fills our variables leaf by leaf with every check, and the result type.

Nothing is skipped silently: every problem (a source tensor without a place, a leaf left empty, a shape that does
not fit, a gamma a bn_scale=False model cannot hold) is collected and raised together in one
`ImportMismatchError` that names the tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from inception_jax.models import InceptionNet, ModelOptions, get_architecture
from inception_jax.models.blocks import Conv, MixedSpec, conv_names
from inception_jax.pretrained.model_io import (
    COLLECTIONS,
    Variables,
    abstract_variables,
    flat_shapes,
    model_from_variables,
    relayout,
)

GAMMA_TOLERANCE = 1e-6  # TF-ported weights carry gamma written as exact ones (docs/architecture.md §8.1)
MAX_LISTED = 25


class ImportMismatchError(ValueError):
    """The source and the target model do not correspond one to one; the message lists every offending name."""


@dataclasses.dataclass(frozen=True)
class SpecModule:
    """One module of the spec network, in creation order. `path` is the unrolled path (`blocks_a_3`)."""

    path: str
    kind: str  # 'unit' (one ConvBN) | 'mixed' (ConvBN units, concatenated) | 'residual' (units + up) | 'dense'
    branches: tuple = ()  # the spec's branches for 'mixed' / 'residual' (importers name units from them)
    stage: str = ""  # 'a' / 'b' / 'c' for repeated blocks
    index: int = -1  # position within the stage, 0-based

    @property
    def units(self) -> list[str]:
        return conv_names(self.branches)


def spec_modules(opts: ModelOptions) -> list[SpecModule]:
    """The modules of `opts`'s network that hold weights, in the order the reference code creates them (the aux
    head excluded: no importable source has one)."""
    arch = get_architecture(opts.name)
    mods: list[SpecModule] = []
    for layer in arch.stem:
        if isinstance(layer, Conv):
            mods.append(SpecModule(f"stem/{layer.name}", "unit"))
        elif isinstance(layer, MixedSpec):
            mods.append(SpecModule(f"stem/{layer.name}", "mixed", layer.branches))
    block_kind = "residual" if arch.residual else "mixed"
    stages = {"a": arch.block_a, "b": arch.block_b, "c": arch.block_c}
    reductions = {"a": ("reduction_a", arch.reduction_a), "b": ("reduction_b", arch.reduction_b)}
    for stage, count in zip("abc", opts.block_counts, strict=True):
        mods += [SpecModule(f"blocks_{stage}_{i}", block_kind, stages[stage], stage, i) for i in range(count)]
        if stage in reductions:
            mods.append(SpecModule(reductions[stage][0], "mixed", reductions[stage][1]))
    if arch.final_conv:
        mods.append(SpecModule("final_conv", "unit"))
    mods.append(SpecModule("head/fc", "dense"))
    return mods


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {x}" for x in items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


class SourceTensors:
    """The source's named tensors; remembers which were taken, so unused ones can be named."""

    def __init__(self, tensors: Mapping[str, Any], to_numpy: Callable[[Any], np.ndarray] = np.asarray):
        self._tensors = dict(tensors)
        self._to_numpy = to_numpy
        self.taken: dict[str, int] = {}
        self.dropped: list[str] = []
        self.absent: list[str] = []

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self._tensors)

    def names(self) -> list[str]:
        return list(self._tensors)

    def take(self, name: str, wanted_for: str) -> np.ndarray | None:
        """The tensor `name` as float32 numpy, marked used; None (and recorded) if the source lacks it."""
        if name not in self._tensors:
            self.absent.append(f"{name} (for {wanted_for})")
            return None
        self.taken[name] = self.taken.get(name, 0) + 1
        return np.asarray(self._to_numpy(self._tensors[name]), np.float32)

    def drop(self, names: Iterable[str]) -> None:
        """Mark tensors as deliberately not imported (e.g. BatchNorm's num_batches_tracked)."""
        for n in names:
            self.dropped.append(n)
            self.taken[n] = self.taken.get(n, 0) + 1

    def unused(self) -> list[str]:
        return [n for n in self._tensors if n not in self.taken]

    def reused(self) -> list[str]:
        return [f"{n} (used {c} times)" for n, c in self.taken.items() if c > 1]


class VariableWriter:
    """Fills the unrolled variables of `opts`'s model leaf by leaf (`params/stem/conv1a/conv/kernel`)."""

    def __init__(self, opts: ModelOptions):
        abstract = abstract_variables(dataclasses.replace(opts, scan_blocks=False))
        self.options = opts
        self.expected = {f"{c}/{k}": s for c in COLLECTIONS for k, s in flat_shapes(abstract[c]).items()}
        self.values: dict[str, np.ndarray] = {}
        self.origin: dict[str, str] = {}
        self.problems: list[str] = []

    def put(self, leaf: str, value: np.ndarray | None, origin: str, source_shape: tuple | None = None) -> None:
        """Store `value` at `leaf`. `origin` names the source tensor; `source_shape` its shape before any transpose."""
        if value is None:  # the source lacked it; SourceTensors recorded that
            return
        shown = f"{origin} {tuple(source_shape if source_shape is not None else value.shape)}"
        if leaf not in self.expected:
            self.problems.append(f"{shown}: {self.options.name} has no variable {leaf}")
        elif leaf in self.values:
            self.problems.append(f"{shown}: {leaf} was already filled from {self.origin[leaf]}")
        elif tuple(value.shape) != self.expected[leaf]:
            after = f" ({tuple(value.shape)} in our layout)" if source_shape is not None else ""
            self.problems.append(f"{shown}{after} does not fit {leaf}, which is {self.expected[leaf]}")
        else:
            self.values[leaf] = value
            self.origin[leaf] = origin

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def variables(self, tensors: SourceTensors, *, source: str, hint: str = "") -> Variables:
        """The unrolled variables, or ImportMismatchError naming every problem found on the way."""
        missing = [f"{k} {self.expected[k]}" for k in self.expected if k not in self.values]
        sections = [(f"{source} tensors that fit nowhere / do not fit", self.problems),
                    (f"tensors {source} lacks", tensors.absent),
                    (f"{source} tensors left unused", tensors.unused()),
                    (f"{source} tensors used more than once", tensors.reused()),
                    (f"{self.options.name} variables left empty", missing)]
        sections = [(t, items) for t, items in sections if items]
        if sections:
            body = "\n".join(_listing(t, items) for t, items in sections)
            raise ImportMismatchError(f"cannot import {source} into {self.options.name}:\n{body}"
                                      + (f"\n  hint: {hint}" if hint else ""))
        out: Variables = {c: {} for c in COLLECTIONS}
        for leaf, value in self.values.items():
            collection, *path = leaf.split("/")
            node = out[collection]
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        return out


def check_gamma(writer: VariableWriter, gamma: np.ndarray | None, name: str, leaf: str, bn_scale: bool) -> None:
    """BatchNorm gamma: copied for bn_scale=True; for bn_scale=False it must be all ones (§8.1), else refused."""
    if gamma is None:
        return
    if bn_scale:
        writer.put(leaf, gamma, name)
        return
    beta_shape = writer.expected.get(leaf.rsplit("/", 1)[0] + "/bias")
    if tuple(gamma.shape) != beta_shape:
        writer.problem(f"{name} {tuple(gamma.shape)}: gamma does not fit a BatchNorm of shape {beta_shape}")
        return
    deviation = float(np.max(np.abs(gamma - 1.0))) if gamma.size else 0.0
    if deviation > GAMMA_TOLERANCE:
        writer.problem(f"{name}: gamma is not all ones (max |gamma - 1| = {deviation:.3g}); a bn_scale=False model "
                       "has no place for it: convert with bn_scale=True")


@dataclasses.dataclass
class ImportedModel:
    """A converted network: its options and variables (in `options.scan_blocks`' layout) plus what was done."""

    options: ModelOptions
    variables: Variables
    source: str
    tensors_read: int
    tensors_used: int
    tensors_dropped: int
    notes: list[str] = dataclasses.field(default_factory=list)

    def model(self) -> InceptionNet:
        return model_from_variables(self.options, self.variables)


def finish(writer: VariableWriter, tensors: SourceTensors, *, source: str, notes: list[str],
           hint: str = "") -> ImportedModel:
    """Check completeness, then put the unrolled variables into the layout the options ask for."""
    unrolled = writer.variables(tensors, source=source, hint=hint)
    opts = writer.options
    return ImportedModel(
        options=opts, variables=relayout(unrolled, opts, from_scanned=False), source=source,
        tensors_read=len(tensors), tensors_used=len(tensors.taken) - len(tensors.dropped),
        tensors_dropped=len(tensors.dropped), notes=notes)


def head_classes(shape: tuple, origin: str, *, features: int, classes_axis: int) -> int:
    """Class count of a classifier weight whose other axis must be the pooled feature width."""
    shape = tuple(shape)
    if len(shape) != 2 or shape[1 - classes_axis] != features:
        expected = ("classes", features) if classes_axis == 0 else (features, "classes")
        raise ImportMismatchError(f"{origin} has shape {shape}; a classifier weight shaped {expected} was expected")
    return int(shape[classes_axis])
