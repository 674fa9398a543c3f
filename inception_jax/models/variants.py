"""A network variant's name: written once into each run's config.json ("derived.variant"), read back by the
analysis, and shown to readers in words. One home for the scheme, so writer and reader cannot drift.

Stored names: "plain" (no shortcuts), "inception_v4", "scale=<s>" (one constant scale for every block type),
"scale=<a>/<b>/<c>" (one per block type), or the scale mode ("learnable", ...).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

PLAIN = "plain"
INCEPTION_V4 = "inception_v4"
_CONSTANT = re.compile(r"scale=([-+0-9.eE]+(?:/[-+0-9.eE]+)*)")


def variant_name(*, model_name: str, use_residual: bool, residual_scale_mode: str,
                 residual_scale: Sequence[float]) -> str:
    """The stored name of a model's variant (config.json "derived.variant")."""
    if model_name == INCEPTION_V4:
        return INCEPTION_V4
    if not use_residual:
        return PLAIN
    if residual_scale_mode != "constant":
        return residual_scale_mode
    scales = sorted(set(residual_scale))
    return "scale=" + "/".join(f"{s:g}" for s in (scales if len(scales) == 1 else residual_scale))


@dataclasses.dataclass(frozen=True)
class Variant:
    """A stored name read back: whether it has shortcuts, and its constant scale(s) when it has them."""

    name: str
    is_residual: bool
    scales: tuple[float, ...] | None  # constant scales (one, or one per block type); None: not a constant scale

    @property
    def scale(self) -> float | None:
        """The one constant scale (None for per-block scales, learnable ones and shortcut-free nets)."""
        return self.scales[0] if self.scales and len(self.scales) == 1 else None


def parse_variant(name: str, is_residual: bool | None = None) -> Variant:
    """`name` as written by variant_name. `is_residual` (config.json's model.use_residual) wins when given:
    a stored name alone cannot tell a plain Inception-v4 from a residual one."""
    match = _CONSTANT.fullmatch(name)
    scales = None
    if match:
        try:
            scales = tuple(float(s) for s in match.group(1).split("/"))
        except ValueError:
            scales = None
    residual = is_residual if is_residual is not None else name not in (PLAIN, INCEPTION_V4)
    return Variant(name, residual, scales if residual else None)


def display_name(name: str, is_residual: bool | None = None) -> str:
    """How a reader sees a variant: "plain", "residual, scale 0.3", "residual, unscaled", "residual, learnable
    scale" (figure legends, findings, tables)."""
    variant = parse_variant(name, is_residual)
    if name == INCEPTION_V4:
        return "Inception-v4 (plain)"
    if not variant.is_residual:
        return "plain" if name == PLAIN else name
    if variant.scale is not None:
        return "residual, unscaled" if variant.scale == 1.0 else f"residual, scale {variant.scale:g}"
    if variant.scales:
        return "residual, scales " + " / ".join(f"{s:g}" for s in variant.scales)
    return f"residual, {name} scale"


def order_key(name: str, is_residual: bool | None = None) -> tuple[int, float, str]:
    """Display order: plain first (then other shortcut-free variants), constant scales ascending, learnable, the
    rest."""
    variant = parse_variant(name, is_residual)
    if not variant.is_residual:
        return 0, 0.0 if name == PLAIN else 1.0, name
    if variant.scales:
        return 1, variant.scales[0], name
    if name.startswith("learnable"):
        return 2, 0.0, name
    return 3, 0.0, name
