"""Output parity between a converted model and its source (docs/architecture.md §8.5): stage outputs of both sides on
the same images, the relative error per stage, and the preparation the acceptance test gives a randomly
initialised reference (randomised biases / gammas, realistic BatchNorm statistics).

Used by the parity tests and by `inception_jax.pretrained.convert --check_parity`. torch / keras are imported only
by the functions that run them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from inception_jax.models import InceptionNet
from inception_jax.models.ops import STOCK, Backend

TOLERANCE = 1e-4  # §8.5: max|a - b| <= 1e-4 * max(1, max|b|), float32

TIMM_STAGES = {
    "inception_v4": {"stem": "features.5", "blocks_a": "features.9", "reduction_a": "features.10",
                     "blocks_b": "features.17", "reduction_b": "features.18", "blocks_c": "features.21",
                     "pooled": "global_pool"},
    "inception_resnet_v2": {"stem": "mixed_5b", "blocks_a": "repeat", "reduction_a": "mixed_6a",
                            "blocks_b": "repeat_1", "reduction_b": "mixed_7a", "blocks_c": "block8",
                            "final_conv": "conv2d_7b", "pooled": "global_pool"},
}
KERAS_STAGES = {"stem": "mixed_5b", "blocks_a": "block35_10_ac", "reduction_a": "mixed_6a",
                "blocks_b": "block17_20_ac", "reduction_b": "mixed_7a", "final_conv": "conv_7b_ac"}


@dataclasses.dataclass(frozen=True)
class StageError:
    stage: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_abs_reference: float

    @property
    def relative(self) -> float:
        """The §8.5 measure: max|a - b| / max(1, max|b|)."""
        return self.max_abs_error / max(1.0, self.max_abs_reference)

    @property
    def ok(self) -> bool:
        return self.relative <= TOLERANCE


def compare_stages(ours: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> list[StageError]:
    """Per-stage errors, in the reference's stage order; a stage missing on one side or with another shape is an
    error naming it."""
    missing = [k for k in reference if k not in ours]
    if missing:
        raise KeyError(f"our model has no stage output {missing}; it has {list(ours)}")
    out = []
    for stage, ref in reference.items():
        a, b = np.asarray(ours[stage], np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"stage {stage!r}: our output is {a.shape}, the reference's {b.shape}")
        out.append(StageError(stage, a.shape, float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))))
    return out


def format_errors(errors: list[StageError], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"  {'stage':<12} {'shape':<20} {'max|ref|':>10} {'max abs err':>12} {'rel err':>10}")
    for e in errors:
        flag = "" if e.ok else f"  > {TOLERANCE:g}"
        lines.append(f"  {e.stage:<12} {'x'.join(map(str, e.shape)):<20} {e.max_abs_reference:10.4g} "
                     f"{e.max_abs_error:12.3g} {e.relative:10.3g}{flag}")
    return "\n".join(lines)


def forward_stages(model: InceptionNet, images: np.ndarray, compiler_options: dict[str, Any] | None = None,
                   kernels: Backend = STOCK) -> dict[str, np.ndarray]:
    """Our stage outputs and logits on NHWC images, eval mode, float32 matmuls at full precision; traced with the
    stock kernels and compiled with XLA's defaults unless `kernels` (cpu.backend.backend_for) and
    `compiler_options` (cpu.codegen.compiler_options) say otherwise."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, compiler_options=compiler_options)
    def run(state, x):
        with kernels.tracing():
            out = nnx.merge(graphdef, state).forward(x, train=False, stages=True)
        return {**out.stages, "logits": out.logits}

    with jax.default_matmul_precision("highest"):
        return {k: np.asarray(v) for k, v in run(state, jnp.asarray(images, jnp.float32)).items()}


