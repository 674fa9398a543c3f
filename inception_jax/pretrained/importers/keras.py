"""Keras `InceptionResNetV2` (keras.applications) -> our `inception_resnet_v2` (docs/architecture.md §8.4).

Keras names the UP convs (`block35_3_conv`), `conv_7b(_bn)` and `predictions`, but every other conv / BatchNorm is
auto-named (`conv2d_17`, `batch_normalization_17`) with numbers that depend on the session. The numbers still
follow creation order, and Keras creates the units in the order of the spec's tables, so the n-th auto-named
conv (and BatchNorm) is the n-th ConvBN unit of `spec_modules`. Kernels are already HWIO and dense kernels
(features, classes): no transposes. Every Keras weight is used exactly once, or the import fails naming them.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any

import numpy as np

from inception_jax.models import model_options
from inception_jax.pretrained.importers.common import (
    ImportedModel,
    ImportMismatchError,
    SourceTensors,
    VariableWriter,
    check_gamma,
    finish,
    head_classes,
    spec_modules,
)

KERAS_MODEL = "inception_resnet_v2"
FEATURES = 1536
BN_EPSILON = 1e-3
FILE_SUFFIXES = (".keras", ".h5", ".hdf5")
_AUTO_CONV = re.compile(r"conv2d(?:_(\d+))?")
_AUTO_BN = re.compile(r"batch_normalization(?:_(\d+))?")
_UP_LAYER = {"a": "block35", "b": "block17", "c": "block8"}


def _creation_order(layers: list, pattern: re.Pattern) -> list:
    """Auto-named layers sorted by the counter Keras appended at creation (`conv2d` is 0, `conv2d_7` is 7)."""
    matched = [(int(m.group(1) or 0), layer) for layer in layers if (m := pattern.fullmatch(layer.name))]
    return [layer for _, layer in sorted(matched, key=lambda t: t[0])]


def _find_units(node: Any) -> int | None:
    """The `units` of the Dense layer named `predictions` in a Keras model config (any nesting)."""
    if isinstance(node, dict):
        config = node.get("config")
        if node.get("class_name") == "Dense" and isinstance(config, dict) and config.get("name") == "predictions":
            return int(config["units"])
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_units(child)
        if found is not None:
            return found
    return None


def keras_file_classes(path: str | os.PathLike) -> int:
    """The class count of the `predictions` layer stored in a `.keras` / `.h5` file, read without Keras."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Keras weights file {path!r} does not exist")
    if not path.endswith(FILE_SUFFIXES):
        raise ValueError(f"{path!r}: unknown Keras file type; expected one of {list(FILE_SUFFIXES)}")
    found = None
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as z:
                found = _find_units(json.loads(z.read("config.json")))
        except (zipfile.BadZipFile, KeyError) as e:
            raise ValueError(f"{path} is not a Keras 3 .keras archive (zip with config.json): {e}") from e
    else:
        import h5py

        shapes: list[tuple[int, ...]] = []

        def visit(name: str, obj: Any) -> None:
            # Legacy files: predictions/predictions/kernel(:0); Keras 3 .weights.h5: layers/dense/vars/0.
            if isinstance(obj, h5py.Dataset) and obj.ndim == 2 and (
                    ("predictions" in name and "kernel" in name.rsplit("/", 1)[-1]) or name.endswith("dense/vars/0")):
                shapes.append(obj.shape)

        try:
            with h5py.File(path, "r") as f:
                f.visititems(visit)
        except OSError as e:
            raise ValueError(f"{path} is not an HDF5 file: {e}") from e
        found = shapes[0][1] if len(shapes) == 1 else None
    if found is None:
        raise ImportMismatchError(f"{path}: no classifier layer 'predictions' found; only full InceptionResNetV2 "
                                  "models (include_top=True) convert, since our networks always have a head")
    return found


def load_keras_model(path: str | os.PathLike) -> Any:
    """A live InceptionResNetV2 holding the weights of a `.keras`, legacy `.h5` or `.weights.h5` file."""
    classes = keras_file_classes(path)
    import keras

    model = keras.applications.InceptionResNetV2(weights=None, classes=classes, classifier_activation=None)
    try:
        model.load_weights(os.fspath(path))
    except Exception as e:  # Keras raises many types here; they all mean "not this architecture's weights"
        raise ImportMismatchError(f"{os.fspath(path)}: Keras could not load it into InceptionResNetV2(classes="
                                  f"{classes}): {type(e).__name__}: {e}") from e
    return model


