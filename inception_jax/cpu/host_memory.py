"""Transparent huge pages for the host allocator, so CPU training does not fault its memory in every step.

XLA:CPU gets each step's temporary buffers (hundreds of MiB at the CPU-ablation size) from glibc's malloc. Blocks
that large are mmap'd on allocation and unmapped on free, so every step touches fresh memory and spends much of
its time in the kernel faulting it in. glibc's `glibc.malloc.hugetlb=1` tunable has malloc ask for transparent
huge pages (madvise), which cuts the faults and the TLB misses with them. The pages were still handed back after
every step (unmapped, or trimmed off the top of the heap) and zero-filled by the kernel again on the next.
`mmap_max=0` keeps large blocks in the heap and a 16 GiB trim threshold keeps the heap from shrinking under them,
so each step reuses the pages of the last. Both made the step faster (docs/performance.md §3.8, §6.3). Memory a
process frees then stays resident until `release_freed_memory`, which the training loop calls after each
compile. glibc reads tunables only when a process starts, so an entry point that finds the huge-page tunable
missing re-executes itself once with these set.

The same churn had one more source: steps JAX dispatched asynchronously ran on a thread whose malloc arena
freed its heaps between steps; `run_cpu_steps_inline` runs them in the calling thread instead.
This module must stay importable without JAX or TensorFlow: it runs before either is loaded (JAX is imported
inside `run_cpu_steps_inline` only).
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"  # its presence, with any value, means the allocator was chosen already
SETTINGS = ((TUNABLE, "1"), ("glibc.malloc.mmap_max", "0"), ("glibc.malloc.trim_threshold", str(16 << 30)))
WANTED = ":".join(f"{name}={value}" for name, value in SETTINGS)
OPT_OUT = "INCEPTION_JAX_HUGE_PAGES"  # "0": leave the allocator as the environment has it
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _entries(current: str | None) -> list[str]:
    return [e for e in (current or "").split(":") if e]


def other_tunables(current: str | None) -> list[str]:
    """The entries of a GLIBC_TUNABLES value that set none of SETTINGS' tunables."""
    ours = {name for name, _ in SETTINGS}
    return [e for e in _entries(current) if e.split("=", 1)[0] not in ours]


def tunables_with_huge_pages(current: str | None) -> str | None:
    """GLIBC_TUNABLES with SETTINGS added where the user has not set them; None when the huge-page tunable is
    already set (to any value: a value the user chose, 0 included, is kept, and the rest is left to them too)."""
    entries = _entries(current)
    chosen = {e.split("=", 1)[0] for e in entries}
    if TUNABLE in chosen:
        return None
    return ":".join([*entries, *(f"{name}={value}" for name, value in SETTINGS if name not in chosen)])


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library this process runs on, None when it is not glibc."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def transparent_huge_pages() -> str | None:
    """The kernel's THP mode ("always", "madvise", "never"), None where the kernel has no THP."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def why_not_applicable(environ: dict[str, str] | None = None) -> str | None:
    """None when the tunable helps here and is not in force yet; else why the process is left as it is."""
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT) == "0":
        return f"{OPT_OUT}=0"
    version = glibc_version()
    if version is None or version < (2, 35):
        return f"the C library is not glibc >= 2.35 ({version})"
    mode = transparent_huge_pages()
    if mode in (None, "never"):
        return f"the kernel's transparent huge pages are {mode or 'absent'}"
    if tunables_with_huge_pages(environ.get("GLIBC_TUNABLES")) is None:
        return f"GLIBC_TUNABLES already sets {TUNABLE} ({environ.get('GLIBC_TUNABLES')})"
    return None


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set; return at once where it does not apply.

    Call it first thing in an entry point, before JAX, TensorFlow or threads exist. The new process finds the
    tunable set and runs on, so there is at most one re-execution.
    """
    if why_not_applicable() is not None or not sys.orig_argv:
        return
    env = {**os.environ, "GLIBC_TUNABLES": tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def describe() -> str:
    """One line for the run log: whether the huge-page allocator is in force, and how to get it if not."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    if f"{TUNABLE}=1" in _entries(current):
        return f"host allocator: transparent huge pages, pages kept across steps ({current}; {OPT_OUT}=0 turns it off)"
    reason = why_not_applicable() or "this process was not started through an entry point that sets it"
    return f"host allocator: glibc defaults ({reason})"


def release_freed_memory() -> int:
    """Hand the memory malloc holds but no longer uses back to the kernel (glibc's malloc_trim); the bytes freed.

    XLA's compiler frees most of what it allocates, but glibc keeps it in the heap, hundreds of MiB after
    compiling IR-v2's train step (docs/performance.md §3.8). Call it after compiling, not per step.
    """
    if glibc_version() is None:
        return 0
    import ctypes

    before = _resident_bytes()
    ctypes.CDLL(None).malloc_trim(0)
    return max(before - _resident_bytes(), 0)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


DISPATCH_ENV = "INCEPTION_JAX_CPU_DISPATCH"  # "inline" (the default) or "async": how single-device steps run
DISPATCH_MODES = ("inline", "async")


def run_cpu_steps_inline() -> str:
    """Have XLA:CPU run each single-device computation in the thread that calls it (JAX's
    `jax_cpu_enable_async_dispatch=False`) unless INCEPTION_JAX_CPU_DISPATCH=async; returns a line for the run log.
    Multi-device computations (a mesh of several CPU devices) are dispatched as before: JAX applies the flag to
    non-parallel computations only.

    Dispatched asynchronously, a step runs on PjRt's client thread, whose glibc arena frees its heaps when a step
    ends, so the next step's temporaries fault fresh pages in again. Inline, they come from the caller's
    main-arena heap, which the huge-page allocator keeps (above), and most of the faults and kernel time go.
    Inline steps were as fast or faster, and the main job's loop lost nothing by waiting for each step (its input
    pipeline prefetches in its own threads): docs/performance.md §3.8 and §6.3.

    Must run before JAX creates its CPU client (the first computation or device query); after that it changes
    nothing and says so.
    """
    import jax
    from jax._src import xla_bridge

    mode = os.environ.get(DISPATCH_ENV, "inline")
    if mode not in DISPATCH_MODES:
        raise ValueError(f"{DISPATCH_ENV}={mode!r}: expected one of {list(DISPATCH_MODES)}")
    if xla_bridge.backends_are_initialized():
        current = "async" if jax.config.values["jax_cpu_enable_async_dispatch"] else "inline"
        return f"XLA:CPU dispatch: {current} (JAX's backends were initialised before it could be set)"
    jax.config.update("jax_cpu_enable_async_dispatch", mode == "async")
    if mode == "async":
        return f"XLA:CPU dispatch: async, steps run on PjRt's client thread ({DISPATCH_ENV}=async)"
    return f"XLA:CPU dispatch: inline, single-device steps run in the calling thread ({DISPATCH_ENV}=async to undo)"
