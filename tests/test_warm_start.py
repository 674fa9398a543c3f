"""Warm starts (training/warm_start.py, `init_from`): from another run, with a new classifier when the classes
differ, and from an exported model."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from inception_jax.models import build_model, convert_layout
from inception_jax.pretrained import model_io
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.loop import train_and_evaluate
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.state import restore_or_init
from inception_jax.validation import ConfigError
from tests.training_helpers import read_json, saved_params, tiny_config


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


def test_init_from_a_sweep_rows_run_folder(one_device_run, shapes_tiny_dir, tmp_path):
    """A sweep row's config.json records its overrides under dotted keys ('model.use_residual'), which a ConfigDict
    refuses: init_from any ablation_scale row failed with a traceback, leaving an empty run folder."""
    from inception_jax.training.warm_start import restore_run_weights

    row = tmp_path / "w268_plain"
    shutil.copytree(one_device_run, row)
    record = read_json(str(row), "config.json")
    record["sweep"] = {"name": "ablation_scale", "row": "w268_plain",
                       "overrides": {"model.use_residual": True, "model.filters": None, "seed": 0}}
    (row / "config.json").write_text(json.dumps(record))
    _, variables = restore_run_weights(str(row), use_ema=False)
    _, saved = saved_params(one_device_run)
    np.testing.assert_array_equal(variables["params"]["head"]["fc"]["kernel"], saved["head"]["fc"]["kernel"]["value"])
    # A failing init_from (here: a run folder without a complete checkpoint) leaves no run folder behind.
    (row / "checkpoints").rename(tmp_path / "moved")
    (row / "checkpoints").mkdir()
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "init_from": str(row)})
    with pytest.raises(ConfigError, match="the run has no complete checkpoint"):
        train_and_evaluate(config, str(tmp_path / "finetune"))
    assert not os.path.exists(tmp_path / "finetune")
