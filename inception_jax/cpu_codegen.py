"""How XLA:CPU generates the code of the train and eval steps: 512-bit vectors and reassociating float math.

XLA's CPU defaults are 256-bit vectors (`xla_cpu_prefer_vector_width`) and strict IEEE evaluation order. On this
project's AVX-512 machines (AMD EPYC, 2 cores) the train step of IR-v2 compiled with 512-bit vectors and LLVM's
reassociation and contraction (`xla_cpu_enable_fast_math`) ran in 0.88x the time at 299 px (batch 8) and
0.93-0.95x at the CPU-ablation size (75 px, batch 32), in one process with one state and the four executables
interleaved (README, "Next to timm"). Of fast math we take only what does not change which values are special:
NaN and inf stay honoured (the dying diagnostics and the divergence checks look for them), and so do division
and the transcendental functions; what remains is reassociation, fused multiply-add and the sign of zero. Float32
results move by rounding (within the 1e-4 of the Keras parity test, which also checks this codegen).

`xla_cpu_codegen = "xla_default"` in a config compiles with XLA's own defaults. An option the user set in
XLA_FLAGS is left to XLA_FLAGS. The options apply only to programs compiled for CPU devices.

This module must stay importable without JAX: it holds names and dicts only.
"""

from __future__ import annotations

import os

CODEGENS = ("fast", "xla_default")
FAST_OPTIONS: dict[str, bool | int] = {
    "xla_cpu_prefer_vector_width": 512,
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
}


def flags_set_in(xla_flags: str | None) -> set[str]:
    """The option names an XLA_FLAGS value sets (`--name=value` or a bare `--name`)."""
    names = set()
    for token in (xla_flags or "").split():
        if token.startswith("--"):
            names.add(token[2:].split("=", 1)[0])
    return names


def compiler_options(codegen: str, platform: str, xla_flags: str | None = None) -> dict[str, bool | int] | None:
    """The compiler options for `jax.jit(..., compiler_options=...)`: None off CPU or with "xla_default".

    `xla_flags` defaults to the process's XLA_FLAGS; an option it names is dropped here so the user's value holds.
    """
    if codegen not in CODEGENS:
        raise ValueError(f"xla_cpu_codegen={codegen!r} is not one of {list(CODEGENS)}")
    if platform != "cpu" or codegen == "xla_default":
        return None
    user = flags_set_in(os.environ.get("XLA_FLAGS") if xla_flags is None else xla_flags)
    return {name: value for name, value in FAST_OPTIONS.items() if name not in user} or None


def describe(codegen: str, platform: str) -> str:
    """One line for the run log."""
    options = compiler_options(codegen, platform)
    if options is None:
        return f"XLA:CPU codegen: XLA's defaults (xla_cpu_codegen={codegen!r}, platform {platform})"
    return f"XLA:CPU codegen: {codegen} ({', '.join(f'{k}={v}' for k, v in options.items())})"
