"""Training-step speed and memory of our networks next to timm's, in one run on one machine.

    pip install -e '.[parity]'                      # torch + timm (make parity installs them)
    python benchmarks/speed_vs_timm.py              # CPU: 299 px batch 8, and the CPU-ablation size
    python benchmarks/speed_vs_timm.py --rounds=3   # the same, three (ours, timm) process pairs each
    python benchmarks/speed_vs_timm.py --device=gpu --dtype=bfloat16 --batch=64   # a GPU (bf16 vs AMP)

Each side runs alone in its own process, one after the other (ours, then timm), so thread pools, allocators
and memory never interfere. Both processes get the same host allocator: by default glibc's malloc with
transparent huge pages, which our main job sets for itself (inception_jax/cpu/host_memory.py); `--allocator=default`
runs both on glibc's defaults instead. A training step = forward, softmax cross-entropy, backward and an RMSProp
update (TF settings: decay 0.9, momentum 0.9, eps 1.0; torch's RMSprop adds eps outside the square root, which
costs the same). Ours is the library's jitted train step with clipping, weight decay, EMA and diagnostics
switched off, as it runs on a step that does not log (no global norms), so both sides do the same work. After
--warmup steps, --repeats timed steps per side; medians; images/s and the ratio ours / timm. Also our compile
time, and each process's memory while it trains: its peak resident memory over the timed steps (Linux VmHWM,
reset after warm-up) above what it held before building its side (so the framework's libraries, the model, its
optimizer state and each step's temporaries count; the interpreter does not). One step's peak alone would be
unreliable: XLA:CPU allocates a step's temporaries afresh each step, and whether the last step's are still
resident when a step starts varies from run to run. Ours also prints XLA's own count of its step's temporaries.
--rounds=N repeats the pair of processes N times and reports the median of the N ratios. TensorFlow is not
imported (torch and TF in one process crash at import).
Targets (issue #7, CPU): ours >= 1.0x timm at 299 px and >= 1.3x at the CPU-ablation size, memory <= timm's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from inception_jax.cpu import codegen as cpu_codegen
from inception_jax.cpu import host_memory

SIZES = {"299": (299, 8), "cpu": (75, 32)}  # image size, batch (cpu = configs/ablation_scale.py's input and batch)
TIMM_NAMES = {"inception_resnet_v2": "inception_resnet_v2", "inception_v4": "inception_v4"}


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


class Ours:
    def __init__(self, name: str, size: int, batch: int, args: argparse.Namespace):
        import jax
        from bench_step import build_train_step

        self.step_fn, self.state, self.batch, self.compile_seconds = build_train_step(
            name, size=size, batch=batch, dtype=args.dtype, codegen=args.codegen, kernels=args.kernels)
        self.temp_mib = self.step_fn.memory_analysis().temp_size_in_bytes >> 20
        self._jax = jax

    def step(self) -> None:
        self.state, metrics = self.step_fn(self.state, self.batch)
        self._jax.block_until_ready(metrics["loss"])


class Timm:
    def __init__(self, name: str, size: int, batch: int, args: argparse.Namespace):
        import timm
        import torch

        dtype, device = args.dtype, args.device
        self.torch = torch
        self.device = torch.device("cuda" if device == "gpu" else "cpu")
        self.model = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=1000).to(self.device).train()
        self.channels_last = device == "gpu"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.RMSprop(self.model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
        self.amp = dtype == "bfloat16"
        gen = torch.Generator().manual_seed(0)
        self.x = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(self.device)
        if self.channels_last:
            self.x = self.x.to(memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (batch,), generator=gen).to(self.device)

    def step(self) -> None:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        else:
            loss.item()


def side_worker(cls_name: str, name: str, size: int, batch: int, args: argparse.Namespace, conn) -> None:
    """One side, alone on the machine in its own process: its own allocator and thread pools, its own memory.

    (With the other side's process merely resident and idle, our 299 px step ran 1.2-1.5x slower on this
    2-core VM, so the sides are never alive at the same time.)"""
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    before = rss_kib("VmRSS")
    side = {"ours": Ours, "timm": Timm}[cls_name](name, size, batch, args)
    for _ in range(args.warmup):
        side.step()
    reset_peak()
    times = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        side.step()
        times.append(time.perf_counter() - begin)
    conn.send({"compile_seconds": getattr(side, "compile_seconds", None), "peak_kib": rss_kib("VmHWM") - before,
               "temp_mib": getattr(side, "temp_mib", None), "times": times})


def run_side(label: str, name: str, size: int, batch: int, args) -> dict:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=side_worker, args=(label, name, size, batch, args, child))
    proc.start()
    facts = parent.recv()
    proc.join()
    return facts


def compare(name: str, size_key: str, args) -> None:
    """--rounds rounds of (ours, timm), each side a fresh process: the machine's drift between two processes is
    what limits a single ratio (timm alone ranged 52-77 img/s at 75 px across runs of one day), so the ratio
    reported is the median of the rounds' ratios, each from two neighbouring processes."""
    size, batch = SIZES[size_key]
    batch = args.batch or batch
    rounds = [{label: run_side(label, name, size, batch, args) for label in ("ours", "timm")}
              for _ in range(args.rounds)]
    print(f"\n== {name}, {size} px, batch {batch}, {args.device} {args.dtype}, {args.rounds} round(s) of "
          f"{args.repeats} timed steps per side")
    ratios = []
    for r, facts in enumerate(rounds):
        median = {label: statistics.median(f["times"]) for label, f in facts.items()}
        ratios.append(median["timm"] / median["ours"])
        for label, f in facts.items():
            print(f"  {r + 1}: {label:5s} {batch / median[label]:8.2f} img/s  {median[label] * 1e3:9.1f} ms/step  "
                  f"(min {min(f['times']) * 1e3:.0f}, max {max(f['times']) * 1e3:.0f})  "
                  f"peak memory while training +{f['peak_kib'] / 1024:6.0f} MiB"
                  + (f" (XLA's step temporaries {f['temp_mib']} MiB)" if f["temp_mib"] is not None else ""))
    compile_seconds = statistics.median(facts["ours"]["compile_seconds"] for facts in rounds)
    peak = {label: max(facts[label]["peak_kib"] for facts in rounds) / 1024 for label in ("ours", "timm")}
    print(f"  ours/timm images/s: {statistics.median(ratios):.2f}x (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)})   peak memory ours/timm: {peak['ours'] / peak['timm']:.2f}x   "
          f"our compile: {compile_seconds:.1f} s")


