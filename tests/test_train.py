"""The training loop as a specification: SPMD on 8 simulated devices agrees with 1, exact resume, checkpoints
that survive crashes and device-count changes, the run folder analysis reads, and refusals before compiling."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from inception_jax.configuration import ConfigError
from inception_jax.models import build_model, convert_layout
from inception_jax.pretrained import model_io
from inception_jax.training.checkpointing import CheckpointError, RunCheckpoints, checkpoint_bytes
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import compile_steps
from inception_jax.training.state import restore_or_init, state_layout
from tests.training_helpers import (
    ROOT,
    assert_losses_agree_up_to_rounding,
    read_json,
    read_text,
    saved_params,
    tiny_config,
    train_rows,
)


# ---------------------------------------------------------------------------------------------- the run folder
def test_a_run_writes_the_files_analysis_reads(one_device_run):
    files = set(os.listdir(one_device_run))
    assert {"config.json", "metrics.jsonl", "verdict.json", "result.json", "checkpoints"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    config = read_json(one_device_run, "config.json")
    assert config["derived"]["stage_widths"] == {"a": 24, "b": 72, "c": 134}
    assert config["derived"]["deepest_width"] == 134 and config["derived"]["variant"] == "scale=0.17/0.1/0.2"
    rows = train_rows(one_device_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "accuracy", "lr", "grad_norm", "update_norm", "prepool_zero_frac", "prepool_dead_chan_frac",
                "prepool_mean", "prepool_std", "prepool_max", "feat_energy", "logit_std", "time", "epoch"):
        assert np.isfinite(rows[-1][key]), key
    assert len(rows[-1]["block_ratio/c"]) == 1 and "residual_scale/c" not in rows[-1]  # constant scales
    assert [r["step"] for r in train_rows(one_device_run, "probe")] == [3, 6]
    (final_eval,) = train_rows(one_device_run, "eval")
    assert final_eval["num_examples"] == 120 and {"top1", "top5", "ema_top1", "ema_top5"} <= set(final_eval)
    result = read_json(one_device_run, "result.json")
    # Six steps at lr 0.005 learn nothing measurable: alive, but not called healthy.
    assert result["steps"] == 6 and result["verdict"] == "not_learning" and result["eval_top1"] == final_eval["top1"]
    verdict = read_json(one_device_run, "verdict.json")
    assert verdict["final_eval_top1"] == final_eval["top1"] <= verdict["chance_top1"] < 0.3


def test_a_diverged_run_reports_the_step_of_its_non_finite_loss_in_strict_json(shapes_tiny_dir, tmp_path):
    """Strict JSON readers (jq, JavaScript) refuse a bare NaN: non-finite values of result.json and verdict.json
    are null. The run's steps are those it trained up to the non-finite loss, not the one dispatched after it."""
    workdir = str(tmp_path / "diverged")
    result = train_and_evaluate(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.learning_rate": 1e38,
                                                                "train.grad_clip_norm": 0.0}), workdir)
    rows = train_rows(workdir)
    assert result.status == "diverged" and not np.isfinite(rows[-1]["loss"])
    assert all(np.isfinite(r["loss"]) for r in rows[:-1])
    assert result.steps == rows[-1]["step"]

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")

    stored = json.loads(read_text(workdir, "result.json"), parse_constant=strict)
    assert stored["status"] == "diverged" and stored["steps"] == rows[-1]["step"]
    assert stored["final_train_loss"] is None and stored["verdict"] == "diverged"
    json.loads(read_text(workdir, "verdict.json"), parse_constant=strict)


def test_eight_devices_agree_with_one_data_parallel_and_fsdp(one_device_run, shapes_tiny_dir, tmp_path):
    """A 4 x 2 mesh: the batch split 4 ways, the large parameters and their optimizer state 2 ways (FSDP), so one
    run exercises both kinds of sharding against the one-device reference."""
    reference = [r["loss"] for r in train_rows(one_device_run)]
    config = tiny_config(shapes_tiny_dir, **{"train.num_steps": 4, "mesh.fsdp": 2, "mesh.fsdp_min_size": 256})
    train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in train_rows(str(tmp_path))]
    assert_losses_agree_up_to_rounding(losses, reference[:4], "data 4 x fsdp 2")


