"""The dying-network diagnostics (shared/reference/DYING.md): what the train step measures, and the verdict a
run's logged history gets. Both definitions live only here; the README and the report quote them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from inception_jax.models import ModelOutput

WINDOW = 10  # K logged steps per window
DEAD_ZERO_FRACTION = 0.99
DEAD_LOSS_FRACTION = 0.95  # of ln C
DAMAGED_ZERO_FRACTION = 0.9
VERDICTS = ("healthy", "transient_death", "damaged", "died", "diverged")

DEFINITION = (
    f"Windows are K={WINDOW} consecutive logged train steps. The window ending at step t is dead iff "
    f"mean(prepool_zero_frac) >= {DEAD_ZERO_FRACTION} and mean(loss) >= {DEAD_LOSS_FRACTION}*ln(C) over it "
    "(C = number of classes; prepool_zero_frac = fraction of exact zeros in the pre-pool activation). "
    "diverged: any non-finite loss (never called died). died: the last window is dead; t_death is the first step "
    "of the earliest window in the final unbroken run of dead windows. transient_death: some window was dead but "
    f"the last is not. damaged: not dead, but the last window's mean zero fraction >= {DAMAGED_ZERO_FRACTION}. "
    "healthy: none of these.")


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


@dataclasses.dataclass(frozen=True)
class Verdict:
    verdict: str
    t_death: int | None
    final_zero_frac: float
    final_loss: float
    window: int = WINDOW
    definition: str = DEFINITION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def judge(steps: Sequence[int], zero_fracs: Sequence[float], losses: Sequence[float], num_classes: int,
          *, window: int = WINDOW) -> Verdict:
    """The verdict of DEFINITION for a run's logged train history (one entry per logged step, in step order)."""
    if len(steps) != len(zero_fracs) or len(steps) != len(losses):
        raise ValueError(f"judge: {len(steps)} steps, {len(zero_fracs)} zero fractions, {len(losses)} losses")
    if not steps:
        return Verdict("healthy", None, math.nan, math.nan, window)
    if any(not math.isfinite(v) for v in losses):
        finite = [v for v in zero_fracs if math.isfinite(v)]
        return Verdict("diverged", None, finite[-1] if finite else math.nan, math.nan, window)
    k = min(window, len(steps))
    loss_floor = DEAD_LOSS_FRACTION * math.log(num_classes)
    dead = [(_mean(zero_fracs[i - k + 1:i + 1]) >= DEAD_ZERO_FRACTION
             and _mean(losses[i - k + 1:i + 1]) >= loss_floor) for i in range(k - 1, len(steps))]
    final_z, final_loss = _mean(zero_fracs[-k:]), _mean(losses[-k:])
    if dead[-1]:
        first = len(dead) - 1
        while first > 0 and dead[first - 1]:
            first -= 1
        # Window index `first` ends at history index first + k - 1 and so starts at history index `first`.
        return Verdict("died", int(steps[first]), final_z, final_loss, window)
    if any(dead):
        return Verdict("transient_death", None, final_z, final_loss, window)
    if final_z >= DAMAGED_ZERO_FRACTION:
        return Verdict("damaged", None, final_z, final_loss, window)
    return Verdict("healthy", None, final_z, final_loss, window)


def dead_windows_at_end(zero_fracs: Sequence[float], losses: Sequence[float], num_classes: int,
                        *, window: int = WINDOW) -> int:
    """How many consecutive windows, ending with the latest, are dead (for stopping dead runs early)."""
    count = 0
    loss_floor = DEAD_LOSS_FRACTION * math.log(num_classes)
    for end in range(len(zero_fracs), window - 1, -1):
        z, loss = zero_fracs[end - window:end], losses[end - window:end]
        if _mean(z) >= DEAD_ZERO_FRACTION and _mean(loss) >= loss_floor:
            count += 1
        else:
            break
    return count
