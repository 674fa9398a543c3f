"""Whole-model helpers over parameters: counting them without materialising, and switching block layouts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from inception_jax.models.network import InceptionNet
from inception_jax.models.options import ModelOptions
from inception_jax.models.stacking import to_scanned, to_unrolled


def count_params(opts: ModelOptions, *, collection=nnx.Param) -> int:
    """Number of scalars in `collection` (parameters by default) of a model, computed with `nnx.eval_shape`."""
    from inception_jax.models.registry import build_model

    abstract = nnx.eval_shape(lambda: build_model(opts))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, collection))))


def convert_layout(model: InceptionNet, *, scan_blocks: bool) -> InceptionNet:
    """The same network with its weights in the other block layout (scanned <-> unrolled)."""
    from inception_jax.models.registry import build_model

    opts = model.options
    if opts.scan_blocks == scan_blocks:
        return model
    target = nnx.eval_shape(lambda: build_model(dataclasses.replace(opts, scan_blocks=scan_blocks)))
    pure = nnx.state(model).to_pure_dict()
    counts = (target if scan_blocks else model).stacked_counts()
    pure = to_scanned(to_unrolled(pure), counts) if scan_blocks else to_unrolled(pure)
    graphdef, state = nnx.split(target)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
