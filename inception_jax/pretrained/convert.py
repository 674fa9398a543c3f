r"""Convert pretrained timm or Keras weights into an exported model directory (model_io format).

    python -m inception_jax.pretrained.convert --source=timm --input=inception_v4.safetensors --model=inception_v4 \
        --output=/tmp/inception_v4 [--scan_blocks=false] [--bn_scale] [--drop_background] [--check_parity]
    python -m inception_jax.pretrained.convert --source=keras --input=inception_resnet_v2.h5 \
        --model=inception_resnet_v2 --output=/tmp/irv2

Prints the tensors read / used / dropped and the parameter count next to docs/architecture.md §7.1. Any name or shape
mismatch stops the conversion with the offending names. --check_parity runs the source network and the converted
one on two random 299 x 299 images and prints the error of every stage (needs torch + timm for timm sources).
The output loads with `model_io.load_model(dir)` (or a training config's init_from). How long it takes:
docs/performance.md §6.3.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from inception_jax.pretrained import model_io
from inception_jax.pretrained.importers import (
    ImportedModel,
    ImportMismatchError,
    import_keras,
    import_timm,
    load_keras_model,
    load_timm_state_dict,
    parity,
)

SOURCES = ("timm", "keras")
# docs/architecture.md §7.1, 1000 classes, no aux head: (model, bn_scale) -> parameters.
REFERENCE_PARAMS = {("inception_v4", True): 42_679_816, ("inception_v4", False): 42_648_232,
                    ("inception_resnet_v2", True): 55_843_464, ("inception_resnet_v2", False): 55_813_192}
FEATURES = 1536

_SOURCE = flags.DEFINE_enum("source", None, SOURCES, "Where the weights come from.")
_INPUT = flags.DEFINE_string("input", None, "timm: .safetensors / .pth state dict; keras: .h5 / .keras file.")
_MODEL = flags.DEFINE_enum("model", None, ["inception_v4", "inception_resnet_v2"], "Our model id.")
_OUTPUT = flags.DEFINE_string("output", None, "Exported model directory to write.")
_SCAN_BLOCKS = flags.DEFINE_boolean("scan_blocks", True, "Scanned (stacked blocks) layout; false = unrolled.")
_BN_SCALE = flags.DEFINE_boolean("bn_scale", False, "Keep BatchNorm gamma (timm convention). Without it every "
                                 "gamma must be 1 (true for TF-ported weights), else the conversion is refused.")
_DROP_BACKGROUND = flags.DEFINE_boolean("drop_background", False, "timm only: drop row 0 of a 1001-class "
                                        "slim-style head, leaving the 1000 ImageNet classes.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an exported model already at --output.")
_CHECK_PARITY = flags.DEFINE_boolean("check_parity", False, "Compare every stage with the source network on "
                                     "random images after converting.")


def reference_param_count(model: str, bn_scale: bool, num_classes: int) -> int:
    """§7.1's parameter count, adjusted for the head's class count."""
    return REFERENCE_PARAMS[(model, bn_scale)] + (num_classes - 1000) * (FEATURES + 1)


def _source_network(source: str, model: str, weights: Any, num_classes: int) -> Any:
    """The source network itself, for --check_parity (a timm model needs torch + timm)."""
    if source == "keras":
        return weights
    try:
        import timm
        import torch
    except ImportError as e:
        raise app.UsageError("--check_parity with --source=timm needs torch and timm: pip install -e '.[parity]'"
                             ) from e
    net = timm.create_model(model, pretrained=False, num_classes=num_classes)
    state = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    net.load_state_dict(state)
    return net.eval()


def convert(source: str, input_path: str, model: str, output: str, *, scan_blocks: bool = True,
            bn_scale: bool = False, drop_background: bool = False, overwrite: bool = False,
            check_parity: bool = False) -> ImportedModel:
    """Convert and save; returns what was imported. Prints a summary (and the parity table if asked)."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not one of {list(SOURCES)}")
    if source == "keras" and model != "inception_resnet_v2":
        raise ValueError(f"--source=keras provides InceptionResNetV2 only; --model={model} is not importable from "
                         "Keras (use --model=inception_resnet_v2, or --source=timm for inception_v4)")
    if source == "keras" and drop_background:
        raise ValueError("--drop_background applies to timm / slim 1001-class heads; Keras heads have 1000 classes")
    if os.path.exists(os.path.join(output, model_io.META_FILE)) and not overwrite:
        raise FileExistsError(f"--output={output} already holds an exported model; pass --overwrite or choose "
                              "another directory")
    if source == "timm":
        weights = load_timm_state_dict(input_path)
        imported = import_timm(weights, model, bn_scale=bn_scale, scan_blocks=scan_blocks,
                               drop_background=drop_background)
        imported.source = f"timm {os.path.abspath(input_path)}"
    else:
        weights = load_keras_model(input_path)
        imported = import_keras(weights, bn_scale=bn_scale, scan_blocks=scan_blocks)
        imported.source = f"keras {os.path.abspath(input_path)}"
    opts = imported.options
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(imported.variables["params"]))
    stats = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(imported.variables["batch_stats"]))
    expected = reference_param_count(model, bn_scale, opts.num_classes)
    dropped = f", dropped {imported.tensors_dropped} (num_batches_tracked)" if imported.tensors_dropped else ""
    print(f"read {imported.tensors_read} tensors from {imported.source}: used {imported.tensors_used} exactly once"
          f"{dropped}")
    print(f"model {model}: {opts.num_classes} classes, bn_scale={bn_scale}, "
          f"{'scanned' if scan_blocks else 'unrolled'} layout, "
          f"{len(jax.tree.leaves(imported.variables['params']))} parameter arrays + "
          f"{len(jax.tree.leaves(imported.variables['batch_stats']))} batch-statistics arrays")
    verdict = "matches" if params == expected else "DIFFERS FROM"
    print(f"parameters: {params:,} ({verdict} docs/architecture.md §7.1: {expected:,}); batch statistics: {stats:,}")
    for note in imported.notes:
        print(f"note: {note}")
    converted = imported.model()
    if check_parity:
        images = np.random.default_rng(0).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
        net = _source_network(source, model, weights, opts.num_classes)
        reference = (parity.keras_forward_stages(net, images) if source == "keras"
                     else parity.timm_forward_stages(net, model, images))
        errors = parity.compare_stages(parity.forward_stages(converted, images), reference)
        print(parity.format_errors(errors, "parity on 2 random 299x299 images (tolerance "
                                           f"{parity.TOLERANCE:g} relative):"))
        bad = [e.stage for e in errors if not e.ok]
        if bad:
            raise RuntimeError(f"parity check failed at stages {bad}; nothing was written to {output}")
    model_io.save_model(output, converted, source=imported.source, overwrite=overwrite)
    print(f"wrote {os.path.abspath(output)} ({model_io.META_FILE} + {model_io.VARIABLES_DIR}/)")
    return imported


def main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # orbax / jax log every step at INFO; the command prints its own
        logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; everything is a --flag")
    missing = [f"--{f.name}" for f in (_SOURCE, _INPUT, _MODEL, _OUTPUT) if f.value is None]
    if missing:
        raise app.UsageError(f"missing required flags {missing}")
    jax.config.update("jax_default_matmul_precision", "highest")
    if _SOURCE.value == "keras":
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # Keras only reads weights here; the GPU belongs to JAX
    try:
        convert(_SOURCE.value, _INPUT.value, _MODEL.value, _OUTPUT.value, scan_blocks=_SCAN_BLOCKS.value,
                bn_scale=_BN_SCALE.value, drop_background=_DROP_BACKGROUND.value, overwrite=_OVERWRITE.value,
                check_parity=_CHECK_PARITY.value)
    except (ImportMismatchError, OSError, ValueError, ImportError, RuntimeError) as e:
        # Bad input, not a bug: the message names what is wrong, a traceback would only bury it.
        sys.exit(f"convert: {type(e).__name__}: {e}")


if __name__ == "__main__":
    app.run(main)