def test_resume_after_a_stop_in_the_middle_is_bit_exact(one_device_run, shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "stopped")
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.num_steps": 4})
    train_and_evaluate(config, workdir)  # stops at 4 (checkpoints at 3 and 4) ...
    # ... as if killed after logging step 5: the resumed run must drop that line and recompute it.
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
    train_and_evaluate(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), workdir)
    assert train_rows(workdir) == [{**r, "time": r2["time"], "images_per_sec": r2["images_per_sec"]}
                                   for r, r2 in zip(train_rows(one_device_run), train_rows(workdir))]
    step_a, params_a = saved_params(one_device_run)
    step_b, params_b = saved_params(workdir)
    assert step_a == step_b == 6
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)


def test_sigterm_saves_and_exits_75_then_resumes(one_device_run, shapes_tiny_dir, tmp_path):
    """A preempted job (SIGTERM) saves at the current step and exits 75 (EX_TEMPFAIL: a job array requeues it, and
    tells it from a finished run's 0); rerunning resumes to the same bits."""
    workdir = str(tmp_path / "preempted")
    flags = {"data.name": "shapes_textures/tiny", "data.data_dir": shapes_tiny_dir, "compilation_cache_dir": "",
             "model.block_counts": "(1,1,1)", "train.num_steps": 400, "train.batch_size": 8,
             "train.eval_batch_size": 40, "train.checkpoint_every_steps": 1000, "train.probe_every_steps": 3,
             "train.learning_rate": 0.005, "mesh.num_devices": 1}  # tiny_config's, 400 steps long
    proc = subprocess.Popen([sys.executable, "-m", "inception_jax.main", "--config=configs/default.py:tiny",
                             f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in flags.items())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.time() + 240
    while time.time() < deadline and len(train_rows(workdir)) < 2:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert f"run preempted: {workdir}" in out
    stopped_at, _ = saved_params(workdir)
    assert 2 <= stopped_at < 400
    # Resume to step 6 with the reference's length: identical to the uninterrupted run.
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.checkpoint_every_steps": 1000})
    if stopped_at < 6:
        train_and_evaluate(config, workdir)
        _, params_ref = saved_params(one_device_run)
        _, params = saved_params(workdir)
        jax.tree.map(np.testing.assert_array_equal, params_ref, params)


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


def test_train_step_compiles_once(shapes_tiny_dir, tmp_path):
    run = prepare_run(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), str(tmp_path))
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=100, keep=1)
    state, shardings, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    train_fn, _ = compile_steps(run, shardings)
    from inception_jax.training.sharding import global_batch

    for step in range(3):
        state, _ = train_fn(state, global_batch(run.train_stream.batch(step), run.mesh), run.config.seed)
    assert train_fn._cache_size() == 1


def test_metrics_come_back_as_one_vector_and_unpack_to_the_same_values():
    """The loop fetches a step's metrics in one transfer (train_step.pack_metrics), under their names."""
    import jax.numpy as jnp

    from inception_jax.training.train_step import pack_metrics, unpack_metrics

    metrics = {"loss": jnp.float32(2.5), "lr": jnp.float32(0.045), "zero_frac": jnp.arange(3, dtype=jnp.float32),
               "per_block": {"rms": jnp.ones((2, 2), jnp.bfloat16) / 3}}
    packed, layout = jax.jit(lambda m: pack_metrics(m)[0])(metrics), pack_metrics(metrics)[1]
    assert packed.shape == (9,) and packed.dtype == jnp.float32
    values = unpack_metrics(np.asarray(packed), layout)
    assert jax.tree.structure(values) == jax.tree.structure(metrics)
    for ours, ref in zip(jax.tree.leaves(values), jax.tree.leaves(metrics)):
        np.testing.assert_array_equal(ours, np.asarray(ref, np.float32))
    with pytest.raises(TypeError, match="int32"):
        pack_metrics({"count": jnp.int32(3)})
    with pytest.raises(ValueError, match="do not match"):
        unpack_metrics(np.zeros(4, np.float32), layout)


