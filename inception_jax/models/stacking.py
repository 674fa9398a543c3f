"""Scanned ("stacked") vs unrolled block layouts.

Identical repeated blocks are stored as one module whose arrays carry a leading block axis and are applied
with `jax.lax.scan`, so compile time does not grow with depth. The unrolled layout keeps one module per block
(`blocks_b_0`, `blocks_b_1`, ...) for debugging and for importers. Both layouts draw the same initial weights
for the same seed, and `to_unrolled` / `to_scanned` convert parameters between them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.models.ops import replaceable

STACKED_KEY = re.compile(r"blocks_[abc]")


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
    """One module of the blocks' common class whose every variable is the blocks' variables stacked on axis 0."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.state(m) for m in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def scan_stacked(stacked: nnx.Module, carry: jax.Array, fn: Callable[..., tuple[Any, Any]], *, xs: Any = None,
                 remat: bool = False):
    """Apply `fn(block, carry) -> (carry, out)` for each block of a stacked module; outs come back stacked.
    With `xs` (arrays with a leading block axis) it is `fn(block, carry, x)`, x the block's slice of `xs`.

    Variables the blocks update (BatchNorm statistics in training) are written back into `stacked`. `remat`:
    the backward pass recomputes each block's forward from its input (the scan's carry) instead of keeping the
    block's activations.
    """
    graphdef, state = nnx.split(stacked)

    def body(c, inputs):
        block_state, x = inputs
        block = nnx.merge(graphdef, block_state)
        c, out = fn(block, c) if xs is None else fn(block, c, x)
        return c, (nnx.state(block), out)

    if remat:  # prevent_cse=False: inside a scan XLA cannot merge the recomputation back into the forward
        body = jax.checkpoint(body, prevent_cse=False)
    carry, (new_state, outs) = jax.lax.scan(body, carry, (state, xs))
    nnx.update(stacked, new_state)
    return carry, outs


@replaceable
def scan_blocks(stacked: nnx.Module, x: jax.Array, apply: Callable[[nnx.Module, jax.Array], tuple[jax.Array, Any]],
                *, remat: bool) -> tuple[jax.Array, Any]:
    """A stage's stacked blocks applied in turn, `apply(block, h) -> (h, per-block outputs)`: (the stage's output,
    the per-block outputs stacked). CPU twin: cpu/blocks.py `scan_blocks` (the deferred ReLU mask); they agree:
    tests/test_models.py::
    test_scanned_residual_blocks_have_the_unrolled_gradients_and_keep_no_relu_mask_per_block."""
    return scan_stacked(stacked, x, apply, remat=remat)


def to_unrolled(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A scanned model's pure-dict state (`nnx.state(m).to_pure_dict()`, or one collection of it) -> unrolled."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if STACKED_KEY.fullmatch(key):
            count = jax.tree.leaves(value)[0].shape[0]
            for i in range(count):
                out[f"{key}_{i}"] = jax.tree.map(lambda a, i=i: a[i], value)
        else:
            out[key] = value
    return out


def to_scanned(tree: Mapping[str, Any], stacked_counts: Mapping[str, int]) -> dict[str, Any]:
    """An unrolled pure-dict state -> scanned. `stacked_counts` maps `blocks_a` etc. to how many leading blocks
    the scanned layout stacks (a model's `stacked_counts()`); blocks past that count (the released IR-v2's
    linear last C block) keep their unrolled names in both layouts."""
    out = dict(tree)
    for key, count in stacked_counts.items():
        if count == 0:
            continue
        names = [f"{key}_{i}" for i in range(count)]
        missing = [n for n in names if n not in out]
        if missing:
            raise KeyError(f"to_scanned: the unrolled state has no {missing}; it has {sorted(tree)}")
        out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *(out.pop(n) for n in names))
    return out
