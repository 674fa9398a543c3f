"""The CPU backend as the models see it (config key `kernels`), and which backend a program is traced with.

`CpuBackend` replaces the models' replaceable operations (models/ops.py) with the forms tuned for XLA:CPU on a few
cores: hand-written convolution, pooling and BatchNorm-ReLU backwards, the folded residual scale, the fused opening
1x1 convolutions and the deferred ReLU mask in the scan over blocks. Elsewhere they are slower than XLA's own
(cuDNN's and the TPU's convolution gradients), so GPUs and TPUs run stock programs: `backend_for` picks the CPU
kernels for CPU programs and stock ones for every other platform, unless `config.kernels` forces either (A/Bs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

from inception_jax.cpu import batchnorm, blocks, convolution, pooling, projection
from inception_jax.cpu.codegen import xla_convolution_kernels
from inception_jax.models import batchnorm as model_batchnorm
from inception_jax.models import blocks as model_blocks
from inception_jax.models import layers as model_layers
from inception_jax.models import stacking as model_stacking
from inception_jax.models.ops import STOCK, Backend

BACKEND_CHOICES = ("auto", "stock", "cpu")  # config.kernels

REPLACEMENTS: Mapping[Callable, Callable] = {
    model_layers.conv_general_dilated: convolution.conv_general_dilated,
    model_layers.max_pool_3x3_s2: pooling.max_pool_3x3_s2,
    model_layers.avg_pool_3x3_same: pooling.avg_pool_3x3_same,
    model_batchnorm.batch_norm_relu: batchnorm.batch_norm_relu,
    model_blocks.run_branches: blocks.run_branches,
    model_blocks.scaled_up_projection: projection.scaled_up_projection,
    model_blocks.block_relu: blocks.block_relu,
    model_stacking.scan_blocks: blocks.scan_blocks,
}


@dataclasses.dataclass(frozen=True)
class CpuBackend(Backend):
    """The CPU forms of every replaceable operation. `xla_kernel_gradients`: the program compiles for XLA:CPU's own
    convolution kernels (codegen "tuned"), so the convolutions outside loops take XLA's kernel gradient and the
    stride-1 ones inside the repeated blocks the canonical one (convolution.conv2d)."""

    name: ClassVar[str] = "cpu"
    xla_kernel_gradients: bool = False

    def replacements(self) -> Mapping[Callable, Callable]:
        return REPLACEMENTS

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        with super().tracing(), convolution.xla_kernel_gradients(self.xla_kernel_gradients):
            yield


def backend_for(choice: str, platform: str, codegen: str = "tuned") -> Backend:
    """The kernels of a program compiled for `platform` ("cpu", "gpu", "cuda", "tpu", ...): `choice` "auto" is the
    CPU kernels on CPU and stock elsewhere, "stock" and "cpu" force one. `codegen` is the program's
    xla_cpu_codegen, which decides `xla_kernel_gradients` (always off for programs not compiled for CPU)."""
    if choice not in BACKEND_CHOICES:
        raise ValueError(f"kernels={choice!r} is not one of {list(BACKEND_CHOICES)}")
    if choice == "stock" or (choice == "auto" and platform != "cpu"):
        return STOCK
    return CpuBackend(xla_kernel_gradients=xla_convolution_kernels(codegen, platform))


def describe(kernels: Backend, platform: str) -> str:
    """One line for the run log."""
    if isinstance(kernels, CpuBackend):
        where = "XLA's kernel gradients outside loops" if kernels.xla_kernel_gradients else "per-tap kernel gradients"
        return f"kernels: the CPU backend's (inception_jax/cpu; {where}) on {platform}"
    return f"kernels: stock JAX (XLA's own convolution, pooling and BatchNorm gradients) on {platform}"
