"""The GPU check for a session lent an accelerator (the device tool): one prepared run, under 8 minutes.

    python3 benchmarks/gpu_check.py            # from the repository root, on the GPU machine (PYTHONPATH=.)

1. Training in bfloat16 works: each model (inception_resnet_v2, inception_v4, and the paper's IR-v1 / IR-v2) takes
   30 steps of the library's train step (RMSProp recipe, float32 parameters, bf16 compute) on one fixed batch of
   random images at 299 px, batch 32; the loss must stay finite and fall (a network that can fit a batch trains).
2. Speed next to timm on that GPU: benchmarks/speed_vs_timm.py with bf16 compute against timm under AMP
   (bfloat16 autocast) in channels-last, 299 px, batch 64, for inception_resnet_v2 and inception_v4.
Prints figures and "GPU CHECK PASSED" or the failures; exits 1 on a failure. Needs only what the GPU image has
(jax with CUDA, flax, optax, torch, timm): the script avoids TensorFlow, TFDS, grain and ml_collections.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("inception_resnet_v2", "inception_v4", "inception_resnet_v1", "inception_resnet_v2_paper")


def train_check(name: str, steps: int = 30, batch: int = 32, size: int = 299) -> tuple[bool, str]:
    import jax
    from bench_step import build_train_step

    step, state, batch_data, compile_seconds = build_train_step(
        name, size=size, batch=batch, num_classes=10, dtype="bfloat16", learning_rate=0.01, weight_decay=4e-5,
        grad_clip_norm=2.0, diagnostics=True, bn_momentum=0.9)
    begin = time.perf_counter()
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch_data)
        losses.append(float(metrics["loss"]))
    seconds = time.perf_counter() - begin
    ok = all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state.params)}
    return ok, (f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps ({seconds:.1f} s; compile "
                f"{compile_seconds:.1f} s), "
                f"parameters {sorted(dtypes)}, prepool zero fraction {float(metrics['prepool_zero_frac']):.3f}, "
                f"device {jax.devices()[0].device_kind}")


def main() -> int:
    import jax

    print(f"jax {jax.__version__}: {jax.devices()}")
    failures = []
    for name in MODELS:
        ok, line = train_check(name)
        print(("ok    " if ok else "FAIL  ") + line, flush=True)
        if not ok:
            failures.append(name)
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "speed_vs_timm.py"), "--device=gpu", "--dtype=bfloat16",
           "--batch=64", "--sizes=299", "--repeats=10", "--warmup=3"]
    proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=360)
    print(proc.stdout + proc.stderr[-3000:], flush=True)
    if proc.returncode:
        failures.append("speed_vs_timm")
    print("GPU CHECK PASSED" if not failures else f"GPU CHECK FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
