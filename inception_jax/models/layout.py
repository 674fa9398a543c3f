"""Whole-model helpers over parameters: counting them without materialising, and switching block layouts."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from flax import nnx

from inception_jax.models.network import InceptionNet, build_model
from inception_jax.models.options import ModelOptions
from inception_jax.models.stacking import to_scanned, to_unrolled


def count_params(opts: ModelOptions, *, collection: type[nnx.Variable] = nnx.Param) -> int:
    """Number of scalars in `collection` (parameters by default) of a model, computed with `nnx.eval_shape`."""
    return _counts(opts).get(collection.__name__, 0)


@functools.lru_cache(maxsize=32)
def _counts(opts: ModelOptions) -> dict[str, int]:
    """Scalars per variable type (Param, BatchStat, ...) of an abstract model: tracing a full network costs
    seconds, so one trace answers every collection."""
    abstract = nnx.eval_shape(lambda: build_model(opts))
    counts: dict[str, int] = {}
    for _, var in nnx.to_flat_state(nnx.state(abstract)):
        name = type(var).__name__
        counts[name] = counts.get(name, 0) + int(np.prod(var.shape))
    return counts


def convert_layout(model: InceptionNet, *, scan_blocks: bool) -> InceptionNet:
    """The same network with its weights in the other block layout (scanned <-> unrolled)."""
    opts = model.options
    if opts.scan_blocks == scan_blocks:
        return model
    target_opts = dataclasses.replace(opts, scan_blocks=scan_blocks, remat_blocks=opts.remat_blocks and scan_blocks)
    target = nnx.eval_shape(lambda: build_model(target_opts))
    pure = nnx.to_pure_dict(nnx.state(model))
    counts = (target if scan_blocks else model).stacked_counts()
    pure = to_scanned(to_unrolled(pure), counts) if scan_blocks else to_unrolled(pure)
    graphdef, state = nnx.split(target)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
