"""Every shipped config loads, validates and documents its command; arguments are parsed strictly."""

import os
import subprocess
import sys

import pytest

from inception_jax.config_files import config_module, load_config
from inception_jax.configuration import base_config, model_knobs, resume_conflicts, validate_static
from inception_jax.models import MODEL_NAMES, model_options, stage_widths
from inception_jax.sweeps.sweep_rows import SweepRow, validate_rows
from inception_jax.validation import ConfigError
from tests.training_helpers import ROOT

SPECS = ["configs/default.py", "configs/default.py:tiny", *(f"configs/ablation_scale.py:preset={p}" for p in
         ("cpu", "cpu_long", "gpu", "imagenet", "tiny")), *(f"configs/paper.py:model={m}" for m in MODEL_NAMES),
         "configs/paper.py:model=inception_v4,eval_only=true,batch=256", "configs/width_threshold.py"]


@pytest.mark.parametrize("spec", SPECS)
def test_config_loads_and_validates(spec):
    config = load_config(os.path.join(ROOT, spec))
    validate_static(config)
    model_options(config.model.name, num_classes=1000, **model_knobs(config.model))
    with open(os.path.join(ROOT, spec.split(":")[0])) as f:
        assert "python -m inception_jax.main --config=" + spec.split(":")[0] in f.read()


@pytest.mark.parametrize("preset", ["cpu", "cpu_long", "gpu", "imagenet", "tiny"])
def test_every_preset_of_the_main_job_sweeps_the_filter_counts_its_rows_name(preset):
    """Each row validates, and its network's deepest (C) stage is as wide as its run_id's `w<filters>` says."""
    spec = os.path.join(ROOT, f"configs/ablation_scale.py:preset={preset}")
    rows = [SweepRow(run_id, dict(overrides))
            for run_id, overrides in config_module(spec.split(":")[0]).get_sweep(f"preset={preset}")]
    configs = validate_rows(load_config(spec), rows)
    built = {}
    for row, config in zip(rows, configs, strict=True):
        named = int(row.run_id.split("_")[0][1:])
        if named not in built:
            opts = model_options(config.model.name, num_classes=10, **model_knobs(config.model))
            built[named] = stage_widths(opts)["c"]
        assert built[named] == named, row.run_id
    assert len(built) >= 2


def test_the_width_threshold_sweep_keeps_its_own_recipe():
    """Its results (README, "The width threshold") were made with constant rates over 300 steps: a change to the main
    job's recipe, which it otherwise shares, must not change what the documented command reruns."""
    config = load_config(os.path.join(ROOT, "configs/width_threshold.py"))
    assert (config.train.lr_schedule, config.train.num_steps, config.train.optimizer) == ("constant", 300, "sgd")
    assert (config.train.grad_clip_norm, config.train.probe_every_steps, config.train.batch_size) == (0.0, 25, 32)


def test_paper_config_scales_the_learning_rate_with_the_batch():
    config = load_config(os.path.join(ROOT, "configs/paper.py:model=inception_v4,batch=640"))
    assert config.train.learning_rate == pytest.approx(0.045) and config.train.optimizer == "rmsprop"
    assert config.data.name == "imagenet2012" and config.data.image_size == 299


