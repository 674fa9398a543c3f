"""How XLA:CPU compiles the train and eval steps (`xla_cpu_codegen`): "tuned" (the default), XLA's own
defaults ("xla_default"), or "tuned" plus 512-bit vectors and reassociating float math ("fast").

"tuned" is XLA's defaults with one change: convolutions run on XLA's own convolution kernels instead of YNNPACK.
This jaxlib hands every dot, convolution and large reduction to YNNPACK (`xla_cpu_experimental_ynn_fusion_type`
defaults to INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION, REDUCE); its convolutions were the slow part of our steps on
this project's AVX-512 VMs. Alone, forward and backward through our `conv2d`: the stem's 3x3 convs at 299 px
0.56x / 0.75x / 0.79x the time, a 3x3 256 -> 256 conv at 35 x 35 0.96x, a scan of twenty 7x1 convs 0.85x. The
whole IR-v2 train step at 299 px, batch 8, both programs interleaved in one process: 0.939x (README,
"Benchmarks"). Dots and reductions stay on YNNPACK. XLA's own dots pay only where the blocks' matmuls are large:
with the kernel-gradient forms kept, the step at 299 px, batch 8 took 0.98x (IR-v2, v4), at 75 px, batch 32 1.07x
(README, "What changed", evening of 2026-12-06). Without YNNPACK's reductions XLA computes BatchNorm's statistics
as slow reduce-window trees (1.12x the step time).

"fast" adds 512-bit vectors (`xla_cpu_prefer_vector_width`) and LLVM's reassociation and contraction
(`xla_cpu_enable_fast_math`), keeping NaN and inf honoured (the dying diagnostics and the divergence checks look
for them), and division and the transcendental functions exact. It did not pay where we could measure it (0.99-1.04x
at 75 px over 10-16 rounds, 0.98x at 299 px, against XLA's defaults), so it is a knob to try, not the default.

Every choice moves float32 results by rounding only (tests/test_cpu_codegen.py, the Keras parity test). An option
the user set in XLA_FLAGS is left to XLA_FLAGS. The options apply only to programs compiled for CPU.
This module must stay importable without JAX: it holds names and dicts only.
"""

from __future__ import annotations

import os

CODEGENS = ("tuned", "xla_default", "fast")
YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# Which ops XLA:CPU hands to YNNPACK: its defaults less INDIVIDUAL_CONVOLUTION.
TUNED_OPTIONS: dict[str, bool | int | str] = {
    YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}
FAST_OPTIONS: dict[str, bool | int | str] = {
    **TUNED_OPTIONS,
    "xla_cpu_prefer_vector_width": 512,
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
}
_OPTIONS = {"tuned": TUNED_OPTIONS, "xla_default": {}, "fast": FAST_OPTIONS}


def flags_set_in(xla_flags: str | None) -> set[str]:
    """The option names an XLA_FLAGS value sets (`--name=value` or a bare `--name`)."""
    names = set()
    for token in (xla_flags or "").split():
        if token.startswith("--"):
            names.add(token[2:].split("=", 1)[0])
    return names


def compiler_options(codegen: str, platform: str, xla_flags: str | None = None) -> dict[str, bool | int | str] | None:
    """The compiler options for `jax.jit(..., compiler_options=...)`: None off CPU or with "xla_default".

    `xla_flags` defaults to the process's XLA_FLAGS; an option it names is dropped here so the user's value holds.
    """
    if codegen not in CODEGENS:
        raise ValueError(f"xla_cpu_codegen={codegen!r} is not one of {list(CODEGENS)}")
    if platform != "cpu":
        return None
    user = flags_set_in(os.environ.get("XLA_FLAGS") if xla_flags is None else xla_flags)
    return {name: value for name, value in _OPTIONS[codegen].items() if name not in user} or None


def xla_convolution_kernels(codegen: str, platform: str, xla_flags: str | None = None) -> bool:
    """Whether programs compiled with `codegen` run their convolutions on XLA's own kernels, not YNNPACK's: the
    train step then gives the convolutions outside loops XLA's kernel gradient (models/layers.py, conv2d), which
    is faster there on these kernels and slower on YNNPACK's."""
    options = compiler_options(codegen, platform, xla_flags) or {}
    return options.get(YNN_FUSION_TYPE) == TUNED_OPTIONS[YNN_FUSION_TYPE]


def describe(codegen: str, platform: str) -> str:
    """One line for the run log."""
    options = compiler_options(codegen, platform)
    if options is None:
        return f"XLA:CPU codegen: XLA's defaults (xla_cpu_codegen={codegen!r}, platform {platform})"
    return f"XLA:CPU codegen: {codegen} ({', '.join(f'{k}={v}' for k, v in options.items())})"