def test_compile_only_reports_compile_time_and_memory_and_trains_nothing(shapes_tiny_dir, tmp_path):
    result = train_and_evaluate(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "compile_only": True}),
                                str(tmp_path))
    assert result.status == "compiled" and result.steps == 0
    report = read_json(str(tmp_path), "compile_report.json")
    assert report == result.result and report["compile_seconds"] > 0 and report["temp_size_in_bytes"] > 0
    assert not os.path.exists(tmp_path / "checkpoints") and not os.path.exists(tmp_path / "metrics.jsonl")


def test_global_norms_are_computed_on_log_steps_only_and_are_exact_there(shapes_tiny_dir, tmp_path):
    """A step whose metrics are never fetched skips the three full reads of gradients, updates and parameters."""
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.num_steps": 5,
                                             "train.log_dense_steps": 0, "train.log_every_steps": 2})
    run = prepare_run(config, str(tmp_path))
    checkpoints = RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=100, keep=1)
    state, shardings, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    train_fn, _ = compile_steps(run, shardings)
    from inception_jax.training.sharding import global_batch
    from inception_jax.training.train_step import is_log_step

    assert [s for s in range(1, 6) if is_log_step(s, run.step_cfg.log_schedule)] == [2, 4, 5]
    for step in (1, 2):
        before = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
        state, metrics = train_fn(state, global_batch(run.train_stream.batch(step - 1), run.mesh), run.config.seed)
        after = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
        norms = {k: float(metrics[k]) for k in ("grad_norm", "update_norm", "param_norm")}
        if step == 1:  # not a log step
            assert all(np.isnan(v) for v in norms.values()), norms
            continue
        delta = jax.tree.map(lambda a, b: a.astype(np.float64) - b, after, before)
        np.testing.assert_allclose(norms["update_norm"], np.sqrt(sum(np.sum(d ** 2) for d in jax.tree.leaves(delta))),
                                   rtol=1e-4)
        np.testing.assert_allclose(norms["param_norm"],
                                   np.sqrt(sum(np.sum(p.astype(np.float64) ** 2) for p in jax.tree.leaves(after))),
                                   rtol=1e-5)
        assert np.isfinite(norms["grad_norm"]) and norms["grad_norm"] > 0


def test_logged_throughput_spans_the_steps_between_log_steps_not_the_writes():
    """The images/s of a log step is measured between the times the log steps' calls returned. Two writes can
    follow each other at once (an eval or a save flushes right away; steps run inline finished long before their
    deferred write), and must not read as a near-zero interval."""
    from types import SimpleNamespace

    from inception_jax.training.clock import Clock
    from inception_jax.training.loop import TrainLog

    class Writer:
        def write(self, step, split, values, **extra):
            return {"step": step, **extra, **values}

    run = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(batch_size=32, log_every_steps=10,
                                                                     stop_when_dead_windows=0)),
                          num_steps=100, steps_per_epoch=10)
    values = {"loss": 1.0, "accuracy": 0.5, "lr": 0.1, "loss_finite": 1.0}
    train_log = TrainLog(Writer(), run, Clock(0.0), [], 0, fetch=lambda metrics: metrics)
    start = train_log.last[1]
    for step, returned in ((10, start + 2.0), (11, start + 2.25)):  # written back to back below
        train_log.pending = (step, values, returned)
        assert train_log.flush() == "finished"
    first, second = train_log.history
    assert first["images_per_sec"] == pytest.approx(10 * 32 / 2.0)
    assert second["images_per_sec"] == pytest.approx(32 / 0.25)


# ---------------------------------------------------------------------------------------------- init_from
def test_init_from_a_run_replaces_the_classifier_when_classes_differ(one_device_run, shapes_tiny_dir, tmp_path):
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "init_from": one_device_run,
                                             "init_from_ema": False, "model.num_classes": 12})
    run = prepare_run(config, str(tmp_path / "finetune"))
    checkpoints = RunCheckpoints(str(tmp_path / "finetune" / "checkpoints"), every_steps=100, keep=1)
    state, _, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    _, source = saved_params(one_device_run)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))
    np.testing.assert_array_equal(params["stem"]["conv1a"]["conv"]["kernel"],
                                  source["stem"]["conv1a"]["conv"]["kernel"]["value"])
    assert params["head"]["fc"]["kernel"].shape[-1] == 12
    assert int(state.step) == 0


