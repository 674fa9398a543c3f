"""A real two-process `jax.distributed` run on localhost (gloo, one CPU device per process) trains like the
single-process run, up to the rounding of the cross-device sums (gloo's all-reduce sums in its own order: its step 1
loss differs from one process's, with one device or two, in the 7th digit)."""

import os
import socket
import subprocess
import sys
import time

from tests.training_helpers import ROOT, assert_losses_agree_up_to_rounding, tiny_config, train_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(one_device_run, shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "two_processes")
    config = tiny_config(shapes_tiny_dir, **{"train.num_steps": 4})
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # no simulated devices: 1 per process
    env["PYTHONPATH"] = ROOT
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "distributed_worker.py"), str(i), "2",
                               port, config.to_json(), workdir], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=ROOT) for i in range(2)]
    deadline, outs = time.time() + 400, []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=max(1, deadline - time.time()))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL: jax.distributed swallows SIGTERM (docs/libraries.md T7)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "process 0/2 devices 2 status finished" in outs[0] and "process 1/2 devices 2 status finished" in outs[1]
    losses = [r["loss"] for r in train_rows(workdir)]
    assert_losses_agree_up_to_rounding(losses, [r["loss"] for r in train_rows(one_device_run)], "vs one device")
