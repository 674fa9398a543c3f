"""timm `inception_v4` / `inception_resnet_v2` state dicts -> our variables (docs/architecture.md §8.1-§8.3).

Every timm tensor is used exactly once (BatchNorm's `num_batches_tracked` is dropped, and counted); anything else
left over, missing or misshapen is an `ImportMismatchError` naming the tensors. torch is needed only to read
`.pth` files; `.safetensors` files are read with `safetensors.numpy`, and a state dict of numpy arrays works too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from inception_jax.models import ModelOptions, model_options
from inception_jax.models.blocks import Conv
from inception_jax.pretrained.importers.common import (
    ImportedModel,
    ImportMismatchError,
    SourceTensors,
    SpecModule,
    VariableWriter,
    check_gamma,
    finish,
    head_classes,
    spec_modules,
)

TIMM_MODELS = ("inception_v4", "inception_resnet_v2")
FEATURES = 1536  # pooled width of both networks
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

# Units whose timm name does not follow the branch rule below (§8.3): the stem's one-conv mixed modules are
# `.conv`, and the v4 C block names its units flat (`branch1_1a`), because two heads share one input.
_SPECIAL_UNITS = {
    ("inception_v4", "stem/mixed3a"): {"b1_0": "conv"},
    ("inception_v4", "stem/mixed5a"): {"b0_0": "conv"},
    ("inception_v4", "block_c"): {"b0_0": "branch0", "b1_0": "branch1_0", "b1_1a": "branch1_1a",
                                  "b1_1b": "branch1_1b", "b2_0": "branch2_0", "b2_1": "branch2_1",
                                  "b2_2": "branch2_2", "b2_3a": "branch2_3a", "b2_3b": "branch2_3b",
                                  "b3_1": "branch3.1"},
}
# inception_resnet_v2 (§8.2): top-level names of the stem units and the single modules.
_IRV2_NAMES = {"stem/conv1a": "conv2d_1a", "stem/conv2a": "conv2d_2a", "stem/conv2b": "conv2d_2b",
               "stem/conv3b": "conv2d_3b", "stem/conv4a": "conv2d_4a", "stem/mixed5b": "mixed_5b",
               "reduction_a": "mixed_6a", "reduction_b": "mixed_7a", "final_conv": "conv2d_7b", "head/fc": "classif"}
_IRV2_REPEATS = {"a": "repeat", "b": "repeat_1", "c": "repeat_2"}


def _branch_unit_names(branches: tuple) -> dict[str, str]:
    """timm builds a one-layer branch as the bare unit `branch{j}` and a longer one as an nn.Sequential indexed by
    layer position, pools included (`branch3.1` = the conv after the pool)."""
    out = {}
    for j, branch in enumerate(branches):
        for k, layer in enumerate(branch):
            if isinstance(layer, Conv):
                out[layer.name] = f"branch{j}" if len(branch) == 1 else f"branch{j}.{k}"
    return out


def _prefix(name: str, mod: SpecModule, position: int, opts: ModelOptions) -> str:
    if name == "inception_v4":  # nn.Sequential `features` holds every module in creation order
        return "last_linear" if mod.kind == "dense" else f"features.{position}"
    if mod.stage == "c" and mod.index == opts.block_counts[2] - 1:
        return "block8"  # the linear last C block lives outside repeat_2
    if mod.stage:
        return f"{_IRV2_REPEATS[mod.stage]}.{mod.index}"
    return _IRV2_NAMES[mod.path]


def timm_module_map(opts: ModelOptions) -> list[tuple[str, str]]:
    """(spec path, timm module name) for every weight-holding module (stem units, mixed modules, blocks, head)."""
    return [(mod.path, _prefix(opts.name, mod, position, opts)) for position, mod in enumerate(spec_modules(opts))]


def timm_unit_map(opts: ModelOptions) -> list[tuple[str, str, str]]:
    """(kind, timm prefix, spec path) for every weight-holding unit; kind is 'convbn', 'up' or 'dense'."""
    rows = []
    for mod, (_, prefix) in zip(spec_modules(opts), timm_module_map(opts), strict=True):
        if mod.kind == "unit":
            rows.append(("convbn", prefix, mod.path))
        elif mod.kind == "dense":
            rows.append(("dense", prefix, mod.path))
        else:
            key = (opts.name, f"block_{mod.stage}" if mod.stage else mod.path)
            names = _SPECIAL_UNITS.get(key) or _branch_unit_names(mod.branches)
            rows += [("convbn", f"{prefix}.{names[u]}", f"{mod.path}/{u}") for u in mod.units]
            if mod.kind == "residual":
                rows.append(("up", f"{prefix}.conv2d", f"{mod.path}/up"))
    return rows


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; .float() because numpy has no bfloat16
        return value.detach().cpu().float().numpy()
    return np.asarray(value)


def load_timm_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A timm state dict from `.safetensors` (no torch needed) or a torch file (`.pth`, `.pt`, `.bin`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"timm weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file
        except ImportError as e:  # a base dependency since 0.1.0; an environment installed without it
            raise ImportError(f"reading {path} needs the safetensors package: `pip install safetensors`") from e
        try:
            return dict(load_file(path))
        except SafetensorError as e:  # truncated, or not a safetensors file at all (an HTML error page, a .pth)
            raise ValueError(f"timm weights file {path!r} is not a readable .safetensors file ({e}); download it "
                             "again, or check that it is the model's .safetensors") from None
    if not path.endswith(STATE_DICT_SUFFIXES):
        raise ValueError(f"{path!r}: unknown timm weights format; expected one of {list(STATE_DICT_SUFFIXES)}")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch: `pip install -e '.[parity]'`, or save the state dict as "
                          ".safetensors") from e
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints wrap the state dict
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    if loaded and all(k.startswith("module.") for k in loaded):  # saved from DataParallel / DDP
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return dict(loaded)


def guess_timm_model(names: list[str]) -> str | None:
    """Which timm network a state dict's names belong to (for error hints)."""
    if any(n.startswith("features.") for n in names) and "last_linear.weight" in names:
        return "inception_v4"
    if any(n.startswith("conv2d_1a.") for n in names) and any(n.startswith("repeat_2.") for n in names):
        return "inception_resnet_v2"
    return None


