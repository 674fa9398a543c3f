"""Where a CPU training step's host memory and kernel time go (prints figures, asserts nothing).

    python benchmarks/step_memory.py                                # inception_resnet_v2, 75 px, batch 32
    python benchmarks/step_memory.py --model=inception_v4 --size=299 --batch=8

Builds the library's train step as benchmarks/speed_vs_timm.py times it (benchmarks/bench_step.py) and prints,
after each stage (JAX imported, state initialised, step compiled, freed memory handed back), the process's
resident memory (anonymous and file-backed, Linux /proc) next to what glibc's malloc holds in use and free
(mallinfo2), the model state's bytes and XLA's count of the step's temporaries. Then, over --steps steady steps:
the peak resident memory above the start, kernel (system) and user CPU time per step, page faults per step, and
whether malloc still had a block mapped outside its heaps after the last step (XLA:CPU's temporaries are one
block allocated on a worker thread; above 64 MiB, glibc's limit for a thread's heap, it is mapped afresh and
zero-filled by the kernel on every step: docs/performance.md §3.8). What the resident memory holds beyond the state
and the temporaries is the runtime (libraries, compiled programs) and freed memory malloc cannot hand back
(free chunks between live ones: partial pages).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import statistics
import time

from speed_vs_timm import reset_peak, rss_kib

from inception_jax.cpu import host_memory

if __name__ == "__main__":  # the allocator the main job runs with (inception_jax/cpu/host_memory.py)
    host_memory.reexec_with_huge_pages()


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_stats() -> MallInfo2 | None:
    """glibc's mallinfo2 (all arenas), None where the C library has none."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    fn.restype = MallInfo2
    return fn()


def report(stage: str) -> None:
    mem = {field: rss_kib(field) >> 10 for field in ("VmRSS", "RssAnon", "RssFile")}
    info = malloc_stats()
    heap = (f"; malloc in use {info.uordblks >> 20} MiB, free in its heaps {info.fordblks >> 20} MiB, mapped "
            f"blocks {info.hblkhd >> 20} MiB" if info else "")
    print(f"  {stage:34s} resident {mem['VmRSS']:6d} MiB (anonymous {mem['RssAnon']}, files {mem['RssFile']}){heap}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="inception_resnet_v2")
    parser.add_argument("--size", type=int, default=75)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(f"{args.model}, {args.size} px, batch {args.batch}; {host_memory.describe()}")
    start = rss_kib("VmRSS") >> 10
    report("start")
    import jax
    from bench_step import build_train_step

    report("JAX imported")
    step, state, data, _ = build_train_step(args.model, size=args.size, batch=args.batch)
    report("state built, step compiled, trimmed")  # build_train_step hands freed memory back after compiling
    state_mib = sum(x.nbytes for x in jax.tree.leaves(state)) >> 20
    temp_mib = step.memory_analysis().temp_size_in_bytes >> 20
    print(f"  model state {state_mib} MiB; XLA's step temporaries {temp_mib} MiB")
    for _ in range(2):
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
    reset_peak()  # peak resident memory from here
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(args.steps):
        begin = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - begin)
    after = resource.getrusage(resource.RUSAGE_SELF)
    report(f"after {args.steps} steps")
    per_step = {name: (getattr(after, name) - getattr(before, name)) / args.steps
                for name in ("ru_utime", "ru_stime", "ru_minflt")}
    print(f"  per step: {statistics.median(times) * 1e3:.0f} ms (median), user CPU {per_step['ru_utime'] * 1e3:.0f} "
          f"ms, kernel {per_step['ru_stime'] * 1e3:.0f} ms, {per_step['ru_minflt']:.0f} page faults; peak resident "
          f"{(rss_kib('VmHWM') >> 10) - start} MiB above the start")


if __name__ == "__main__":
    main()