def test_init_from_an_exported_model(shapes_tiny_dir, tmp_path):
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1})
    run = prepare_run(config, str(tmp_path / "probe"))
    exported = build_model(run.opts, rngs=nnx.Rngs(7))  # other weights than the run's own seed draws
    model_io.save_model(tmp_path / "exported", convert_layout(exported, scan_blocks=False))
    config.init_from = str(tmp_path / "exported")
    run = prepare_run(config, str(tmp_path / "from_exported"))
    checkpoints = RunCheckpoints(str(tmp_path / "from_exported" / "checkpoints"), every_steps=100, keep=1)
    state, _, _ = restore_or_init(run, checkpoints)
    checkpoints.close()
    np.testing.assert_array_equal(np.asarray(state.params["head"]["fc"]["kernel"][...]),
                                  np.asarray(exported.head.fc.kernel[...]))
    np.testing.assert_array_equal(np.asarray(state.params["blocks_b"]["up"]["kernel"][...]),
                                  np.asarray(exported.blocks_b.up.kernel[...]))


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("overrides, message", [
    ({"train.batch_size": 12}, r"train.batch_size=12 is not divisible by the 8 devices"),
    ({"train.optimizer": "adam"}, r"train.optimizer='adam' is not one of \['rmsprop', 'sgd', 'adamw'\]"),
    ({"train.lr_schedule": "cosin"}, r"did you mean 'cosine'"),
    ({"train.num_steps": -5}, r"train.num_steps=-5 must be a positive number"),
    ({"train.num_epochs": 2.0}, r"set exactly one of num_steps, num_epochs, num_examples"),
    ({"train.eval_every_steps": 50}, r"train.eval_every_steps=50 is larger than the run \(6 steps\)"),
    ({"init_from": "/nonexistent/run"}, r"init_from='/nonexistent/run' is neither an exported model"),
    ({"data.image_size": 60}, r"image_size=60.* below 75"),
    ({"model.width_multiplier": 0.001}, r"width_multiplier=0.001 leaves"),
    ({"train.batch_size": 1024}, r"train.batch_size=1024 is larger than data.train_split='train' of "
                                 r"'shapes_textures/tiny' \(480 examples in .*\); use at most 480"),
    # The eval split is read only at the first evaluation: checked before training all the same.
    ({"train.eval_batch_size": 200}, r"train.eval_batch_size=200 is larger than data.eval_split='validation' of "
                                     r"'shapes_textures/tiny' \(120 examples in .*\); use at most 120"),
    ({"train.eval_batch_size": None, "data.eval_split": "validation[:4]"},
     r"train.batch_size=8 \(the eval batch too, as train.eval_batch_size is None\) is larger than "
     r"data.eval_split='validation\[:4\]' .*\(4 examples"),
    ({"model.num_classes": 0}, r"model.num_classes=0 does not fit dataset 'shapes_textures/tiny', whose labels take "
                               r"10 classes; use None \(the dataset's count\) or a count >= 10"),
    ({"model.num_classes": 9}, r"model.num_classes=9 does not fit dataset"),
    ({"data.name": "shapes_texture"}, r"shapes_texture"),
    ({"train.ema_decay": 1.0}, r"train.ema_decay=1.0 must be in \[0, 1\)"),
])
def test_bad_configs_are_refused_before_compiling(shapes_tiny_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(shapes_tiny_dir, **overrides), str(tmp_path / "refused"))
    assert not os.path.exists(tmp_path / "refused" / "metrics.jsonl")


def test_a_workdir_of_another_config_is_refused_and_left_intact(one_device_run, shapes_tiny_dir):
    before = read_text(one_device_run, "metrics.jsonl")
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"holds a run with a different config.*train.learning_rate"):
        train_and_evaluate(config, one_device_run)
    assert read_text(one_device_run, "metrics.jsonl") == before