def import_keras(source: Any, *, bn_scale: bool = False, scan_blocks: bool = True) -> ImportedModel:
    """Convert a Keras InceptionResNetV2 (a live keras.Model, or a `.keras` / `.h5` path) into our
    `inception_resnet_v2`. Keras has no BatchNorm gamma: bn_scale=True models get gamma = 1."""
    label = f"Keras model {getattr(source, 'name', '?')!r}"
    if isinstance(source, str | os.PathLike):
        label = f"Keras {os.fspath(source)}"
        source = load_keras_model(source)
    if not hasattr(source, "layers"):
        raise TypeError(f"import_keras: expected a keras.Model or a path to {list(FILE_SUFFIXES)}, got "
                        f"{type(source).__name__}")
    layers = list(source.layers)
    tensors = SourceTensors({f"{layer.name}/{w.name}": w for layer in layers for w in layer.weights},
                            lambda w: np.asarray(w.numpy()))
    if "predictions/kernel" not in tensors:
        raise ImportMismatchError(f"{label} has no 'predictions' Dense layer (include_top=False?); only full "
                                  "InceptionResNetV2 models convert")
    classes = head_classes(tuple(source.get_layer("predictions").kernel.shape), f"{label} predictions/kernel",
                           features=FEATURES, classes_axis=1)
    opts = model_options(KERAS_MODEL, num_classes=classes, bn_scale=bn_scale, scan_blocks=scan_blocks)
    writer = VariableWriter(opts)
    notes = ["Keras BatchNorm has no gamma: scale set to 1"] if bn_scale else []
    by_name = {layer.name: layer for layer in layers}

    def unit(path: str, conv_name: str, bn_name: str) -> None:
        bn = by_name.get(bn_name)
        if bn is not None and abs(float(getattr(bn, "epsilon", BN_EPSILON)) - BN_EPSILON) > 1e-12:
            writer.problem(f"{bn_name}: epsilon {bn.epsilon} differs from our {BN_EPSILON}; outputs would differ")
        writer.put(f"params/{path}/conv/kernel", tensors.take(f"{conv_name}/kernel", path), f"{conv_name}/kernel")
        gamma_name = f"{bn_name}/gamma"
        if gamma_name in tensors:
            check_gamma(writer, tensors.take(gamma_name, path), gamma_name, f"params/{path}/bn/scale", bn_scale)
        elif bn_scale:
            writer.put(f"params/{path}/bn/scale", np.ones(writer.expected[f"params/{path}/bn/bias"], np.float32),
                       f"{bn_name} (no gamma: ones)")
        writer.put(f"params/{path}/bn/bias", tensors.take(f"{bn_name}/beta", path), f"{bn_name}/beta")
        for ours, theirs in (("mean", "moving_mean"), ("var", "moving_variance")):
            writer.put(f"batch_stats/{path}/bn/{ours}", tensors.take(f"{bn_name}/{theirs}", path),
                       f"{bn_name}/{theirs}")

    convs, bns = _creation_order(layers, _AUTO_CONV), _creation_order(layers, _AUTO_BN)
    if len(convs) != len(bns):
        writer.problem(f"{label} has {len(convs)} auto-named Conv2D layers but {len(bns)} BatchNormalization "
                       "layers; they must pair up one to one")
    pairs = iter(zip([c.name for c in convs], [b.name for b in bns]))
    for mod in spec_modules(opts):
        if mod.kind == "dense":
            for part in ("kernel", "bias"):
                writer.put(f"params/{mod.path}/{part}", tensors.take(f"predictions/{part}", mod.path),
                           f"predictions/{part}")
            continue
        if mod.path == "final_conv":
            unit(mod.path, "conv_7b", "conv_7b_bn")
            continue
        for path in [mod.path] if mod.kind == "unit" else [f"{mod.path}/{u}" for u in mod.units]:
            pair = next(pairs, None)
            if pair is None:
                writer.problem(f"{path}: {label} has no auto-named conv / BatchNorm pair left for it (it has "
                               f"{len(convs)}); is it an InceptionResNetV2?")
                continue
            unit(path, *pair)
        if mod.kind == "residual":
            up = f"{_UP_LAYER[mod.stage]}_{mod.index + 1}_conv"  # Keras numbers blocks from 1
            for part in ("kernel", "bias"):
                writer.put(f"params/{mod.path}/up/{part}", tensors.take(f"{up}/{part}", mod.path), f"{up}/{part}")
    return finish(writer, tensors, source=label, notes=notes)
