"""Checkpoints (training/checkpointing.py, restored by training/state.py): a restore onto another device count,
crash-safe saves, damaged checkpoints skipped or refused in one line, and disk space checked before training."""

import errno
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from inception_jax.training.checkpointing import CheckpointError, RunCheckpoints, checkpoint_bytes
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.state import restore_or_init, state_layout
from tests.training_helpers import ROOT, saved_params, tiny_config


def test_restore_on_a_different_device_count(shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "eight_to_one")
    train_and_evaluate(tiny_config(shapes_tiny_dir, **{"train.num_steps": 3}), workdir)  # 8 devices
    step, saved = saved_params(workdir)
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1})
    run = prepare_run(config, workdir)
    checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), every_steps=3, keep=3)
    state, _, meta = restore_or_init(run, checkpoints)
    checkpoints.close()
    assert meta["step"] == step == 3
    assert all(len(a.sharding.device_set) == 1 for a in jax.tree.leaves(state.params))
    restored = jax.tree.leaves(jax.tree.map(np.asarray, state.params))
    assert len(restored) == len(jax.tree.leaves(saved))
    for a, b in zip(jax.tree.leaves(saved), restored):
        np.testing.assert_array_equal(a, b)


def test_a_half_written_checkpoint_is_never_loaded(shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "crashed")
    train_and_evaluate(tiny_config(shapes_tiny_dir, **{"train.num_steps": 3}), workdir)
    # What a crash during the save of step 6 leaves behind: Orbax's temporary directory, garbage inside.
    partial = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234")
    shutil.copytree(os.path.join(workdir, "checkpoints", "3"), partial)
    for root, _, files in os.walk(partial):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(64))
    checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), every_steps=3, keep=3)
    assert checkpoints.latest_step() == 3
    checkpoints.close()


def _truncate_largest_data_file(checkpoint_dir):
    """What a full disk or an interrupted copy leaves: a committed checkpoint whose largest data file is cut short."""
    files = [os.path.join(root, name) for root, _, names in os.walk(checkpoint_dir) for name in names
             if os.sep + "d" + os.sep in os.path.join(root, name)]
    largest = max(files, key=os.path.getsize)
    os.truncate(largest, 1000)


def test_a_damaged_newest_checkpoint_is_skipped_and_kept_aside(one_device_run, shapes_tiny_dir, tmp_path, caplog):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(one_device_run, workdir)  # checkpoints at steps 3 and 6
    _truncate_largest_data_file(os.path.join(workdir, "checkpoints", "6"))
    run = prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), workdir)
    checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), every_steps=3, keep=3)
    with caplog.at_level("WARNING", logger="inception_jax.training.checkpointing"):
        _, _, meta = restore_or_init(run, checkpoints)
    assert meta["step"] == 3 and checkpoints.manager.all_steps() == [3]
    checkpoints.close()
    (kept,) = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
    assert kept.startswith("6-") and os.path.isdir(os.path.join(workdir, "damaged_checkpoints", kept, "state"))
    (line,) = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(rf"checkpoint at step 6 in {workdir}/checkpoints does not restore \(Exception: Encountered "
                        rf"error while reading array index: .{{0,120}}\): skipped, moved to {workdir}/"
                        rf"damaged_checkpoints/{kept}; restored step 3", line), line


