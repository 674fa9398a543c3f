"""The dying-network diagnostics (docs/dying.md) the train step measures; the verdict a run's history gets from
them is in verdicts.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from inception_jax.models import ModelOutput


def activation_stats(out: ModelOutput) -> dict[str, jax.Array]:
    """Cheap statistics of one forward pass (computed inside the jitted step, on its batch)."""
    a = out.prepool.astype(jnp.float32)
    zero = a == 0
    features = jnp.mean(a, axis=(1, 2))
    logits = out.logits
    stats = {
        "prepool_zero_frac": jnp.mean(zero.astype(jnp.float32)),
        "prepool_dead_chan_frac": jnp.mean(jnp.all(zero, axis=(0, 1, 2)).astype(jnp.float32)),
        "prepool_mean": jnp.mean(a),
        "prepool_std": jnp.std(a),
        "prepool_max": jnp.max(a),
        "feat_energy": jnp.mean(jnp.sum(jnp.square(features), axis=-1)),
        "logit_std": jnp.std(logits),
        "logit_absmax": jnp.max(jnp.abs(logits)),
    }
    for stage, block in (out.blocks or {}).items():
        stats[f"block_zero_frac/{stage}"] = block["zero_frac"]
        if "branch_rms" in block:
            stats[f"block_ratio/{stage}"] = block["branch_rms"] / jnp.maximum(block["shortcut_rms"], 1e-12)
            stats[f"residual_scale/{stage}"] = block["scale"]
    return stats
