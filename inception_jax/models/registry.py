"""Model ids -> architectures, and the one public constructor."""

from __future__ import annotations

from typing import Any

from flax import nnx

from inception_jax.models.architecture import Architecture
from inception_jax.models.inception_resnet_v1 import INCEPTION_RESNET_V1
from inception_jax.models.inception_resnet_v2 import INCEPTION_RESNET_V2, INCEPTION_RESNET_V2_PAPER
from inception_jax.models.inception_v4 import INCEPTION_V4
from inception_jax.models.network import InceptionNet
from inception_jax.models.options import ModelOptions, resolve_options
from inception_jax.validation import did_you_mean

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (INCEPTION_V4, INCEPTION_RESNET_V1, INCEPTION_RESNET_V2_PAPER, INCEPTION_RESNET_V2)
}
MODEL_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model id {name!r}{did_you_mean(name, MODEL_NAMES, n=2)}; valid ids: "
                         f"{list(MODEL_NAMES)}")
    return ARCHITECTURES[name]


def model_options(name: str, *, num_classes: int = 1000, **knobs: Any) -> ModelOptions:
    """Validate a model id and knobs without building anything (what configs call before a run starts)."""
    return resolve_options(get_architecture(name), num_classes, **knobs)


def create_model(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None, **knobs: Any) -> InceptionNet:
    """Build model `name` (one of MODEL_NAMES) with the ablation knobs of docs/architecture.md §1.10 and more.

    Knobs (all optional): use_residual, residual_scale (float, (a, b, c) or {'a':, 'b':, 'c':}),
    residual_scale_mode ('constant' | 'learnable' | 'learnable_channel'), plain_scale, final_block_linear,
    width_multiplier, filters ({'block_b.b1_1': 160, ...} absolute overrides), block_counts ((a, b, c)),
    bn_scale, bn_momentum, bn_eps, bn_group_size, dropout_rate, aux_head, image_size (for the aux head),
    scan_blocks, remat_blocks, dtype, param_dtype, conv_init, up_init, dense_init, up_init_scale.
    """
    opts = model_options(name, num_classes=num_classes, **knobs)
    return build_model(opts, rngs=rngs)


def build_model(opts: ModelOptions, *, rngs: nnx.Rngs | None = None, values: Any = None) -> InceptionNet:
    """The network of `opts`; `values` (network.block_values' form) replaces its blocks' gains and scales."""
    return InceptionNet(get_architecture(opts.name), opts, rngs=rngs if rngs is not None else nnx.Rngs(0),
                        values=values)


def stage_widths(opts: ModelOptions) -> dict[str, int]:
    """Each stage's residual-stream width (InceptionNet.stage_widths), from an abstract build: nothing is
    allocated, about a second for IR-v2."""
    return nnx.eval_shape(lambda: build_model(opts)).stage_widths()
