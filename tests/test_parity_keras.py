"""Keras InceptionResNetV2 -> our inception_resnet_v2: output parity on random weights (docs/architecture.md §8.5).

Runs in CI (TensorFlow is a dependency): `keras.applications.InceptionResNetV2(weights=None)` with randomised
BatchNorm betas and biases and realistic BatchNorm statistics (one training pass), converted, then every stage
output and the logits compared at 299 x 299, 75 x 75 and 299 x 331 (batch 2), float32, traced and compiled as the
training loop does on CPU (the CPU backend's kernels, `xla_cpu_codegen="tuned"`: convolutions on XLA's own
kernels); at 75 x 75 also unrolled, stock, with XLA's untouched defaults (convolutions on YNNPACK). Tolerance
max|a - b| <= 1e-4 * max(1, max|b|). Everything happens in one test: a shared fixture would be rebuilt by every
xdist worker. About 60 s on 2 cores.
"""

import jax
import numpy as np
import pytest

from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.cpu.backend import backend_for
from inception_jax.pretrained.importers import ImportMismatchError, import_keras, parity

keras = pytest.importorskip("keras", reason="keras ships with tensorflow, a project dependency")

SIZES = [(299, 299), (75, 75), (299, 331)]


def assert_parity(ours, reference, title):
    errors = parity.compare_stages(ours, reference)
    table = parity.format_errors(errors, title)
    print(table)  # the figures, visible with `pytest -s`
    assert all(e.ok for e in errors), table
    return errors


def test_keras_inception_resnet_v2_matches_ours_at_every_stage():
    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)
    reference = keras.applications.InceptionResNetV2(weights=None, classifier_activation=None)
    parity.prepare_keras_for_parity(reference, rng.uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32), seed=1)

    imported = import_keras(reference)  # scanned layout, bn_scale=False (Keras has no gamma)
    # 204 conv kernels + 3 x 204 BatchNorm tensors + 40 UP kernels and biases + the Dense: every one used once.
    assert (imported.tensors_read, imported.tensors_used) == (898, 898)
    assert sum(a.size for a in jax.tree.leaves(imported.variables["params"])) == 55_813_192  # §7.1, beta only
    ours = imported.model()

    flexible = parity.keras_flexible_model(reference)
    tuned = cpu_codegen.compiler_options("tuned", "cpu", xla_flags="")
    for height, width in SIZES:
        images = rng.uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
        assert_parity(parity.forward_stages(ours, images, compiler_options=tuned, kernels=backend_for("cpu", "cpu")),
                      parity.keras_forward_stages(reference, images, flexible=flexible),
                      f"Keras vs ours (scanned, CPU kernels, tuned XLA:CPU codegen), {height}x{width}")

    unrolled = import_keras(reference, scan_blocks=False).model()
    images = rng.uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)
    keras_stages = parity.keras_forward_stages(reference, images, flexible=flexible)
    assert_parity(parity.forward_stages(unrolled, images), keras_stages,
                  "Keras vs ours (unrolled, stock, XLA's default codegen), 75x75")

    with pytest.raises(ImportMismatchError, match="no 'predictions' Dense layer"):
        import_keras(flexible)  # include_top=False: nothing to fill our head with