def test_when_no_checkpoint_restores_the_error_is_one_line_and_nothing_moves(one_device_run, shapes_tiny_dir,
                                                                             tmp_path):
    workdir = str(tmp_path / "all_damaged")
    shutil.copytree(one_device_run, workdir)
    for step in ("3", "6"):
        _truncate_largest_data_file(os.path.join(workdir, "checkpoints", step))
    run = prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), workdir)
    checkpoints = RunCheckpoints(os.path.join(workdir, "checkpoints"), every_steps=3, keep=3)
    with pytest.raises(CheckpointError) as refused:
        restore_or_init(run, checkpoints)
    checkpoints.close()
    message = str(refused.value)
    assert "\n" not in message and len(message) < 500, message
    assert message.startswith(f"no checkpoint in {workdir}/checkpoints restores (steps [6, 3]; the newest: "
                              "Exception: Encountered error while reading array index")
    assert message.endswith("they are left in place. If they were written by another version of the code or config, "
                            "use another --workdir")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_a_disk_without_room_for_the_checkpoints_is_refused_before_training(shapes_tiny_dir, tmp_path,
                                                                            monkeypatch):
    run = prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), str(tmp_path))
    size = checkpoint_bytes(state_layout(run)[0])
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 3 * size))
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=3, keep=3)
    with pytest.raises(CheckpointError) as refused:
        restore_or_init(run, checkpoints)
    checkpoints.close()
    assert str(refused.value) == (
        f"not enough free space for this run's checkpoints in {tmp_path}/checkpoints: {3 * size / 2**20:,.0f} MiB "
        f"free, 4 x {size / 2**20:,.1f} MiB needed (train.keep_checkpoints=3, plus the one being written); free "
        "space, lower train.keep_checkpoints, or use another --workdir")


@pytest.mark.parametrize("failure, where", [
    (OSError(errno.ENOSPC, "No space left on device"), "save"),
    # How an async save's failure reaches the loop: TensorStore's text in a bare Exception, when the next save
    # waits for the previous one.
    (Exception("RESOURCE_EXHAUSTED: Error writing \"d/3f\": No space left on device [source locations=...]"),
     "wait_until_finished"),
])
def test_a_failed_save_is_one_line_saying_nothing_written_was_lost(tmp_path, monkeypatch, failure, where):
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=1, keep=3)
    checkpoints.save(1, {"w": np.zeros(3, np.float32)}, {"step": 1})
    checkpoints.wait()

    def disk_full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(checkpoints.manager, where, disk_full)
    with pytest.raises(CheckpointError) as failed:
        checkpoints.save(2, {"w": np.ones(3, np.float32)}, {"step": 2})
        checkpoints.wait()
    message = str(failed.value)
    assert message.startswith(f"saving the checkpoint of step 2 to {tmp_path}/checkpoints failed (")
    assert "No space left on device" in message and "\n" not in message
    assert message.endswith("); nothing already written was lost: the checkpoints of steps [1] and the run's metrics "
                            "are intact, and a partial save is never loaded. Free space and rerun the same command "
                            "to resume from step 1")


_FILL_THE_DISK = """
import sys
import numpy as np
from inception_jax.training.checkpointing import CheckpointError, RunCheckpoints
checkpoints = RunCheckpoints(sys.argv[1], every_steps=1, keep=3)
try:
    for step in (1, 2, 3):  # 60 arrays of 80 kB each (random: they do not compress) on a 300 kB file system
        rng = np.random.default_rng(step)
        checkpoints.save(step, {f"w{i}": rng.random(20000, np.float32) for i in range(60)}, {"step": step})
    checkpoints.close()
except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
"""


def test_a_disk_filling_during_a_save_prints_one_line_not_a_thousand(tmp_path):
    """Orbax's threads logged their failures with tracebacks, and TensorStore's pending writes of the failed save
    each printed one for Orbax's closed event loop ("Event loop is closed", or asyncio's "exception was never
    retrieved"): ~1,000 lines after the one that says what is intact. A real full disk: a 300 kB tmpfs, mounted
    in a private mount namespace. The failure is step 1's, though it surfaces when step 2's save waits for it."""
    mount = tmp_path / "small"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"needs `unshare -rm` and a tmpfs mount (util-linux, user namespaces): {probe and probe.stderr}")
    script = tmp_path / "fill.py"
    script.write_text(_FILL_THE_DISK)
    cmd = f"mount -t tmpfs -o size=300k tmpfs {mount} && {sys.executable} {script} {mount}/checkpoints"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, cwd=ROOT,
                          timeout=240, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.fullmatch(r"error: saving the checkpoint of step 1 to .* failed \(\w+: (RESOURCE_EXHAUSTED|\[Errno 28\] "
                        r"No space left).*\); nothing already written was lost: .*\n", proc.stderr)
