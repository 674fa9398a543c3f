"""The run folder (training/run_folder.py): a workdir holding another config's run (another length included) is
refused and left intact, or moved aside on request, and a workdir in use by another job is not written."""

import json
import os
import shutil

import pytest

from inception_jax.training.loop import train_and_evaluate
from inception_jax.validation import ConfigError
from tests.training_helpers import ROOT, read_json, read_text, tiny_config


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


def test_a_finished_run_asked_for_another_length_is_refused_then_rerun_on_request(one_device_run, shapes_tiny_dir,
                                                                                   tmp_path):
    """Issue #33: a finished run asked for fewer steps re-reported its old result; asked for more, it resumed
    and its schedule jumped, config.json still giving the old length. Both are refused; --rerun_changed moves the
    old run into <workdir>/replaced/<UTC time>/ and starts again."""
    from inception_jax.sweeps.main_job import run_from_flags

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
