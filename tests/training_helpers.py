"""Shared by the training tests: the tiny run config, the main job as a command, and readers of a run folder."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from inception_jax.config_files import load_config
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/ablation_scale.py"  # the main job


def main_job(*args, workdir, data_dir, check=True, popen=False):
    """`python -m inception_jax.main --config=configs/ablation_scale.py:preset=tiny ...` in a subprocess."""
    # The plain machine a user has (one device), compiling without LLVM's optimisations as the whole suite does
    # (tests/conftest.py).
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    cmd = [sys.executable, "-m", "inception_jax.main", f"--config={CONFIG}:preset=tiny", f"--workdir={workdir}",
           f"--config.data.data_dir={data_dir}", "--config.compilation_cache_dir=", *args]
    if popen:  # started, not waited for
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def tiny_config(data_dir, **overrides):
    """The smallest real run: IR-v2 (paper) at width 1/16, one block per stage, 75 px, on shapes_textures/tiny."""
    c = load_config(os.path.join(ROOT, "configs/default.py:tiny"))
    c.data.name = "shapes_textures/tiny"
    c.data.data_dir = data_dir
    c.compilation_cache_dir = ""  # tests share JAX_COMPILATION_CACHE_DIR (conftest)
    c.model.block_counts = (1, 1, 1)
    c.train.num_steps = 6
    c.train.batch_size = 8
    c.train.eval_batch_size = 40
    c.train.checkpoint_every_steps = 3
    c.train.probe_every_steps = 3
    c.train.eval_every_steps = None
    # Gentle enough that float reduction-order differences between meshes stay at rounding level over 6 steps
    # (at lr 0.045 a batch of 8 is chaotic: 1e-7 differences grow to 1e-3 by step 4).
    c.train.learning_rate = 0.005
    c.update_from_flattened_dict(overrides)
    return c


def assert_losses_agree_up_to_rounding(losses, reference, what=""):
    """Losses of one run computed another way than `reference` (another device count, other code generation).
    Step 1 starts from the same parameters, so only float32 rounding differs (the order of sums, fused
    multiply-adds: ~1e-7). Every later step starts from parameters that already differ by that rounding, and SGD
    amplifies it: by step 4 it reached 4.6e-5 across meshes and 2.6e-4 across code generations on an AMD EPYC,
    where both stayed under 2e-5 on an Intel Xeon. The bound for those steps is 1e-3, still far below what a real
    difference (BatchNorm per device instead of global, an unaveraged gradient, a wrong kernel) moves the loss
    by."""
    np.testing.assert_allclose(losses[:1], reference[:1], rtol=1e-5, err_msg=f"{what} step 1")
    np.testing.assert_allclose(losses, reference[:len(losses)], rtol=1e-3, err_msg=what)


def train_rows(workdir, split="train"):
    return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def saved_params(workdir):
    import orbax.checkpoint as ocp

    checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1, read_only=True)
    step = checkpoints.latest_step()
    restored = checkpoints.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                        meta=ocp.args.JsonRestore()))
    checkpoints.close()
    return step, jax.tree.map(np.asarray, dict(restored["state"])["params"])


def read_json(*path):
    with open(os.path.join(*path)) as f:
        return json.load(f)


def read_text(*path):
    with open(os.path.join(*path)) as f:
        return f.read()


def tensorboard_sessions(run_dir):
    """The HParams sessions a run folder's event files hold, as their group names (one per session written)."""
    import glob

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata

    names = []
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    content = value.metadata.plugin_data.content
                    names.append(metadata.parse_session_start_info_plugin_data(content).group_name)
    return names
