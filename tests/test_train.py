"""The training loop as a specification: SPMD on 8 simulated devices agrees with 1, exact resume, the run folder
analysis reads, and the modes that do not train. Checkpoints, warm starts, the checks before compiling and the run
folder's refusals have their own modules (test_checkpointing, test_warm_start, test_run_checks, test_run_folder)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.programs import compile_steps
from inception_jax.training.state import restore_or_init
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
    # ... as if killed after logging step 5 (so unfinished: a finished 4-step run is another result, refused): the
    # resumed run must drop that line and recompute it.
    for name in ("result.json", "verdict.json"):
        os.remove(os.path.join(workdir, name))
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


# ---------------------------------------------------------------------------------------------- eval only
def test_eval_only_evaluates_a_checkpoint_with_12_crops(one_device_run, shapes_tiny_dir, tmp_path):
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "eval_only": True, "init_from": one_device_run,
                                             "data.eval_crops": "12"})
    result = train_and_evaluate(config, str(tmp_path / "evaluated"))
    assert result.status == "evaluated" and result.result["num_examples"] == 120
    assert read_json(tmp_path / "evaluated", "eval_result.json")["eval_crops"] == "12"
    assert 0.0 <= result.result["eval_top1"] <= result.result["eval_top5"] <= 1.0
