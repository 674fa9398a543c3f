"""The network every family shares: stem -> A blocks -> Reduction-A -> B blocks -> Reduction-B -> C blocks
[-> final_conv] -> global average pool -> dropout -> Dense, built from an `Architecture` and `ModelOptions`; and
its constructors (`create_model` from a model id and knobs, `build_model` from resolved options).

`forward` returns, on request and at no cost otherwise, what the dying analysis needs (docs/dying.md): the pre-pool
activation and per-block zero fractions and residual / shortcut RMS; and the stage outputs the importers compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from inception_jax.models.architecture import MIN_IMAGE_SIZE, Architecture, aux_kernel_size, min_image_size
from inception_jax.models.blocks import AuxHead, ConvBN, Head, InceptionBlock, Mixed, ResidualBlock, Stem, sub_filters
from inception_jax.models.layers import INITIALIZERS, LayerContext, dropout, scaled_initializer
from inception_jax.models.options import DTYPES, ModelOptions, model_options
from inception_jax.models.registry import get_architecture
from inception_jax.models.stacking import scan_blocks, stack_modules

STAGES = ("a", "b", "c")


@flax.struct.dataclass
class ModelOutput:
    """Everything `forward` can return. Fields not requested are None.

    blocks: per stage ('a', 'b', 'c') a dict of arrays with one entry per block: `zero_frac` (after the block's
      activation) and, for residual/plain IR blocks, `branch_rms` (RMS of the scaled branch) and `shortcut_rms`
      (RMS of the block input).
    stages: the stage outputs of the stage-summary tables (`stem`, `blocks_a`, `reduction_a`, `blocks_b`,
      `reduction_b`, `blocks_c`, [`final_conv`], `pooled`).
    """

    logits: jax.Array
    aux_logits: jax.Array | None = None
    prepool: jax.Array | None = None
    blocks: dict[str, dict[str, jax.Array]] | None = None
    stages: dict[str, jax.Array] | None = None


def block_values(opts: ModelOptions) -> dict[str, tuple[float, float]]:
    """(shortcut gain, scale) of the residual-family blocks, y = act(gain * x + scale * UP(branches)), per stage
    ('a', 'b', 'c') and for the released IR-v2's linear last block ('linear'): gain 1 and the stage's residual
    scale; the plain network (use_residual=False, §1.10) gain 0 and `plain_scale`. The linear last block keeps
    scale 1.0 in every scale mode (§1.6).

    Values, not structure: a run's programs build the network of `program_options` and take these as an argument
    of the init program (training/programs.py), so every variant of one shape is one compiled program."""
    if not opts.use_residual:
        return {key: (0.0, opts.plain_scale) for key in (*STAGES, "linear")}
    return {**{stage: (1.0, scale) for stage, scale in zip(STAGES, opts.residual_scale, strict=True)},
            "linear": (1.0, 1.0)}


def layer_context(opts: ModelOptions) -> LayerContext:
    return LayerContext(
        dtype=DTYPES[opts.dtype], param_dtype=DTYPES[opts.param_dtype], bn_momentum=opts.bn_momentum,
        bn_eps=opts.bn_eps, bn_scale=opts.bn_scale, bn_group_size=opts.bn_group_size,
        conv_init=INITIALIZERS[opts.conv_init], up_init=scaled_initializer(opts.up_init, opts.up_init_scale),
        dense_init=INITIALIZERS[opts.dense_init])


class InceptionNet(nnx.Module):
    """Inception-v4 / Inception-ResNet-v1 / -v2 as selected by `arch`; see docs/architecture.md §0.4 for the tree."""

    def __init__(self, arch: Architecture, opts: ModelOptions, *, rngs: nnx.Rngs,
                 values: Mapping[str, tuple[Any, Any]] | None = None):
        """`values`: the blocks' shortcut gains and scales (block_values' form, arrays allowed, traced ones too);
        None takes `opts`' own."""
        values = block_values(opts) if values is None else values
        self.options = opts
        self.residual_family = arch.residual
        filters = opts.filter_table
        ctx = layer_context(opts)
        self.stem = Stem(arch.stem, sub_filters(filters, "stem"), ctx=ctx, rngs=rngs)
        c = self.stem.out_channels
        c = self._build_stage("a", arch.block_a, c, filters, values, ctx, rngs)
        self.reduction_a = Mixed(c, arch.reduction_a, sub_filters(filters, "reduction_a"), ctx=ctx, rngs=rngs)
        c = self.reduction_a.mixed_channels
        c = self._build_stage("b", arch.block_b, c, filters, values, ctx, rngs)
        self.aux = (AuxHead(c, filters["aux.conv1"], filters["aux.conv2"], aux_kernel_size(opts.image_size),
                            opts.num_classes, ctx=ctx, rngs=rngs) if opts.aux_head else None)
        self.reduction_b = Mixed(c, arch.reduction_b, sub_filters(filters, "reduction_b"), ctx=ctx, rngs=rngs)
        c = self.reduction_b.mixed_channels
        c = self._build_stage("c", arch.block_c, c, filters, values, ctx, rngs)
        self.final_conv = (ConvBN(c, filters["final_conv"], (1, 1), ctx=ctx, rngs=rngs)
                           if arch.final_conv else None)
        self.num_features = filters["final_conv"] if arch.final_conv else c
        self.head = Head(self.num_features, opts.num_classes, ctx=ctx, rngs=rngs)

    # ----------------------------------------------------------------------------------------------- building
    def _linear_last(self, stage: str) -> bool:
        return stage == "c" and self.residual_family and self.options.final_block_linear

    def stacked_counts(self) -> dict[str, int]:
        """How many leading blocks of each stage the scanned layout stacks into `blocks_<stage>`."""
        counts = dict(zip(STAGES, self.options.block_counts, strict=True))
        return {f"blocks_{s}": counts[s] - int(self._linear_last(s)) for s in STAGES}

    def _make_block(self, stage: str, branches, c: int, filters, values, ctx, rngs, *, linear: bool = False):
        f = sub_filters(filters, f"block_{stage}")
        if not self.residual_family:
            return InceptionBlock(c, branches, f, ctx=ctx, rngs=rngs)
        shortcut, scale = values["linear" if linear else stage]
        return ResidualBlock(c, branches, f, shortcut=shortcut, scale=scale, activation=not linear, ctx=ctx,
                             rngs=rngs, scale_mode="constant" if linear else self.options.residual_scale_mode)

    def residual_blocks(self) -> list[tuple[str, ResidualBlock, bool]]:
        """(stage, block, linear) for every residual block module (a stacked module counts once)."""
        found = []
        for stage in STAGES if self.residual_family else ():
            names = [f"blocks_{stage}", *(f"blocks_{stage}_{i}" for i in range(self.options.block_counts[
                STAGES.index(stage)]))]
            for name in names:
                block = getattr(self, name, None)
                if isinstance(block, ResidualBlock):
                    found.append((stage, block, not block.activation))
        return found

    def stage_widths(self) -> dict[str, int]:
        """The residual-stream (block input) width of each stage: what the stem, Reduction-A and Reduction-B put
        out."""
        return {"a": int(self.stem.out_channels), "b": int(self.reduction_a.mixed_channels),
                "c": int(self.reduction_b.mixed_channels)}

    def _build_stage(self, stage: str, branches, c: int, filters, values, ctx, rngs) -> int:
        n_identical = self.stacked_counts()[f"blocks_{stage}"]
        blocks = [self._make_block(stage, branches, c, filters, values, ctx, rngs) for _ in range(n_identical)]
        if self.options.scan_blocks and blocks:
            setattr(self, f"blocks_{stage}", stack_modules(blocks))
        else:
            for i, block in enumerate(blocks):
                setattr(self, f"blocks_{stage}_{i}", block)
        if self._linear_last(stage):
            setattr(self, f"blocks_{stage}_{n_identical}",
                    self._make_block(stage, branches, c, filters, values, ctx, rngs, linear=True))
        if blocks and not self.residual_family:
            return blocks[0].mixed_channels
        return c

    # ----------------------------------------------------------------------------------------------- running
    def _run_stage(self, stage: str, x: jax.Array, *, train: bool, diagnostics: bool):
        n_identical = self.stacked_counts()[f"blocks_{stage}"]
        per_block: list[dict[str, jax.Array]] = []
        if self.options.scan_blocks and n_identical:
            x, stats = scan_blocks(getattr(self, f"blocks_{stage}"),
                                   x, lambda block, h: block(h, train=train, diagnostics=diagnostics),
                                   remat=self.options.remat_blocks and train)
            per_block.append(stats)
        else:
            for i in range(n_identical):
                x, stats = getattr(self, f"blocks_{stage}_{i}")(x, train=train, diagnostics=diagnostics)
                per_block.append(jax.tree.map(lambda v: v[None], stats))
        if self._linear_last(stage):
            x, stats = getattr(self, f"blocks_{stage}_{n_identical}")(x, train=train, diagnostics=diagnostics)
            per_block.append(jax.tree.map(lambda v: v[None], stats))
        if not diagnostics or not per_block:
            return x, None
        return x, jax.tree.map(lambda *v: jnp.concatenate(v), *per_block)

    def check_input(self, x: Any, *, train: bool = False) -> None:
        """Refuse an input the network cannot take, before anything is traced further."""
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(f"{self.options.name}: expected images shaped (batch, height, width, 3), got {shape}")
        if shape[-1] != 3:
            raise ValueError(f"{self.options.name}: input has {shape[-1]} channels (shape {tuple(shape)}); the "
                             "networks take RGB images with 3 channels, NHWC")
        minimum = min_image_size(train and self.aux is not None)  # the aux head runs in training only
        if min(shape[1], shape[2]) < minimum:
            raise ValueError(f"{self.options.name}: input {shape[1]}x{shape[2]} is below the minimum size "
                             f"{minimum}x{minimum} (docs/architecture.md §1.3"
                             f"{'; the aux head needs ' + str(minimum) if minimum > MIN_IMAGE_SIZE else ''})")
        if train and self.aux is not None and (aux_kernel_size(shape[1]), aux_kernel_size(shape[2])) != (
                self.aux.kernel,) * 2:
            raise ValueError(f"{self.options.name}: the aux head was built for image_size="
                             f"{self.options.image_size} but got {shape[1]}x{shape[2]} inputs; create the "
                             "model with the image_size it trains on")

    def forward(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None,
                diagnostics: bool = False, stages: bool = False) -> ModelOutput:
        """Run the network. `train` selects batch statistics (and updates the running ones) and dropout."""
        self.check_input(x, train=train)
        dtype = DTYPES[self.options.dtype]
        x = jnp.asarray(x, dtype)
        out: dict[str, jax.Array] = {}
        blocks: dict[str, Any] = {}
        x = self.stem(x, train=train)
        out["stem"] = x
        x, blocks["a"] = self._run_stage("a", x, train=train, diagnostics=diagnostics)
        out["blocks_a"] = x
        x = self.reduction_a(x, train=train)
        out["reduction_a"] = x
        x, blocks["b"] = self._run_stage("b", x, train=train, diagnostics=diagnostics)
        out["blocks_b"] = x
        aux_logits = self.aux(x, train=train).astype(jnp.float32) if (train and self.aux is not None) else None
        x = self.reduction_b(x, train=train)
        out["reduction_b"] = x
        x, blocks["c"] = self._run_stage("c", x, train=train, diagnostics=diagnostics)
        out["blocks_c"] = x
        if self.final_conv is not None:
            x = self.final_conv(x, train=train)
            out["final_conv"] = x
        prepool = x
        features = jnp.mean(x, axis=(1, 2))
        out["pooled"] = features
        features = dropout(features, self.options.dropout_rate, dropout_key) if train else features
        logits = self.head(features).astype(jnp.float32)
        return ModelOutput(
            logits=logits, aux_logits=aux_logits,
            prepool=prepool if diagnostics else None,
            blocks={k: v for k, v in blocks.items() if v is not None} if diagnostics else None,
            stages=out if stages else None)

    def __call__(self, x: jax.Array, *, train: bool = False, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits (float32). For training extras (aux logits, diagnostics) use `forward`."""
        return self.forward(x, train=train, dropout_key=dropout_key).logits


def create_model(name: str, *, num_classes: int = 1000, rngs: nnx.Rngs | None = None, **knobs: Any) -> InceptionNet:
    """Build model `name` (one of registry.MODEL_NAMES) with the ablation knobs of docs/architecture.md §1.10.

    Knobs (all optional): use_residual, residual_scale (float, (a, b, c) or {'a':, 'b':, 'c':}),
    residual_scale_mode ('constant' | 'learnable' | 'learnable_channel'), plain_scale, final_block_linear,
    width_multiplier, filters ({'block_b.b1_1': 160, ...} absolute overrides), block_counts ((a, b, c)),
    bn_scale, bn_momentum, bn_eps, bn_group_size, dropout_rate, aux_head, image_size (for the aux head),
    scan_blocks, remat_blocks, dtype, param_dtype, conv_init, up_init, dense_init, up_init_scale.
    """
    return build_model(model_options(name, num_classes=num_classes, **knobs), rngs=rngs)


def build_model(opts: ModelOptions, *, rngs: nnx.Rngs | None = None,
                values: Mapping[str, tuple[Any, Any]] | None = None) -> InceptionNet:
    """The network of `opts`; `values` (block_values' form) replaces its blocks' gains and scales."""
    return InceptionNet(get_architecture(opts.name), opts, rngs=rngs if rngs is not None else nnx.Rngs(0),
                        values=values)


def stage_widths(opts: ModelOptions) -> dict[str, int]:
    """Each stage's residual-stream width (InceptionNet.stage_widths), from an abstract build: nothing is
    allocated, about a second for IR-v2."""
    return nnx.eval_shape(lambda: build_model(opts)).stage_widths()
