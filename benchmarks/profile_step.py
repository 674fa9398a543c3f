"""Where a training step's time goes on this machine: the XLA ops of our jitted train step, grouped by kind.

    python benchmarks/profile_step.py                                   # inception_resnet_v2, 299 px, batch 8
    python benchmarks/profile_step.py --model=inception_v4 --size=75 --batch=32 --top=15

Runs the library's train step (the recipe's RMSProp; clipping, weight decay, EMA and diagnostics off, as
benchmarks/speed_vs_timm.py times it) under `jax.profiler.trace`, reads the trace's XPlane (TensorFlow ships its
protobuf) and sums the executed ops' wall time per kind: forward convolutions, convolution gradients (under the
CPU kernels mostly custom-VJP matmuls, see inception_jax/cpu/convolution.py), fusions (BatchNorm, ReLU,
concatenation, optimizer), copies and transposes, and the rest. Prints each kind's share of the step and the
slowest ops, so a speed change starts from a measurement. Asserts nothing.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.cpu import host_memory

if __name__ == "__main__":  # the allocator the main job runs with (inception_jax/cpu/host_memory.py)
    host_memory.reexec_with_huge_pages()

from bench_step import build_train_step


def op_kind(name: str, bodies: dict[str, str]) -> str | None:
    """The kind of an executed op, from its HLO instruction name and (for fusions) what the fusion computes;
    None for control-flow containers, whose bodies' ops are counted themselves."""
    base = re.sub(r"[.\d]+$", "", name)
    if base.startswith("convolution"):
        return "convolution (forward and input gradients)"
    if base in ("dot", "custom-call") or "dot" in base:
        return "matmul (dense layers, custom-VJP kernel gradients)"
    if "fusion" in base:
        body = bodies.get(name, "")
        if " convolution(" in body:
            return "convolution fusions"
        if " dot(" in body:
            return "matmul fusions"
        if " reduce(" in body:
            return "fusions with reductions (BatchNorm statistics, losses, norms)"
        return "elementwise fusions (BatchNorm apply, ReLU, scales, optimizer)"
    if base in ("copy", "transpose", "concatenate", "slice", "dynamic-slice", "dynamic-update-slice", "pad"):
        return "data movement (copy, transpose, concat, slice, pad)"
    if base in ("while", "call", "conditional"):
        return None  # containers: their bodies' ops are counted themselves
    return "other"


def fusion_bodies(hlo: str) -> dict[str, str]:
    """Fusion instruction name -> the text of the computation it calls, from the optimized HLO module."""
    computations = {}
    for block in re.split(r"\n(?=\S)", hlo):
        header = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block)
        if header:
            computations[header.group(1)] = block
    bodies = {}
    for match in re.finditer(r"%?([\w.\-]+) = [^\n]*? fusion\([^\n]*calls=%?([\w.\-]+)", hlo):
        bodies[match.group(1)] = computations.get(match.group(2), "")
    return bodies


def read_trace(logdir: str) -> list[tuple[str, float]]:
    """(op name, seconds) of every XLA op event on the host's threads, from the trace's .xplane.pb."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                stats = {stat_names.get(s.metadata_id, ""): s for s in event.stats}
                if "hlo_op" in stats or "hlo_module" in stats:
                    events.append((names.get(event.metadata_id, ""), event.duration_ps * 1e-12))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="inception_resnet_v2")
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--codegen", default="tuned", choices=cpu_codegen.CODEGENS,
                        help="XLA:CPU code generation (inception_jax/cpu/codegen.py)")
    parser.add_argument("--kernels", default="auto", choices=("auto", "stock", "cpu"),
                        help="the models' kernels: the CPU backend's or stock JAX (inception_jax/cpu/backend.py)")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    step, state, data, _ = build_train_step(args.model, size=args.size, batch=args.batch,
                                           codegen=args.codegen, kernels=args.kernels)
    hlo = step.as_text()
    bodies = fusion_bodies(hlo)
    state, metrics = step(state, data)  # warm-up
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as logdir:
        begin = time.perf_counter()
        with jax.profiler.trace(logdir):
            for _ in range(args.steps):
                state, metrics = step(state, data)
                jax.block_until_ready(metrics)
        wall = (time.perf_counter() - begin) / args.steps
        events = read_trace(logdir)
    by_kind = collections.Counter()
    by_op = collections.Counter()
    for name, seconds in events:
        kind = op_kind(name, bodies)
        if kind is None:
            continue
        by_kind[kind] += seconds / args.steps
        by_op[name] += seconds / args.steps
    total = sum(by_kind.values())
    print(f"{args.model}, {args.size} px, batch {args.batch}, codegen {args.codegen}, kernels {args.kernels}: "
          f"{wall * 1e3:.0f} ms per step "
          f"(wall, traced); ops sum to {total * 1e3:.0f} ms per step over all threads")
    for kind, seconds in by_kind.most_common():
        print(f"  {seconds / total:6.1%}  {seconds * 1e3:8.1f} ms  {kind}")
    print(f"slowest {args.top} ops (per step):")
    for name, seconds in by_op.most_common(args.top):
        print(f"  {seconds * 1e3:8.1f} ms  {name}  [{op_kind(name, bodies)}]")


if __name__ == "__main__":
    main()