def set_children_allocator(allocator: str) -> None:
    """The environment both sides' processes start with (glibc reads its tunables at process start)."""
    tunables = host_memory.other_tunables(os.environ.get("GLIBC_TUNABLES"))
    if allocator == "huge_pages":
        tunables += host_memory.WANTED.split(":")
    os.environ["GLIBC_TUNABLES"] = ":".join(tunables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="inception_resnet_v2,inception_v4",
                        help=f"comma-separated: {list(TIMM_NAMES)}")
    parser.add_argument("--sizes", default="299,cpu", help=f"comma-separated: {list(SIZES)} (cpu: 75 px, batch 32)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--batch", type=int, default=0, help="override the batch of every size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="(ours, timm) process pairs per comparison")
    parser.add_argument("--allocator", default="huge_pages", choices=("huge_pages", "default"),
                        help="host allocator of both sides' processes (inception_jax/cpu/host_memory.py)")
    parser.add_argument("--codegen", default="tuned", choices=cpu_codegen.CODEGENS,
                        help="our step's XLA:CPU code generation (inception_jax/cpu/codegen.py)")
    parser.add_argument("--kernels", default="auto", choices=("auto", "stock", "cpu"),
                        help="our models' kernels: auto = the CPU backend's on CPU, stock JAX on GPU "
                             "(inception_jax/cpu/backend.py)")
    parser.add_argument("--cpu_dispatch", default="inline", choices=host_memory.DISPATCH_MODES,
                        help="how our side runs its steps on CPU (host_memory.run_cpu_steps_inline)")
    args = parser.parse_args()
    for flag, given, valid in (("--sizes", args.sizes, SIZES), ("--models", args.models, TIMM_NAMES)):
        unknown = [v for v in given.split(",") if v not in valid]
        if unknown:
            parser.error(f"{flag}={given}: {unknown} not among {list(valid)}")
    set_children_allocator(args.allocator)
    os.environ[host_memory.DISPATCH_ENV] = args.cpu_dispatch  # read by our side's process (bench_step.py)
    import torch

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); {os.cpu_count()} CPUs; each side in "
          f"its own process; allocator: {args.allocator} (GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}); "
          f"our codegen: {args.codegen}; our kernels: {args.kernels}; our CPU dispatch: {args.cpu_dispatch}")
    for size_key in args.sizes.split(","):
        for name in args.models.split(","):
            compare(name, size_key, args)


if __name__ == "__main__":
    main()
