"""The ablation knobs (docs/architecture.md §1.10 plus), validated and resolved against one architecture.

Every refusal happens here, before a parameter is created or anything compiles, and names the bad value and
what would be valid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from inception_jax.models.architecture import Architecture, min_image_size
from inception_jax.models.blocks import SCALE_MODES
from inception_jax.models.layers import INITIALIZERS
from inception_jax.models.registry import get_architecture
from inception_jax.validation import check_choice, did_you_mean

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
RESIDUAL_KNOBS = ("use_residual", "residual_scale", "residual_scale_mode", "plain_scale", "final_block_linear")

# Knob -> default. None means "the architecture's own default".
KNOB_DEFAULTS: dict[str, Any] = {
    "use_residual": None,
    "residual_scale": None,
    "residual_scale_mode": None,
    "plain_scale": None,
    "final_block_linear": None,
    "width_multiplier": 1.0,
    "filters": None,
    "block_counts": None,
    "bn_scale": False,
    "bn_momentum": 0.9997,
    "bn_eps": 1e-3,
    "bn_group_size": None,
    "dropout_rate": 0.2,
    "aux_head": False,
    "image_size": 299,
    "scan_blocks": True,
    "remat_blocks": False,
    "dtype": "float32",
    "param_dtype": "float32",
    "conv_init": "he_normal",
    "up_init": "glorot_uniform",
    "dense_init": "glorot_uniform",
    "up_init_scale": 1.0,
}


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Resolved knobs of one model; `filters` is the full table after the width multiplier and overrides."""

    name: str
    num_classes: int
    use_residual: bool
    residual_scale: tuple[float, float, float]
    residual_scale_mode: str
    plain_scale: float
    final_block_linear: bool
    width_multiplier: float
    filters: tuple[tuple[str, int], ...]
    block_counts: tuple[int, int, int]
    bn_scale: bool
    bn_momentum: float
    bn_eps: float
    bn_group_size: int | None
    dropout_rate: float
    aux_head: bool
    image_size: int
    scan_blocks: bool
    remat_blocks: bool
    dtype: str
    param_dtype: str
    conv_init: str
    up_init: str
    dense_init: str
    up_init_scale: float

    @property
    def filter_table(self) -> dict[str, int]:
        return dict(self.filters)

    @property
    def min_image_size(self) -> int:
        return min_image_size(self.aux_head)


def _where(arch: Architecture, knob: str) -> str:
    return f"create_model({arch.name!r}): {knob}"


