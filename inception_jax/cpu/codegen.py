"""How XLA:CPU compiles the train and eval steps (`xla_cpu_codegen`): "tuned" (the default) or XLA's own
defaults ("xla_default").

"tuned" is XLA's defaults with one change: convolutions run on XLA's own convolution kernels instead of YNNPACK
(and, in steps whose repeated blocks have large matmuls, dots too: see below).
This jaxlib hands every dot, convolution and large reduction to YNNPACK (`xla_cpu_experimental_ynn_fusion_type`
defaults to INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE); its convolutions were the slow part of our steps on
this project's AVX-512 VMs. Reductions stay on YNNPACK: without them XLA computes BatchNorm's statistics as slow
reduce-window trees. Dots stay on YNNPACK unless the repeated blocks' matmuls are large (`matmul_rows`, the pixels
times examples per device of the B blocks' 1x1 convolutions, at least XLA_DOTS_MIN_ROWS): there XLA's own dots are
faster, and below it slower. The measurements: docs/performance.md §3.7 and §6.3.

There is no fast-math choice: XLA:CPU's `xla_cpu_enable_fast_math` (even honouring NaN, inf, division and the
math functions) put the gradients of a small IR-v2 far off XLA's defaults once a residual block multiplied its
shortcut by a gain held as a value, and it had not made a step measurably faster (docs/performance.md §3.7, §4).

Every choice moves float32 results by rounding only (tests/test_cpu_codegen.py, the Keras parity test). An option
the user set in XLA_FLAGS is left to XLA_FLAGS. The options apply only to programs compiled for CPU.
This module must stay importable without JAX: it holds names and dicts only.
"""

from __future__ import annotations

import os

CODEGENS = ("tuned", "xla_default")
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# Which ops XLA:CPU hands to YNNPACK: its defaults less INDIVIDUAL_CONVOLUTION.
TUNED_OPTIONS: dict[str, bool | int | str] = {
    YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
_OPTIONS = {"tuned": TUNED_OPTIONS, "xla_default": {}}
# From this many rows in the blocks' matmuls, "tuned" leaves dots to XLA too: XLA's matmuls overtake YNNPACK's
# somewhere past 1,000 rows, and whole steps were timed at 288 and 2,312 only, so the threshold sits between them
# on the safe side (docs/performance.md §6.3).
XLA_DOTS_MIN_ROWS = 2048
LARGE_MATMUL_YNN_FUSION_TYPE = "LIBRARY_FUSION_TYPE_REDUCE"


def flags_set_in(xla_flags: str | None) -> set[str]:
    """The option names an XLA_FLAGS value sets (`--name=value` or a bare `--name`)."""
    names = set()
    for token in (xla_flags or "").split():
        if token.startswith("--"):
            names.add(token[2:].split("=", 1)[0])
    return names


def block_matmul_rows(per_device_batch: int, grid: int) -> int:
    """The rows of the B blocks' 1x1-convolution matmuls (the bulk of a step's matmuls): examples x grid x grid."""
    return per_device_batch * grid * grid


def compiler_options(codegen: str, platform: str, xla_flags: str | None = None, *,
                     matmul_rows: int = 0) -> dict[str, bool | int | str] | None:
    """The compiler options for `jax.jit(..., compiler_options=...)`: None off CPU or with "xla_default".

    `matmul_rows` (`block_matmul_rows` of the program's batch and grid; 0: unknown) moves the dots off YNNPACK
    from XLA_DOTS_MIN_ROWS on. `xla_flags` defaults to the process's XLA_FLAGS; an option it names is dropped here
    so the user's value holds.
    """
    if codegen not in CODEGENS:
        raise ValueError(f"xla_cpu_codegen={codegen!r} is not one of {list(CODEGENS)}")
    if platform != "cpu":
        return None
    options = dict(_OPTIONS[codegen])
    if YNN_FUSION_TYPE in options and matmul_rows >= XLA_DOTS_MIN_ROWS:
        options[YNN_FUSION_TYPE] = LARGE_MATMUL_YNN_FUSION_TYPE
    user = flags_set_in(os.environ.get("XLA_FLAGS") if xla_flags is None else xla_flags)
    return {name: value for name, value in options.items() if name not in user} or None


def step_compiler_options(codegen: str, platform: str, *, per_device_batch: int,
                          grid: int) -> dict[str, bool | int | str] | None:
    """The options of a train or eval step of `per_device_batch` examples whose B blocks run on a `grid`-square
    map: what the training loop and the benchmarks compile with, so they measure the same program."""
    return compiler_options(codegen, platform, matmul_rows=block_matmul_rows(per_device_batch, grid))


def xla_convolution_kernels(codegen: str, platform: str, xla_flags: str | None = None) -> bool:
    """Whether programs compiled with `codegen` run their convolutions on XLA's own kernels, not YNNPACK's: the
    train step then gives the convolutions outside loops XLA's kernel gradient (convolution.conv2d), which
    is faster there on these kernels and slower on YNNPACK's. (Whatever `matmul_rows` does to the dots.)"""
    options = compiler_options(codegen, platform, xla_flags) or {}
    return YNN_FUSION_TYPE in options and "CONVOLUTION" not in str(options[YNN_FUSION_TYPE])


def init_compiler_options(platform: str) -> dict[str, int] | None:
    """The options of a run's init program: it runs once per run, so XLA:CPU compiles it without LLVM's
    optimisations, in a fraction of the time for the main job's network (its ~250 random initialisers), the same
    numbers (docs/performance.md §6.3). None off CPU."""
    return {"xla_backend_optimization_level": 0} if platform == "cpu" else None


def describe(codegen: str, platform: str, *, matmul_rows: int = 0) -> str:
    """One line for the run log."""
    options = compiler_options(codegen, platform, matmul_rows=matmul_rows)
    if options is None:
        return f"XLA:CPU codegen: XLA's defaults (xla_cpu_codegen={codegen!r}, platform {platform})"
    return f"XLA:CPU codegen: {codegen} ({', '.join(f'{k}={v}' for k, v in options.items())})"
