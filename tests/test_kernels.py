"""Which kernels a program is traced with (inception_jax/cpu/backend.py), and what that makes of the train step
exported for each platform: GPUs and TPUs get stock programs (XLA's own convolution and pooling gradients, which
cuDNN and the TPU compiler implement), CPUs the CPU backend's tuned one. `jax.export` lowers for any platform on
this CPU-only machine; nothing here needs a GPU or TPU.
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from inception_jax.configuration import base_config, validate_static
from inception_jax.cpu.backend import CpuBackend, backend_for
from inception_jax.models import build_model, model_options
from inception_jax.models.ops import STOCK
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import init_state
from inception_jax.training.train_step import StepConfig, train_step
from inception_jax.validation import ConfigError
from tests.training_helpers import tiny_config

# The released IR-v2 has every kind of unit: a stem with max pools and a pooled branch (mixed5b), residual blocks,
# reductions, a linear last block, final_conv. Tiny, so that tracing and lowering take seconds.
KNOBS = dict(num_classes=10, width_multiplier=0.125, block_counts=(1, 2, 2), image_size=75, dropout_rate=0.0)
OPS = ("convolution", "dot_general", "reduce_window", "select_and_scatter", "custom_call", "while")


@functools.cache
def exported_train_step(platform: str, dtype: str = "float32", kernels: str = "auto") -> str:
    """The StableHLO of the train step of KNOBS' network, exported for `platform` ("cpu", "cuda", "tpu") with the
    kernels `backend_for` picks for it."""
    opts = model_options("inception_resnet_v2", dtype=dtype, **KNOBS)
    tx = optax.sgd(0.1)
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(opts)), nnx.Param, ...)[0]
    cfg = StepConfig(graphdef=graphdef, tx=tx, schedule=optax.constant_schedule(0.1), num_classes=10,
                     label_smoothing=0.0, aux_loss_weight=0.0, ema_decay=0.0, diagnostics=False,
                     learnable_scales=False, kernels=backend_for(kernels, platform, "tuned"))
    state = jax.eval_shape(lambda: init_state(opts, tx, 0))
    batch = {"image": jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
    step = jax.jit(lambda state, batch: train_step(state, batch, 0, cfg))
    return jax.export.export(step, platforms=[platform])(state, batch).mlir_module()


def without_locations(mlir: str) -> str:
    """The program without its source locations (which differ with the call site that traced it)."""
    return re.sub(r" loc\((?:[^()]|\([^()]*\))*\)", "", re.sub(r"(?m)^#loc.*\n", "", mlir))


def op_counts(mlir: str) -> dict[str, int]:
    counts = collections.Counter(re.findall(r"stablehlo\.([a-z_]+)", mlir))
    return {op: counts.get(op, 0) for op in OPS}


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_gpu_and_tpu_train_steps_are_stock_programs(platform):
    """Every convolution gradient is XLA's own (a convolution, no per-tap matmuls: the only dots left are the
    classifier's forward and its two gradients), max pooling is reduce_window with XLA's select_and_scatter
    gradient, and there is no custom call."""
    counts = op_counts(exported_train_step(platform))
    assert counts["dot_general"] == 3, counts
    assert counts["select_and_scatter"] > 0 and counts["reduce_window"] > 0, counts
    assert counts["custom_call"] == 0, counts
    cpu = op_counts(exported_train_step("cpu"))
    assert counts["convolution"] > 1.5 * cpu["convolution"] and cpu["dot_general"] > 10 * counts["dot_general"], \
        (counts, cpu)


def test_the_cpu_train_step_is_the_cpu_backends_tuned_program():
    """On CPU "auto" is the CPU kernels with XLA's kernel gradients outside loops (codegen "tuned"): per-tap and
    1x1 matmuls, max-pool gradients as masks (no select_and_scatter); forcing "stock" gives the stock program."""
    assert without_locations(exported_train_step("cpu")) == without_locations(exported_train_step("cpu", kernels="cpu"))
    counts = op_counts(exported_train_step("cpu"))
    assert counts["dot_general"] > counts["convolution"] / 2 and counts["select_and_scatter"] == 0, counts
    stock = op_counts(exported_train_step("cpu", kernels="stock"))
    assert stock == op_counts(exported_train_step("cuda")), stock


def test_a_bfloat16_gpu_train_step_is_stock_and_convolves_in_bfloat16():
    mlir = exported_train_step("cuda", dtype="bfloat16")
    counts = op_counts(mlir)
    assert counts["dot_general"] == 3 and counts["select_and_scatter"] > 0 and counts["custom_call"] == 0, counts
    convolutions = [line for line in mlir.splitlines() if "stablehlo.convolution" in line]
    assert convolutions and all("bf16" in line for line in convolutions)


def test_auto_is_the_cpu_kernels_on_cpu_only_and_either_can_be_forced():
    assert backend_for("auto", "cpu", "tuned") == CpuBackend(xla_kernel_gradients=True)
    assert backend_for("auto", "cpu", "xla_default") == CpuBackend(xla_kernel_gradients=False)
    for platform in ("gpu", "cuda", "rocm", "tpu"):
        assert backend_for("auto", platform) is STOCK
        assert backend_for("cpu", platform) == CpuBackend(xla_kernel_gradients=False)  # no XLA:CPU codegen there
    assert backend_for("stock", "cpu") is STOCK
    with pytest.raises(ValueError, match=r"kernels='fast' is not one of \['auto', 'stock', 'cpu'\]"):
        backend_for("fast", "cpu")


def test_a_model_outside_our_train_step_runs_stock():
    """create_model in someone else's loop: no kernels installed, the stock program on every platform."""
    model = nnx.eval_shape(lambda: build_model(model_options("inception_resnet_v2", **KNOBS)))  # shapes suffice
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, r, x):
        return jnp.mean(nnx.merge(graphdef, p, r, copy=True)(x, train=True) ** 2)

    x = jax.ShapeDtypeStruct((2, 75, 75, 3), jnp.float32)
    mlir = jax.export.export(jax.jit(jax.grad(loss)), platforms=["cpu"])(params, rest, x).mlir_module()
    assert op_counts(mlir)["dot_general"] == 3 and op_counts(mlir)["select_and_scatter"] > 0


def test_a_run_traces_its_programs_with_the_kernels_of_its_platform_or_config(shapes_tiny_dir, tmp_path):
    def kernels(**overrides):
        config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, **overrides})
        return prepare_run(config, str(tmp_path)).step_cfg.kernels

    assert kernels() == CpuBackend(xla_kernel_gradients=True)
    assert kernels(kernels="stock") is STOCK
    assert kernels(kernels="cpu", xla_cpu_codegen="xla_default") == CpuBackend(xla_kernel_gradients=False)
    config = base_config()
    config.kernels = "gpu"
    with pytest.raises(ConfigError, match=r"kernels='gpu' is not one of \['auto', 'stock', 'cpu'\]"):
        validate_static(config)
