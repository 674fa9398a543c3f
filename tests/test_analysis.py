"""Tables, the report and its command on synthetic run folders with known numbers
(analysis.synthetic_runs.example_specs).

With the 10-line trailing mean, a run whose train accuracy jumps at step L first reaches 0.3 / 0.4 / 0.5 at
L + 2 / L + 4 / L + 5; each step takes 0.5 s. Eval top-1 (imagenet2012 group) is 0.75 from the first eval step
after L on.
"""

import html
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.grouping import group_runs
from analysis.report import generate_report, main
from analysis.runs import load_runs
from analysis.synthetic_runs import SyntheticRun, example_specs, write_sweep
from analysis.tables import (
    DEFAULT_THRESHOLDS,
    runs_table,
    skipped_table,
    thresholds_table,
    verdict_cells,
    verdicts_table,
)
from analysis.verdicts import DEFINITION_TEXT

REPO = Path(__file__).resolve().parents[1]
NAN = math.nan


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = write_sweep(tmp_path_factory.mktemp("sweep"), example_specs(), missing=["w1024_s1.0"])
    (root / "runs" / "created_but_empty").mkdir()
    return root


@pytest.fixture(scope="module")
def groups(sweep):
    return group_runs(load_runs(sweep).runs)


def _by_width_variant(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index(["width", "variant"])


def test_steps_to_threshold_are_medians_over_seeds_with_residual_over_plain_ratios(groups):
    table = thresholds_table(groups, (0.3, 0.4, 0.5))
    data = _by_width_variant(table.data)
    expected_steps = {  # (width, variant): steps to 0.3, 0.4, 0.5; NaN = not reached
        (64, "plain"): (42, 44, 45), (64, "scale=0.1"): (14, 16, 17), (64, "scale=1.0"): (17, 19, 20),
        (64, "learnable"): (14, 16, 17), (256, "plain"): (NAN,) * 3, (256, "scale=0.1"): (12, 14, 15),
        (256, "scale=0.3"): (13, 15, 16), (256, "scale=1.0"): (NAN,) * 3, (256, "learnable"): (14, 16, 17),
        (512, "plain"): (40, 40, 40), (512, "scale=0.1"): (20, 20, 20),
    }
    assert set(data.index) == set(expected_steps)
    for key, steps in expected_steps.items():
        for threshold, value in zip(("0.3", "0.4", "0.5"), steps):
            assert data.loc[key, f"steps@{threshold}"] == pytest.approx(value, nan_ok=True), (key, threshold)
            assert data.loc[key, f"seconds@{threshold}"] == pytest.approx(value / 2, nan_ok=True), (key, threshold)
    assert data.loc[(64, "scale=0.1"), "reached@0.3"] == 2  # seeds cross at 12 and 16: median 14
    assert data.loc[(256, "scale=1.0"), "reached@0.3"] == 1  # two seeds died, the diverged one crossed first
    assert data.loc[(64, "scale=0.1"), "ratio_steps@0.3"] == 14 / 42
    assert data.loc[(64, "scale=1.0"), "ratio_seconds@0.5"] == 10 / 22.5
    assert data.loc[(512, "scale=0.1"), "ratio_steps@0.4"] == 0.5
    assert math.isnan(data.loc[(256, "scale=0.1"), "ratio_steps@0.3"])  # plain never reached it
    assert math.isnan(data.loc[(64, "plain"), "ratio_steps@0.3"])
    assert data["source"].groupby(level="width").first().to_dict() == {64: "train accuracy", 256: "train accuracy",
                                                                       512: "eval top-1"}
    shown = _by_width_variant(table.display.assign(width=table.data["width"], variant=table.data["variant"]))
    assert shown.loc[(256, "plain"), "steps ≥ 0.3"] == ">60"
    assert shown.loc[(256, "scale=1.0"), "steps ≥ 0.3"] == ">60 (1/3)"
    assert shown.loc[(64, "scale=0.1"), "steps ≥ 0.3"] == "14 (2/2)"
    assert shown.loc[(64, "scale=0.1"), "res/plain steps ≥ 0.3"] == "0.333"
    assert shown.loc[(256, "scale=0.1"), "res/plain steps ≥ 0.3"] == "–"


def test_verdict_cells_take_the_majority_and_show_counts_and_accuracy(groups):
    imagenet, shapes = groups
    cells = _by_width_variant(verdict_cells(shapes))
    dying = cells.loc[(256, "scale=1.0")]
    assert (dying["verdict"], dying["counts"], dying["runs"]) == ("died", "diverged 1/3, died 2/3", 3)
    assert (dying["n_died"], dying["n_diverged"], dying["n_healthy"]) == (2, 1, 0)
    assert dying["median_t_death"] == 13.0
    assert dying["accuracy"] == 0.1 and dying["accuracy_source"] == "train accuracy"  # the diverged seed left out
    assert cells.loc[(256, "learnable"), "verdict"] == "healthy"  # read from result.json: no verdict.json
    assert cells.loc[(64, "plain"), "accuracy"] == 0.8
    assert (64, "scale=0.3") not in cells.index  # its only run is partial
    eval_cells = _by_width_variant(verdict_cells(imagenet))
    assert eval_cells.loc[(512, "plain"), ["accuracy", "accuracy_source"]].tolist() == [0.75, "eval top-1"]


def test_report_writes_every_figure_and_table_and_the_html_shows_them(sweep, groups, tmp_path):
    # One test builds the report: rendering the figures is the slow part, and a shared fixture would be built once
    # per xdist worker (xdist_group marks do nothing under pytest 9.2 with pytest-xdist 3.8).
    report = generate_report(sweep, tmp_path / "elsewhere", command="pytest: generate_report(sweep)")
    check_report_result(report, sweep)
    check_html(report, groups, sweep)


def check_report_result(report, sweep):
    assert report.errors == ()
    assert report.html == report.out_dir / "report.html" and report.out_dir.parent != sweep
    assert len(report.runs_used) == 14
    assert {(s.label, s.status) for s in report.runs_skipped} == {
        ("runs/w64_s0.3_partial", "partial"), ("runs/w1024_s1.0", "missing"), ("runs/created_but_empty", "invalid")}
    shapes = "shapes_textures_75_10_sgd_0.1_64__"
    imagenet = "imagenet2012_75_10_sgd_0.1_64__"
    assert {f.name for f in report.figures} == {
        *(shapes + s for s in ("verdict_heatmap", "dying", "block_ratio", "learnable_scales_learnable",
                               "convergence_w64", "convergence_w256")),
        *(imagenet + s for s in ("verdict_heatmap", "dying", "block_ratio", "convergence_w512"))}
    for figure in report.figures:
        assert figure.png.read_bytes().startswith(b"\x89PNG")
        assert "<svg" in figure.svg.read_text()[:2000]
    runs = report.frames["runs"].set_index("run")
    diverged = runs.loc["w256_s1.0_seed2"]
    assert (diverged["verdict"], diverged["finished"], diverged["steps"]) == ("diverged", False, 30.0)
    assert math.isnan(diverged["final_train_loss"])
    assert "truncated last line" in runs.loc["w64_s1.0", "notes"]
    for name, path in report.tables.items():
        assert path.read_text() == report.frames[name].to_csv(index=False), name


def check_html(report, groups, sweep):
    page = report.html.read_text(encoding="utf-8")
    for figure in report.figures:
        assert f'src="{figure.png.name}"' in page and f'href="{figure.svg.name}"' in page, figure.name
    for name in ("thresholds", "verdicts"):
        for slug in ("shapes_textures_75_10_sgd_0.1_64", "imagenet2012_75_10_sgd_0.1_64"):
            assert f'id="table-{name}-{slug}"' in page
    assert 'id="table-runs"' in page and 'id="table-skipped"' in page
    run_set = load_runs(sweep)
    tables = [thresholds_table(groups, DEFAULT_THRESHOLDS), verdicts_table(groups), runs_table(groups),
              skipped_table(run_set.skipped)]
    for table in tables:  # the same inputs as the report's: every displayed cell must be on the page
        assert html.escape(table.note) in page
        for value in table.display.to_numpy().ravel():
            assert html.escape(str(value)) in page, (table.name, value)
    for run in report.runs_used:
        assert f'id="config-{run}"' in page
        assert html.escape(f'"run_id": "{run}"') in page
    assert html.escape(DEFINITION_TEXT) in page
    assert "pytest: generate_report(sweep)" in page and "python -m analysis.report --runs=" in page
    for skipped in report.runs_skipped:
        assert html.escape(skipped.reason) in page and skipped.status in page
    assert "<script" not in page and 'src="http' not in page and "data:image" not in page  # figures beside it


def test_command_line_writes_the_report_and_lists_partial_runs(tmp_path):
    specs = [SyntheticRun("plain", 64, "plain", learn_step=30), SyntheticRun("s0.1", 64, "scale=0.1"),
             SyntheticRun("still_running", 64, "scale=1.0", finished=False)]
    sweep = write_sweep(tmp_path / "sweep", specs)
    out = sweep / "report"  # the default for a sweep's runs/ folder
    completed = subprocess.run([sys.executable, "-m", "analysis.report", f"--runs={sweep / 'runs'}",
                                "--thresholds=0.3,0.5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert f"report: {out / 'report.html'}" in completed.stdout
    assert "2 runs used in 1 group(s), 4 figures" in completed.stdout
    assert "skipped still_running (partial): unfinished or still running" in completed.stdout
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "steps ≥ 0.5" in page and "steps ≥ 0.4" not in page
    assert "--thresholds=0.3,0.5" in page
    assert pd.read_csv(out / "thresholds.csv")["steps@0.3"].tolist() == [32, 22]


def test_command_line_rejects_bad_arguments_with_the_value(tmp_path, capsys):
    assert main([f"--runs={tmp_path / 'nowhere'}"]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([f"--runs={tmp_path}", "--thresholds=1.5"])
    assert "--thresholds='1.5'" in capsys.readouterr().err
