"""The checks before anything compiles (training/run_checks.py, configuration.validate_static): every bad config
is refused in one line naming the key, the value and what is allowed, and nothing is written."""

import os

import pytest

from inception_jax.training.loop import train_and_evaluate
from tests.training_helpers import tiny_config


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


@pytest.mark.parametrize("overrides, message", [
    ({"train.eval_every_steps": 10}, r"train.eval_every_steps=10 is larger than the run \(6 steps\)"),
    ({"train.num_steps": None}, r"set exactly one of num_steps, num_epochs, num_examples; got none"),
    ({"model.width_multiplier": 0.001}, r"width_multiplier=0.001 leaves"),
    ({"data.image_size": 60}, r"image_size=60.* below 75"),
    ({"train.batch_size": 12}, r"train.batch_size=12 is not divisible by the 8 devices"),
    ({"init_from": "/nonexistent/run"}, r"init_from='/nonexistent/run' is neither"),
])
def test_config_mistakes_are_refused_before_the_dataset_is_prepared(tmp_path, overrides, message):
    """Checks of the config alone come first: a 4-step run prepared its 21 s dataset, then refused
    eval_every_steps=10."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(tiny_config(str(data_dir), **overrides), str(tmp_path / "refused"))
    assert os.listdir(data_dir) == [] and not os.path.exists(tmp_path / "refused")