# --------------------------------------------------------------------------------------------------- timm
def timm_forward_stages(model: Any, name: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """A timm model's stage outputs (NHWC) and logits on NHWC images, via forward hooks, in eval mode."""
    import torch

    modules = dict(model.named_modules())
    captured: dict[str, np.ndarray] = {}
    hooks = []
    for stage, module_name in TIMM_STAGES[name].items():
        def hook(_module, _inputs, output, stage=stage):
            value = output.detach().clone().numpy()  # cloned: timm's in-place ReLUs may reuse the buffer later
            captured[stage] = value.transpose(0, 2, 3, 1) if value.ndim == 4 else value
        hooks.append(modules[module_name].register_forward_hook(hook))
    try:
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
    finally:
        for h in hooks:
            h.remove()
    return {**captured, "logits": logits}


def timm_blockwise_errors(ours: InceptionNet, model: Any, name: str, images: np.ndarray) -> list[StageError]:
    """Each of our modules (stem units, mixed modules, every block, the head) run on the input timm's matching
    module received, compared with that module's output: every block checked on its own, so float32 rounding
    cannot compound through the depth. `ours` must be in the unrolled layout."""
    import torch

    from inception_jax.pretrained.importers.timm import timm_module_map

    if ours.options.scan_blocks:
        raise ValueError("timm_blockwise_errors needs the unrolled layout: convert_layout(m, scan_blocks=False)")
    pairs = timm_module_map(ours.options)
    modules = dict(model.named_modules())
    captured: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def nhwc(t: Any) -> np.ndarray:
        value = t.detach().clone().numpy()
        return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value

    hooks = [modules[prefix].register_forward_hook(
        lambda _m, inputs, output, path=path: captured.__setitem__(path, (nhwc(inputs[0]), nhwc(output))))
        for path, prefix in pairs]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    finally:
        for h in hooks:
            h.remove()
    errors = []
    with jax.default_matmul_precision("highest"):
        for path, _ in pairs:
            module: Any = ours
            for part in path.split("/"):
                module = getattr(module, part)
            x, expected = captured[path]
            out = module(jnp.asarray(x)) if isinstance(module, nnx.Linear) else module(jnp.asarray(x), train=False)
            out = np.asarray(out[0] if isinstance(out, tuple) else out, np.float64)
            errors.append(StageError(path, out.shape, float(np.max(np.abs(out - expected))),
                                     float(np.max(np.abs(expected)))))
    return errors


def timm_float64_stages(model: Any, name: str, images: np.ndarray) -> dict[str, np.ndarray]:
    """The reference's stages computed in float64 (a copy of the model): how far float32 itself is from exact."""
    import copy

    return timm_forward_stages(copy.deepcopy(model).double(), name, images.astype(np.float64))


def prepare_timm_for_parity(model: Any, calibration_images: np.ndarray, *, seed: int = 0,
                            randomize_gamma: bool = True, passes: int = 2) -> Any:
    """§8.5 step 1: beta ~ N(0, 0.1), gamma ~ U(0.5, 1.5) (left at 1 unless randomize_gamma), up / FC biases
    ~ N(0, 0.1), then running statistics = the cumulative average over `passes` train-mode forwards (split over
    the calibration images), so activations keep a realistic scale through ~150 layers. Returns the model, in eval."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            if randomize_gamma:
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        saved = [bn.momentum for bn in batchnorms]
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average
        model.train()
        x = torch.from_numpy(np.ascontiguousarray(calibration_images.transpose(0, 3, 1, 2)))
        for chunk in torch.chunk(x, passes):
            model(chunk)
        for bn, m in zip(batchnorms, saved):
            bn.momentum = m
    return model.eval()


# --------------------------------------------------------------------------------------------------- keras
def keras_flexible_model(model: Any) -> Any:
    """The same weights in an InceptionResNetV2 without a fixed input size (include_top=True fixes 299 x 299) and
    without the Dense head (keras_forward_stages applies it in numpy)."""
    import keras

    clone = keras.applications.InceptionResNetV2(weights=None, include_top=False, input_shape=(None, None, 3))
    source = [layer for layer in model.layers if layer.weights and layer.name != "predictions"]
    target = [layer for layer in clone.layers if layer.weights]
    if len(source) != len(target):
        raise ValueError(f"cannot mirror {model.name}: {len(source)} weighted layers vs {len(target)} in "
                         "InceptionResNetV2(include_top=False)")
    for a, b in zip(source, target):  # both built by the same function: the same topological order
        b.set_weights(a.get_weights())
    return clone


def keras_forward_stages(model: Any, images: np.ndarray, *, flexible: Any = None) -> dict[str, np.ndarray]:
    """A Keras InceptionResNetV2's stage outputs and logits on NHWC images (inference mode). Images of another size
    than the model's input run through `flexible` (default: a fresh `keras_flexible_model(model)`); pooled and
    logits come from numpy on Keras's final_conv output and the `predictions` weights (the Dense may end in a
    softmax)."""
    import keras

    fixed = tuple(model.input.shape[1:3])
    if fixed == tuple(images.shape[1:3]):
        body = model
    else:
        body = flexible if flexible is not None else keras_flexible_model(model)
    outputs = [body.get_layer(n).output for n in KERAS_STAGES.values()] + [body.get_layer("conv_7b").input]
    probe = keras.Model(body.input, outputs)
    values = [np.asarray(v) for v in probe(images, training=False)]
    stages = dict(zip(KERAS_STAGES, values[:-1]))
    stages["blocks_c"] = values[-1]
    stages = {k: stages[k] for k in ("stem", "blocks_a", "reduction_a", "blocks_b", "reduction_b", "blocks_c",
                                     "final_conv")}
    stages["pooled"] = stages["final_conv"].astype(np.float64).mean(axis=(1, 2)).astype(np.float32)
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("predictions").get_weights())
    stages["logits"] = (stages["pooled"].astype(np.float64) @ kernel + bias).astype(np.float32)
    return stages


def prepare_keras_for_parity(model: Any, calibration_images: np.ndarray, *, seed: int = 0) -> Any:
    """§8.5 for Keras (no gamma): beta ~ N(0, 0.1), UP / Dense biases ~ N(0, 0.1), then moving statistics set
    to one training-mode pass's batch statistics (momentum 0 for that pass)."""
    import keras

    rng = np.random.default_rng(seed)
    batchnorms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in model.layers:
        for w in layer.weights:
            if w.name in ("beta", "bias"):
                w.assign((rng.standard_normal(tuple(w.shape)) * 0.1).astype(np.float32))
    saved = [bn.momentum for bn in batchnorms]
    for bn in batchnorms:
        bn.momentum = 0.0
    model(calibration_images, training=True)
    for bn, m in zip(batchnorms, saved):
        bn.momentum = m
    return model