def test_a_finished_run_asked_for_another_length_is_refused_then_rerun_on_request(one_device_run, shapes_tiny_dir,
                                                                                   tmp_path):
    """Issue #33: a finished run asked for fewer steps re-reported its old result; asked for more, it resumed
    and its schedule jumped, config.json still giving the old length. Both are refused; --rerun_changed moves the
    old run into <workdir>/replaced/<UTC time>/ and starts again."""
    from inception_jax.sweeps.sweep import run_from_flags

    workdir = str(tmp_path / os.path.basename(one_device_run))  # the same run_id (the folder's name)
    shutil.copytree(one_device_run, workdir)  # 6 steps, finished
    before = read_text(workdir, "result.json")
    for steps in (2, 8):
        config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.num_steps": steps})
        with pytest.raises(ConfigError) as refused:
            train_and_evaluate(config, workdir)
        assert str(refused.value) == (
            f"workdir {workdir} holds a run with a different config; refusing to resume it with this one (finished: "
            f"training length: stored 6 steps, now {steps}). Use another --workdir, the stored config, or "
            f"--rerun_changed to move it to {workdir}/replaced/<UTC time>/ and start again")
    assert read_text(workdir, "result.json") == before
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.num_steps": 2})
    status = run_from_flags(config, config_arg=os.path.join(ROOT, "configs/default.py:tiny"), workdir=workdir,
                            row=None, rows_csv=None, export_csv=None, print_commands=False, rerun_changed=True)
    (replaced,) = os.listdir(os.path.join(workdir, "replaced"))
    assert status == 0 and read_text(workdir, "replaced", replaced, "result.json") == before
    assert read_json(workdir, "result.json")["steps"] == 2 and read_json(workdir, "config.json")["derived"][
        "num_steps"] == 2


def test_an_unfinished_cosine_run_asked_for_another_length_is_refused(shapes_tiny_dir, tmp_path):
    """A cosine schedule is laid out over the run's length: resumed at another length, its rate would jump."""
    from inception_jax.training.run_folder import config_record, stored_run_difference

    config = tiny_config(shapes_tiny_dir, **{"train.lr_schedule": "cosine"})
    record = config_record(config, run_id="run", num_classes=10)
    (tmp_path / "config.json").write_text(json.dumps({**record, "derived": {"num_steps": 4}}))
    assert stored_run_difference(str(tmp_path), record, 4) == ""
    assert stored_run_difference(str(tmp_path), record, 8) == (
        "unfinished: training length: stored 4 steps, now 8 (the cosine schedule is laid out over it)")
    staircase = {**record, "train": {**record["train"], "lr_schedule": "staircase"}}
    (tmp_path / "config.json").write_text(json.dumps({**staircase, "derived": {"num_steps": 4}}))
    assert stored_run_difference(str(tmp_path), staircase, 8) == ""  # train longer: the rate at a step is the same


def test_a_workdir_in_use_is_not_written_by_a_second_job(shapes_tiny_dir, tmp_path):
    import fcntl

    workdir = tmp_path / "busy"
    workdir.mkdir()
    fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another job holds it
    try:
        with pytest.raises(ConfigError, match=r"is in use by another running job"):
            train_and_evaluate(tiny_config(shapes_tiny_dir), str(workdir))
    finally:
        os.close(fd)
    assert os.listdir(workdir) == [".lock"]


def test_eval_only_evaluates_a_checkpoint_with_12_crops(one_device_run, shapes_tiny_dir, tmp_path):
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "eval_only": True, "init_from": one_device_run,
                                             "data.eval_crops": "12"})
    result = train_and_evaluate(config, str(tmp_path / "evaluated"))
    assert result.status == "evaluated" and result.result["num_examples"] == 120
    assert read_json(tmp_path / "evaluated", "eval_result.json")["eval_crops"] == "12"
    assert 0.0 <= result.result["eval_top1"] <= result.result["eval_top5"] <= 1.0
