"""Warm starts (training/warm_start.py, `init_from`): from another run, with a new classifier when the classes
differ, and from an exported model."""


import jax
import numpy as np
from flax import nnx

from inception_jax.models import build_model, convert_layout
from inception_jax.pretrained import model_io
from inception_jax.training.checkpointing import RunCheckpoints
from inception_jax.training.prepared_run import prepare_run
from inception_jax.training.state import restore_or_init
from tests.training_helpers import saved_params, tiny_config


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
