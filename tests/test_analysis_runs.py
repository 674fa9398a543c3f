"""Loading run folders, grouping them, and the numbers behind the curves (analysis.runs/grouping/curves/verdicts)."""

import json
import math

import numpy as np
import pytest

from analysis.curves import Crossing, RunSeries, first_crossing, moving_mean, run_series, seed_band
from analysis.grouping import group_runs, variant_order
from analysis.runs import load_runs, read_metrics
from analysis.synthetic_runs import SyntheticRun, example_specs, write_run, write_sweep
from analysis.verdicts import combine_verdicts, format_counts


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("sweep"), example_specs(), missing=["w1024_s1.0"])


def test_moving_mean_counts_log_lines_and_stops_at_non_finite_values():
    values = np.array([1.0, 2.0, 3.0, 4.0, math.nan, 6.0, 7.0])
    np.testing.assert_array_equal(moving_mean(values, 2), [1.0, 1.5, 2.5, 3.5, math.nan, math.nan, 6.5])
    np.testing.assert_array_equal(moving_mean(values[:4], 3, full_windows_only=True), [math.nan, math.nan, 2.0, 3.0])
    with pytest.raises(ValueError, match="window=0"):
        moving_mean(values, 0)


def test_first_crossing_ignores_nan_and_reports_step_and_seconds():
    steps, times = np.array([5, 10, 15]), np.array([1.0, 2.0, 3.0])
    assert first_crossing(steps, times, np.array([math.nan, 0.5, 0.9]), 0.5) == Crossing(10, 2.0)
    assert first_crossing(steps, times, np.array([0.1, math.nan, 0.2]), 0.5).step is None


def test_seed_band_is_mean_and_min_max_over_the_seeds_with_a_value():
    a = run_like(steps=[1, 2, 3], times=[1.0, 2.0, 3.0], values=[1.0, 2.0, 3.0])
    b = run_like(steps=[2, 3, 4], times=[4.0, 6.0, 8.0], values=[4.0, math.nan, 8.0])
    band = seed_band([a, b])
    np.testing.assert_array_equal(band.steps, [1, 2, 3, 4])
    np.testing.assert_array_equal(band.mean, [1.0, 3.0, 3.0, 8.0])
    np.testing.assert_array_equal(band.low, [1.0, 2.0, 3.0, 8.0])
    np.testing.assert_array_equal(band.high, [1.0, 4.0, 3.0, 8.0])
    np.testing.assert_array_equal(band.count, [1, 2, 1, 1])
    np.testing.assert_array_equal(band.times, [1.0, 3.0, 3.0, 8.0])  # time is averaged over the same seeds
    assert band.seeds == 2


def run_like(steps, times, values):
    return RunSeries(np.array(steps), np.array(times), np.array(values))


def test_read_metrics_tolerates_truncated_malformed_and_repeated_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "split": "train", "time": 0.1, "loss": 2.0, "new_key": {"x": 1}},
             {"step": 2, "split": "train", "time": 0.2, "loss": 1.5},
             {"step": 2, "split": "eval", "time": 0.2, "top1": 0.4},
             {"step": 2, "split": "train", "time": 0.3, "loss": 1.4},  # logged again after a resume: this one wins
             {"step": 3, "split": "train", "time": 0.4, "loss": float("nan")}]
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\nnot json\n"
    text += "\n".join(json.dumps(line) for line in lines[2:]) + '\n{"step": 4, "split": "tr'
    path.write_text(text)
    logs, warnings = read_metrics(path)
    np.testing.assert_array_equal(logs["train"].steps, [1, 2, 3])
    np.testing.assert_array_equal(logs["train"].scalar("loss"), [2.0, 1.4, math.nan])
    np.testing.assert_array_equal(logs["train"].times, [0.1, 0.3, 0.4])
    assert logs["eval"].scalar("top1").tolist() == [0.4]
    assert any("truncated last line" in w for w in warnings)
    assert any("1 malformed line" in w for w in warnings)


def test_load_runs_uses_finished_and_diverged_runs_and_lists_the_rest(tmp_path):
    sweep = write_sweep(tmp_path, example_specs(), missing=["w1024_s1.0"])
    (sweep / "runs" / "empty_folder").mkdir()
    (sweep / "runs" / "bad_config").mkdir()
    (sweep / "runs" / "bad_config" / "config.json").write_text("{not json")
    no_metrics = write_run(sweep / "runs", SyntheticRun("no_metrics", 64, "plain"))
    (no_metrics / "metrics.jsonl").unlink()
    starting = write_run(sweep / "runs", SyntheticRun("just_started", 64, "plain", finished=False))
    (starting / "metrics.jsonl").write_text('{"step": 1, "split": "tr')
    run_set = load_runs(sweep)
    used = {run.label for run in run_set.runs}
    assert len(used) == 14 and "w256_s1.0_seed2" in used  # diverged, no result.json: still used
    skipped = {s.label: (s.status, s.reason) for s in run_set.skipped}
    assert skipped["runs/w64_s0.3_partial"] == ("partial", "unfinished or still running: last logged step 60 of 60")
    assert skipped["runs/w1024_s1.0"] == ("missing", "listed in sweep.json but has no run folder")
    assert skipped["runs/empty_folder"] == ("invalid", "no config.json")
    assert skipped["runs/bad_config"][0] == "invalid" and "config.json unreadable" in skipped["runs/bad_config"][1]
    assert skipped["runs/no_metrics"] == ("invalid", "no metrics.jsonl")  # it has result.json: broken
    assert skipped["runs/just_started"] == ("partial", "metrics.jsonl has no complete log line")
    runs = {run.label: run for run in run_set.runs}
    assert runs["w256_learnable"].verdict_name == "healthy"  # from result.json, as verdict.json is missing
    assert "no verdict.json" in runs["w256_learnable"].warnings
    assert any("truncated" in w for w in runs["w64_s1.0"].warnings)
    assert len(runs["w64_s1.0"].train) == 60
    assert [s["name"] for s in run_set.sweeps] == ["synthetic"]