def _finite_number(arch: Architecture, knob: str, value: Any, *, low: float = 0.0, low_inclusive: bool = True,
                   high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{_where(arch, knob)}={value!r} is not a finite number")
    ok = value >= low if low_inclusive else value > low
    if high is not None:
        ok = ok and value <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{_where(arch, knob)}={value!r} is out of range; it must be {bound}")
    return float(value)


def _choice(arch: Architecture, knob: str, value: Any, allowed: Sequence[str]) -> str:
    return check_choice(_where(arch, knob), value, allowed)


def _bool(arch: Architecture, knob: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{_where(arch, knob)}={value!r} must be True or False")
    return value


def _positive_int(arch: Architecture, knob: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{_where(arch, knob)}={value!r} must be an integer >= {minimum}")
    return value


def _residual_scale(arch: Architecture, value: Any) -> tuple[float, float, float]:
    if value is None:
        return arch.residual_scale
    given = value
    if isinstance(value, Mapping):
        unknown = set(value) - {"a", "b", "c"}
        if unknown:
            raise ValueError(f"{_where(arch, 'residual_scale')} has unknown block types {sorted(unknown)}; "
                             "use keys 'a', 'b', 'c'")
        value = tuple(value.get(k, d) for k, d in zip("abc", arch.residual_scale, strict=True))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (_finite_number(arch, "residual_scale", value),) * 3
    # A string is a sequence too: 'nan' (how a flag or a spreadsheet cell spells it) has three letters.
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{_where(arch, 'residual_scale')}={given!r} must be one number or one per block type "
                         "(a, b, c), e.g. 0.1 or (0.17, 0.1, 0.2)")
    return _per_stage(arch, "residual_scale", given, value, _finite_number)  # type: ignore[return-value]


def _per_stage(arch: Architecture, knob: str, given: Any, values: Sequence, check: Any, **bounds: Any) -> tuple:
    """Each stage's value checked, the error quoting the whole value as given (not one element of it)."""
    checked = []
    for stage, v in zip("abc", values, strict=True):
        try:
            checked.append(check(arch, knob, v, **bounds))
        except ValueError as e:
            why = str(e).partition(f"{_where(arch, knob)}={v!r} ")[2]
            raise ValueError(f"{_where(arch, knob)}={given!r}: stage {stage}'s {v!r} {why}") from None
    return tuple(checked)


def _block_counts(arch: Architecture, value: Any, final_block_linear: bool) -> tuple[int, int, int]:
    if value is None:
        return arch.block_counts
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ValueError(f"{_where(arch, 'block_counts')}={value!r} must list 3 repeat counts (A, B, C stages), "
                         f"e.g. {arch.block_counts}")
    counts = _per_stage(arch, "block_counts", value, value, _positive_int, minimum=0)
    if final_block_linear and counts[2] < 1:
        raise ValueError(f"{_where(arch, 'block_counts')}={value!r}: final_block_linear=True needs at least one "
                         "C block; use block_counts[2] >= 1 or final_block_linear=False")
    return counts  # type: ignore[return-value]


def _filters(arch: Architecture, multiplier: float, overrides: Any, aux_head: bool) -> tuple[tuple[str, int], ...]:
    """Scale every default filter count, then apply explicit overrides (absolute numbers, not scaled)."""
    defaults = {k: v for k, v in arch.filters.items() if aux_head or not k.startswith("aux.")}
    table = {k: math.floor(v * multiplier + 0.5) for k, v in defaults.items()}
    zero = [k for k, v in table.items() if v == 0]
    if zero:
        smallest = min(defaults[k] for k in zero)
        need = math.ceil(0.5 / smallest * 1000) / 1000
        raise ValueError(f"{_where(arch, 'width_multiplier')}={multiplier} leaves {len(zero)} branch(es) with zero "
                         f"filters ({', '.join(zero[:4])}{', ...' if len(zero) > 4 else ''}); "
                         f"use width_multiplier >= {need}")
    # A mapping, or (key, count) pairs (the form configs and spreadsheets hold).
    for key, value in dict(overrides or {}).items():
        if key not in defaults:
            hint = did_you_mean(key, list(defaults))
            raise ValueError(f"{_where(arch, 'filters')} has unknown entry {key!r}{hint}; the entries of "
                             f"{arch.name} are {sorted(defaults)}")
        table[key] = _positive_int(arch, f"filters[{key!r}]", value)
    return tuple(sorted(table.items()))


def model_options(name: str, *, num_classes: int = 1000, **knobs: Any) -> ModelOptions:
    """Model `name` (registry.MODEL_NAMES) with `knobs` validated against its architecture and every default
    filled in, without building anything: what configs and `create_model` call before a network exists."""
    arch = get_architecture(name)
    unknown = [k for k in knobs if k not in KNOB_DEFAULTS]
    if unknown:
        k = unknown[0]
        raise TypeError(f"create_model({arch.name!r}) got an unknown knob {k!r}{did_you_mean(k, list(KNOB_DEFAULTS))}; "
                        f"valid knobs: {sorted(KNOB_DEFAULTS)}")
    v = {**KNOB_DEFAULTS, **knobs}
    if not arch.residual:
        given = [k for k in RESIDUAL_KNOBS if v[k] is not None]
        if given:
            raise ValueError(f"{_where(arch, given[0])}={v[given[0]]!r}: {arch.name} has no residual blocks; the "
                             f"residual knobs {list(RESIDUAL_KNOBS)} apply to the inception_resnet_* models only")
    num_classes = _positive_int(arch, "num_classes", num_classes)
    use_residual = arch.residual if v["use_residual"] is None else _bool(arch, "use_residual", v["use_residual"])
    final_linear = (arch.final_block_linear if v["final_block_linear"] is None
                    else _bool(arch, "final_block_linear", v["final_block_linear"]))
    aux_head = _bool(arch, "aux_head", v["aux_head"])
    if aux_head and not arch.has_aux_head:
        raise ValueError(f"{_where(arch, 'aux_head')}=True: only inception_v4 and inception_resnet_v2 define an "
                         "auxiliary head (docs/architecture.md §2.8, §4.2.8)")
    image_size = _positive_int(arch, "image_size", v["image_size"])
    minimum = min_image_size(aux_head)
    if image_size < minimum:
        raise ValueError(f"{_where(arch, 'image_size')}={image_size} is below the minimum input size {minimum}"
                         f"{' with the aux head' if aux_head else ''} (docs/architecture.md §1.3)")
    scan_blocks = _bool(arch, "scan_blocks", v["scan_blocks"])
    remat_blocks = _bool(arch, "remat_blocks", v["remat_blocks"])
    if remat_blocks and not scan_blocks:
        raise ValueError(f"{_where(arch, 'remat_blocks')}=True needs scan_blocks=True: unrolled, XLA schedules each "
                         "block's recomputation back into the forward pass and no memory is saved (measured)")
    group = v["bn_group_size"]
    multiplier = _finite_number(arch, "width_multiplier", v["width_multiplier"], low_inclusive=False)
    return ModelOptions(
        name=arch.name,
        num_classes=num_classes,
        use_residual=use_residual,
        residual_scale=_residual_scale(arch, v["residual_scale"]),
        residual_scale_mode=_choice(arch, "residual_scale_mode", v["residual_scale_mode"] or "constant", SCALE_MODES),
        plain_scale=_finite_number(arch, "plain_scale", 1.0 if v["plain_scale"] is None else v["plain_scale"]),
        final_block_linear=final_linear,
        width_multiplier=multiplier,
        filters=_filters(arch, multiplier, v["filters"], aux_head),
        block_counts=_block_counts(arch, v["block_counts"], final_linear),
        bn_scale=_bool(arch, "bn_scale", v["bn_scale"]),
        bn_momentum=_finite_number(arch, "bn_momentum", v["bn_momentum"], high=1.0),
        bn_eps=_finite_number(arch, "bn_eps", v["bn_eps"], low_inclusive=False),
        bn_group_size=None if group is None else _positive_int(arch, "bn_group_size", group),
        dropout_rate=_finite_number(arch, "dropout_rate", v["dropout_rate"], high=0.99),
        aux_head=aux_head,
        image_size=image_size,
        scan_blocks=scan_blocks,
        remat_blocks=remat_blocks,
        dtype=_choice(arch, "dtype", _dtype_name(v["dtype"]), list(DTYPES)),
        param_dtype=_choice(arch, "param_dtype", _dtype_name(v["param_dtype"]), list(DTYPES)),
        conv_init=_choice(arch, "conv_init", v["conv_init"], list(INITIALIZERS)),
        up_init=_choice(arch, "up_init", v["up_init"], list(INITIALIZERS)),
        dense_init=_choice(arch, "dense_init", v["dense_init"], list(INITIALIZERS)),
        up_init_scale=_finite_number(arch, "up_init_scale", v["up_init_scale"]),
    )


# Knobs that are values of the network, not its structure: the shortcut gain (plain = 0), the residual scales and
# the plain scale are the blocks' state (network.block_values), so they never change the compiled program.
VALUE_KNOBS = {"use_residual": True, "residual_scale": (1.0, 1.0, 1.0), "plain_scale": 1.0}


def program_options(opts: ModelOptions) -> ModelOptions:
    """`opts` with every value knob at one fixed value: two networks whose program options are equal are one
    compiled program (the values are an argument of its init program: training/programs.py)."""
    return dataclasses.replace(opts, **VALUE_KNOBS)


def _dtype_name(value: Any) -> Any:
    """Accept 'bfloat16' as well as jnp.bfloat16 / np.dtype('bfloat16')."""
    if isinstance(value, str):
        return value
    try:
        return jnp.dtype(value).name
    except TypeError:
        return value