@pytest.mark.parametrize("spec, message", [
    ("configs/ablation_scale.py:preset=laptop", r"preset must be one of \['cpu', .*\] \(got 'laptop'\)"),
    ("configs/ablation_scale.py:seeds=two", r"seeds must be an integer >= 1 \(got 'two'\)"),
    ("configs/ablation_scale.py:preset=cpu,sedes=2", r"key 'sedes' is unknown \(did you mean 'seeds'\?\)"),
    ("configs/paper.py:model=resnet50", r"model must be one of \['inception_v4', .*\] \(got 'resnet50'\)"),
    ("configs/default.py:huge", r"size must be one of \['default', 'tiny'\] \(got 'huge'\)"),
])
def test_config_arguments_are_parsed_strictly(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config(os.path.join(ROOT, spec))


@pytest.mark.parametrize("flag, message", [
    ("--config=configs/ablation_scale.py:seeds=abc",
     "error: configs/ablation_scale.py:seeds=abc: seeds must be an integer >= 1 (got 'abc')"),
    # 0 used to mean the preset's count silently, -1 to say only "the sweep has no rows".
    ("--config=configs/ablation_scale.py:seeds=0",
     "error: configs/ablation_scale.py:seeds=0: seeds must be an integer >= 1 (got '0')"),
    ("--config=configs/ablation_scale.py:seeds=-1",
     "error: configs/ablation_scale.py:seeds=-1: seeds must be an integer >= 1 (got '-1')"),
    ("--config=configs/ablation_scale.py:preset=nosuch", "error: configs/ablation_scale.py:preset=nosuch: preset must "
     "be one of ['cpu', 'cpu_long', 'gpu', 'imagenet', 'tiny'] (got 'nosuch')"),
    ("--config=configs/nosuch.py", "error: configs/nosuch.py: no such file; config files: "
     "['configs/ablation_scale.py', 'configs/default.py', 'configs/paper.py', 'configs/width_threshold.py']"),
    ("--config={tmp}/broken.py:tiny", "error: {tmp}/broken.py line 2: invalid syntax (return = 1)"),
])
def test_a_config_mistake_is_one_line_and_exit_status_2(tmp_path, flag, message):
    """Before any flag reaches absl (which printed these inside 10 to 60 lines of traceback, with status 1)."""
    (tmp_path / "broken.py").write_text("def get_config(arg=None):\n    return = 1\n")
    proc = subprocess.run([sys.executable, "-m", "inception_jax.main", flag.format(tmp=tmp_path),
                           f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, message.format(tmp=tmp_path) + "\n", "")
    assert not os.path.exists(tmp_path / "w")


def test_a_knob_added_since_a_run_was_stored_blocks_its_resume_only_when_set():
    """A run stored before `model.remat_blocks` existed ran without it: resuming it with the default is the
    same run, resuming it with the knob on is not."""
    stored = base_config().to_dict()
    del stored["model"]["remat_blocks"]
    assert resume_conflicts(stored, base_config().to_dict()) == []
    changed = base_config()
    changed.model.remat_blocks = True
    assert resume_conflicts(stored, changed.to_dict()) == ["model.remat_blocks: stored None, now True"]
    changed.train.batch_size = 7
    assert "train.batch_size: stored 32, now 7" in resume_conflicts(stored, changed.to_dict())


@pytest.mark.parametrize("key, value, message", [
    # 1e308 is a Python float but infinity in float32: it was accepted and diverged at step 2.
    ("train.learning_rate", 1e308, "train.learning_rate=1e+308 is not finite in float32; it must be a number >= 0 up "
                                   "to 3.402823e+38 (float32's largest: training computes in float32)"),
    # inf was refused as "must be a number >= 0", which it is.
    ("train.learning_rate", float("inf"), "train.learning_rate=inf is not finite; it must be a number >= 0 up to "
                                          "3.402823e+38 (float32's largest: training computes in float32)"),
    ("train.momentum", float("nan"), "train.momentum=nan is not finite; it must be a number >= 0 up to"),
    ("train.rmsprop_eps", -1e39, "train.rmsprop_eps=-1e+39 is not finite in float32"),
    ("train.weight_decay", 4e38, "train.weight_decay=4e+38 is not finite in float32"),
    ("train.lr_decay_epochs", 0.0, "train.lr_decay_epochs=0.0 must be a number > 0"),
])
def test_numbers_that_feed_float32_must_be_finite_in_float32(key, value, message):
    config = load_config(os.path.join(ROOT, "configs/default.py:tiny"))
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError) as refused:
        validate_static(config)
    assert str(refused.value).startswith(message)
    config.update_from_flattened_dict({key: 3.4e38 if key != "train.lr_decay_epochs" else 0.5})
    validate_static(config)  # the largest float32s are allowed