def test_load_runs_accepts_the_runs_folder_a_single_run_and_a_folder_of_sweeps(sweep, tmp_path):
    assert {r.label for r in load_runs(sweep / "runs").runs} == {r.label for r in load_runs(sweep).runs}
    single = load_runs(sweep / "runs" / "w64_plain")
    assert [r.label for r in single.runs] == ["w64_plain"] and single.skipped == ()  # no sibling is "missing"
    for name in ("one", "two"):
        write_sweep(tmp_path / name, [SyntheticRun("same_id", 64, "plain")])
    both = load_runs(tmp_path)
    assert sorted(r.label for r in both.runs) == ["one/runs/same_id", "two/runs/same_id"]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_runs(tmp_path / "nowhere")


def test_groups_never_mix_datasets_and_curves_gather_seeds_in_variant_order(sweep):
    groups = group_runs(load_runs(sweep).runs)
    assert [g.key.label for g in groups] == ["imagenet2012, 75 px, 10 classes, sgd, lr 0.1, batch 64",
                                             "shapes_textures, 75 px, 10 classes, sgd, lr 0.1, batch 64"]
    imagenet, shapes = groups
    assert {run.dataset for run in imagenet.runs} == {"imagenet2012"}
    assert shapes.widths == [64, 256]
    assert shapes.labels == ["plain", "scale=0.1", "scale=0.3", "scale=1.0", "learnable"]
    at_256 = {c.label: c for c in shapes.curves_at(256)}
    assert [r.seed for r in at_256["scale=1.0"].runs] == [0, 1, 2]
    assert shapes.reference_for(at_256["scale=0.1"]) is at_256["plain"]
    assert shapes.warnings == ()  # workdir and seed differ per run, which is expected


def test_config_differences_inside_a_group_are_reported(tmp_path):
    write_sweep(tmp_path, [SyntheticRun("a", 64, "plain"), SyntheticRun("b", 64, "plain", seed=1, num_steps=80)])
    (group,) = group_runs(load_runs(tmp_path).runs)
    assert group.warnings == ("train.num_steps differs: 60, 80", "plain at width 64: train.num_steps differs: 60, 80")


def test_variant_order_puts_plain_first_then_constants_ascending_then_learnable():
    variants = [("learnable", True), ("scale=1.0", True), ("inception_v4", False), ("scale=0.1", True),
                ("plain", False), ("learnable_channel", True), ("scale=0.3", True)]
    ordered = [v for v, residual in sorted(variants, key=lambda item: variant_order(*item))]
    assert ordered == ["plain", "inception_v4", "scale=0.1", "scale=0.3", "scale=1.0", "learnable",
                       "learnable_channel"]


def test_combine_verdicts_majority_ties_to_the_more_severe_unknown_never_outvotes():
    assert combine_verdicts(["died", "died", "healthy"])[0] == "died"
    assert combine_verdicts(["healthy", "damaged"])[0] == "damaged"
    assert combine_verdicts([None, None, "healthy"])[0] == "healthy"
    assert combine_verdicts([None])[0] == "unknown"
    verdict, counts = combine_verdicts(["died", "diverged", "died"])
    assert verdict == "died" and format_counts(counts) == "diverged 1/3, died 2/3"


def test_run_series_reads_block_lists_and_error_percent(sweep):
    runs = {run.label: run for run in load_runs(sweep).runs}
    dead = run_series(runs["w256_s1.0_seed0"], "train", "block_ratio/c", block="max")
    assert dead.values[10] == 0.3 and dead.values[11] == 50.0  # the last block climbs from step 12 on
    scale = run_series(runs["w64_learnable"], "train", "residual_scale/a", block=1)
    assert scale.values[-1] == pytest.approx(0.2 + 0.06)
    error = run_series(runs["inet_plain"], "eval", "top1", error_percent=True)
    assert error.steps.tolist() == [10, 20, 30, 40, 50, 60]
    assert error.values.tolist() == pytest.approx([90.0, 90.0, 90.0, 25.0, 25.0, 25.0])


def test_a_sweep_kept_in_a_folder_named_runs_is_read_as_a_sweep(tmp_path):
    """`--workdir=runs/ablation` puts the sweep itself inside a folder named runs/: its runs are still found."""
    sweep = write_sweep(tmp_path / "runs" / "ablation", [SyntheticRun("a", 64, "plain"), SyntheticRun("b", 64,
                                                                                                      "scale=0.1")])
    assert sorted(run.run_id for run in load_runs(sweep).runs) == ["a", "b"]
    assert sorted(run.run_id for run in load_runs(tmp_path / "runs").runs) == ["a", "b"]
