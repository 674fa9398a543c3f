"""A sweep as DataFrames (analysis.frames) on synthetic run folders with known numbers (analysis.synthetic_runs).

With the 10-line trailing mean, a run whose train accuracy jumps at step L first reaches 0.3 at L + 2; each step
takes 0.5 s; eval top-1 is 0.75 from the first eval step after L on.
"""

import json
import math

import pandas as pd
import pytest

from analysis.frames import load_curves, load_sweep
from analysis.synthetic_runs import SyntheticRun, write_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    specs = [SyntheticRun("w64_plain", 64, "plain", learn_step=40),
             SyntheticRun("w64_s0.3", 64, "scale=0.3", learn_step=10, eval_every=10),
             SyntheticRun("w256_s1.0", 256, "scale=1.0", seed=1, death_step=12),
             SyntheticRun("w256_diverged", 256, "scale=1.0", seed=2, learn_step=15, diverge_step=30),
             SyntheticRun("w256_running", 256, "learnable", finished=False)]
    root = write_sweep(tmp_path_factory.mktemp("sweep"), specs, missing=["never_started"])
    config_path = root / "runs" / "w64_s0.3" / "config.json"  # a knob only one row of the spreadsheet sets
    config = json.loads(config_path.read_text())
    config["sweep"]["overrides"]["model.residual_scale"] = 0.3
    config_path.write_text(json.dumps(config))
    (root / "replaced" / "w64_plain-20250101").mkdir(parents=True)  # moved aside by --rerun_changed: never read
    (root / "replaced" / "w64_plain-20250101" / "config.json").write_text("{}")
    return root


def test_load_sweep_has_one_row_per_run_folder_with_its_facts(sweep):
    runs = load_sweep(sweep).set_index("run_id")
    assert list(runs.index) == ["w64_plain", "w64_s0.3", "w256_s1.0", "w256_diverged", "w256_running"]  # sweep.json
    plain, scaled, died, diverged, running = (runs.loc[name] for name in (
        "w64_plain", "w64_s0.3", "w256_s1.0", "w256_diverged", "w256_running"))
    assert (plain["status"], plain["verdict"], plain["variant"], plain["variant_name"]) == (
        "finished", "healthy", "plain", "plain")
    assert (scaled["variant"], scaled["variant_name"], scaled["deepest_width"]) == (
        "scale=0.3", "residual, scale 0.3", 64)
    assert running["variant_name"] == "residual, learnable scale"
    assert (scaled["steps"], scaled["wall_time_s"], scaled["eval_top1"]) == (60, 30.0, 0.75)
    assert (died["verdict"], died["t_death"], died["seed"]) == ("died", 12, 1)
    assert (diverged["status"], diverged["verdict"], diverged["steps"]) == ("diverged", "diverged", 30)
    assert math.isnan(diverged["final_train_loss"])
    assert running["status"] == "partial" and "unfinished or still running" in running["notes"]
    assert pd.isna(running["verdict"]) and running["model"] == "inception_resnet_v2"
    # Overrides: the config's sweep.overrides, one column per key, right after run_id (seed has its own column).
    assert runs.columns[0] == "model.residual_scale" and runs["seed"].tolist() == [0, 0, 1, 2, 0]
    assert scaled["model.residual_scale"] == 0.3 and math.isnan(plain["model.residual_scale"])
    # Steps to thresholds: train accuracy (trailing mean) and eval top-1, NA where not reached.
    assert plain["steps_to_train_acc_0.3"] == 42 and plain["seconds_to_train_acc_0.3"] == 21.0
    assert scaled["steps_to_eval_top1_0.5"] == 10 and pd.isna(plain["steps_to_eval_top1_0.5"])
    assert pd.isna(died["steps_to_train_acc_0.3"])
    assert str(runs["steps_to_train_acc_0.3"].dtype) == "Int64"


def test_load_sweep_keeps_the_given_run_ids_in_their_order(sweep):
    frame = load_sweep(sweep / "runs", run_ids=["w64_s0.3", "never_started", "w64_plain"], thresholds=(0.5,))
    assert frame["run_id"].tolist() == ["w64_s0.3", "w64_plain"]
    assert "steps_to_train_acc_0.5" in frame and "steps_to_train_acc_0.3" not in frame
    assert frame.to_csv(index=False).splitlines()[1].startswith(
        "w64_s0.3,0.3,finished,0,inception_resnet_v2,shapes_textures,64,scale=0.3,\"residual, scale 0.3\",healthy,60,")


def test_load_curves_is_long_format_with_every_scalar(sweep):
    curves = load_curves(sweep)
    assert list(curves.columns) == ["run_id", "split", "step", "time", "metric", "value"]
    loss = curves.query("run_id == 'w64_plain' and split == 'train' and metric == 'loss'")
    assert loss["step"].tolist() == list(range(1, 61)) and loss["value"].iloc[-1] == 0.8
    assert loss["time"].iloc[-1] == 30.0
    top1 = curves.query("run_id == 'w64_s0.3' and metric == 'top1'")
    assert top1["split"].unique().tolist() == ["eval"] and top1["step"].tolist() == [10, 20, 30, 40, 50, 60]
    diverged = curves.query("run_id == 'w256_diverged' and metric == 'loss'")
    assert diverged["step"].max() == 30 and math.isnan(diverged["value"].iloc[-1])
    assert "w256_running" in set(curves["run_id"])  # partial runs: their curves so far
    assert not curves["metric"].str.startswith("block_ratio").any()  # per-block lists are left out
    wide = curves.query("split == 'train'").pivot_table(index=["run_id", "step"], columns="metric", values="value")
    assert wide.loc[("w256_s1.0", 60), "prepool_zero_frac"] == 0.999


def test_loaders_name_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: not a directory"):
        load_sweep(tmp_path / "nowhere")
