"""How XLA:CPU generates the code of the train and eval steps: XLA's defaults, or 512-bit vectors and
reassociating float math (`xla_cpu_codegen = "fast"`).

XLA's CPU defaults are 256-bit vectors (`xla_cpu_prefer_vector_width`) and strict IEEE evaluation order. "fast"
asks for 512-bit vectors and LLVM's reassociation and contraction (`xla_cpu_enable_fast_math`), keeping NaN and
inf honoured (the dying diagnostics and the divergence checks look for them), and division and the transcendental
functions exact; what remains is reassociation, fused multiply-add and the sign of zero. Float32 results move by
rounding (the Keras parity test checks this code too).

It is not the default because it did not pay where we could measure it (README, "Benchmarks"): on this
project's AVX-512 VMs the IR-v2 train step, one state and the executables interleaved in one process, took
0.99-1.04x the time of XLA's default code at 75 px over 10-16 rounds (a second copy of the default executable
read 0.96x: the noise), 0.98x at 299 px; the element-wise fusions, the code it changes, took 0.95-1.0x.
Shorter A/Bs of 3-6 rounds (two sessions' first tries) had read 0.88-0.95x; they did not repeat.
`benchmarks/speed_vs_timm.py --codegen=fast` and `benchmarks/profile_step.py --codegen=fast` measure it on yours.

An option the user set in XLA_FLAGS is left to XLA_FLAGS. The options apply only to programs compiled for CPU.
This module must stay importable without JAX: it holds names and dicts only.
"""

from __future__ import annotations

import os

CODEGENS = ("xla_default", "fast")
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
