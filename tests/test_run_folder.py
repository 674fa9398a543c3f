"""The run folder (training/run_folder.py): a workdir holding another config's run is refused and left intact,
and a workdir in use by another job is not written."""

import os

import pytest

from inception_jax.configuration import ConfigError
from inception_jax.training.loop import train_and_evaluate
from tests.training_helpers import read_text, tiny_config


def test_a_workdir_of_another_config_is_refused_and_left_intact(one_device_run, shapes_tiny_dir):
    before = read_text(one_device_run, "metrics.jsonl")
    config = tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1, "train.learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"holds a run with a different config.*train.learning_rate"):
        train_and_evaluate(config, one_device_run)
    assert read_text(one_device_run, "metrics.jsonl") == before


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