def import_timm(source: Mapping[str, Any] | str | os.PathLike | Any, model: str, *, bn_scale: bool = False,
                scan_blocks: bool = True, drop_background: bool = False) -> ImportedModel:
    """Convert a timm state dict (a mapping, a file path, or a live timm module) into our `model`.

    bn_scale=False (slim convention) requires every BatchNorm gamma to be 1 (true for the TF-ported weights);
    bn_scale=True keeps gamma. A 1001-class slim-style head keeps its background row unless drop_background, which
    removes row 0 and gives the usual 1000 ImageNet classes.
    """
    if model not in TIMM_MODELS:
        raise ValueError(f"import_timm: model={model!r} has no timm weights; choose one of {list(TIMM_MODELS)}")
    label = "timm state dict"
    if isinstance(source, str | os.PathLike):
        label = f"timm {os.fspath(source)}"
        source = load_timm_state_dict(source)
    elif hasattr(source, "state_dict") and not isinstance(source, Mapping):
        source = source.state_dict()
    tensors = SourceTensors(source, _to_numpy)
    tensors.drop([n for n in tensors.names() if n.endswith(".num_batches_tracked")])
    fc_name = "last_linear.weight" if model == "inception_v4" else "classif.weight"
    if fc_name not in tensors:
        guess = guess_timm_model(tensors.names())
        hint = f" (it looks like timm {guess})" if guess and guess != model else ""
        raise ImportMismatchError(f"{label}: no classifier tensor {fc_name!r}, so this is not a timm {model} state dict"
                                  f"{hint}; its first names are {tensors.names()[:5]}")
    classes = head_classes(np.shape(source[fc_name]), f"{label} {fc_name}", features=FEATURES, classes_axis=0)
    notes = []
    if drop_background:
        if classes != 1001:
            raise ValueError(f"drop_background=True needs a 1001-class head (background + 1000); {fc_name} has "
                             f"{classes} classes")
        classes = 1000
        notes.append("dropped row 0 (background) of the 1001-class head")
    elif classes == 1001:
        notes.append("1001-class head kept: class 0 is slim's background (drop_background=True removes it)")
    opts = model_options(model, num_classes=classes, bn_scale=bn_scale, scan_blocks=scan_blocks)
    writer = VariableWriter(opts)
    for kind, prefix, path in timm_unit_map(opts):
        if kind == "convbn":
            w = tensors.take(f"{prefix}.conv.weight", path)
            if w is not None:
                writer.put(f"params/{path}/conv/kernel", w.transpose(2, 3, 1, 0), f"{prefix}.conv.weight", w.shape)
            check_gamma(writer, tensors.take(f"{prefix}.bn.weight", path), f"{prefix}.bn.weight",
                        f"params/{path}/bn/scale", bn_scale)
            writer.put(f"params/{path}/bn/bias", tensors.take(f"{prefix}.bn.bias", path), f"{prefix}.bn.bias")
            for ours, theirs in (("mean", "running_mean"), ("var", "running_var")):
                writer.put(f"batch_stats/{path}/bn/{ours}", tensors.take(f"{prefix}.bn.{theirs}", path),
                           f"{prefix}.bn.{theirs}")
        elif kind == "up":
            w = tensors.take(f"{prefix}.weight", path)
            if w is not None:
                writer.put(f"params/{path}/kernel", w.transpose(2, 3, 1, 0), f"{prefix}.weight", w.shape)
            writer.put(f"params/{path}/bias", tensors.take(f"{prefix}.bias", path), f"{prefix}.bias")
        else:
            w, b = tensors.take(f"{prefix}.weight", path), tensors.take(f"{prefix}.bias", path)
            if drop_background:
                w, b = (None if w is None else w[1:]), (None if b is None else b[1:])
            writer.put(f"params/{path}/kernel", None if w is None else w.T, f"{prefix}.weight",
                       None if w is None else w.shape)
            writer.put(f"params/{path}/bias", b, f"{prefix}.bias")
    guess = guess_timm_model(tensors.names())
    hint = f"the names look like timm {guess}, not {model}" if guess and guess != model else ""
    return finish(writer, tensors, source=label, notes=notes, hint=hint)
