"""The findings the report opens with, worded from fixed sets of runs (analysis.findings).

`default_job_specs` (analysis/synthetic_runs.py): filter counts 160 and 640, plain / scale 0.3 / scale 1.0, seeds 0-4,
eval top-1 every 10 of 60 steps. Plain learns at 30 (top-1 about 50 %), scale 0.3 at 10 (about 70 %), scale 1.0 learns
at 20 at 160 filters (within plain's noise) and dies at 640 in every seed, two of them as issue #30's runs that never
recovered (verdict.json transient_death, final eval top-1 0.142 and 0.094).

`two_seeds`: the old default's size. Two filter counts, plain / scale 0.1 / scale 1.0, seeds 0 and 1, eval every 10 of
60 steps (0.75 once a run has learned, 0.1 before). At 64 filters plain learns at steps 40 and 30; scale 0.1 at 10 and
20; scale 1.0 seed 0 dies at 12, seed 1 learns at 50. At 256 plain never learns, scale 0.1 learns at 10 in both seeds,
scale 1.0 dies at 12 and 14.
"""

import json
import re

import pytest

from analysis.findings import group_findings
from analysis.grouping import group_runs
from analysis.report import generate_report
from analysis.runs import load_runs
from analysis.statistics import INCONCLUSIVE, SUPPORTED
from analysis.synthetic_runs import SyntheticRun, default_job_specs, write_sweep


def two_seeds():
    def run(width, variant, seed, **kw):
        return SyntheticRun(f"w{width}_{variant}_s{seed}", width, variant, seed=seed, eval_every=10, **kw)

    return [run(64, "plain", 0, learn_step=40), run(64, "plain", 1, learn_step=30),
            run(64, "scale=0.1", 0, learn_step=10), run(64, "scale=0.1", 1, learn_step=20),
            run(64, "scale=1.0", 0, learn_step=None, death_step=12), run(64, "scale=1.0", 1, learn_step=50),
            run(256, "plain", 0, learn_step=None), run(256, "plain", 1, learn_step=None),
            run(256, "scale=0.1", 0, learn_step=10), run(256, "scale=0.1", 1, learn_step=10),
            run(256, "scale=1.0", 0, learn_step=None, death_step=12),
            run(256, "scale=1.0", 1, learn_step=None, death_step=14)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("findings"), two_seeds())


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("default_job"), default_job_specs())


def findings_of(folder, thresholds=(0.3, 0.4)):
    (group,) = group_runs(load_runs(folder).runs)
    return group_findings(group, thresholds)


def by_claim(findings):
    return {f.claim: f for f in findings if f.claim}


def test_every_comparison_is_a_claim_with_an_interval_and_supported_ones_come_first(default_job):
    findings = findings_of(default_job)
    statuses = [f.status for f in findings]
    first_other = statuses.index("")
    assert set(statuses[:first_other]) == {SUPPORTED}  # the headline
    assert set(statuses[first_other:]) <= {"", INCONCLUSIVE}
    for finding in findings:
        if finding.claim:
            assert {"effect", "low", "high", "n", "method"} <= set(finding.data)
            assert finding.text.endswith("supported.") or re.search(
                rf"inconclusive with {finding.data['n']} seeds( \(every seed gave the same value: at least 6 are "
                r"needed\))?\.$", finding.text), finding.text


def test_the_width_effect_is_a_named_finding(default_job):
    claims = by_claim(findings_of(default_job))
    deaths = claims["width/deaths/scale=1.0/640 vs 160"]
    assert deaths.text == ("Width effect on deaths, residual, unscaled, 640 against 160 filters: 5/5 vs 0/5, +100.0 "
                           "points (95 % interval +38.6 to +100.0): supported.")
    top1 = claims["width/top1/scale=1.0/640 vs 160"]
    assert top1.status == SUPPORTED and top1.data["effect"] < 0 and top1.data["paired"]
    assert claims["width/deaths/plain/640 vs 160"].text == (
        "Width effect on deaths, plain, 640 against 160 filters: 0/5 vs 0/5, +0.0 points (95 % interval -43.4 to "
        "+43.4): inconclusive with 5 seeds.")


def test_final_top1_is_compared_seed_by_seed_between_every_pair_of_variants(default_job):
    claims = by_claim(findings_of(default_job))
    assert claims["top1/640/scale=0.3 vs plain"].text == (
        "Filter count 640, final eval top-1 of residual, scale 0.3 against plain: +19.8 points (95 % interval +17.6 "
        "to +22.0, 5 seed pairs): supported.")
    assert claims["top1/160/scale=1.0 vs plain"].text == (
        "Filter count 160, final eval top-1 of residual, unscaled against plain: -1.2 points (95 % interval -6.0 to "
        "+3.6, 5 seed pairs): inconclusive with 5 seeds.")
    assert claims["top1/640/scale=1.0 vs scale=0.3"].status == SUPPORTED


def test_steps_to_a_threshold_count_a_run_that_never_reached_it_as_a_lower_bound(default_job):
    claims = by_claim(findings_of(default_job))
    assert claims["steps/640/scale=0.3 vs plain"].text == (
        "Filter count 640, steps to 40 % eval top-1 of residual, scale 0.3 against plain: 0.36x plain's steps (95 % "
        "interval 0.23x to 0.57x, 5 seed pairs): supported.")
    # Unscaled at 640 never reached 40 %: its last eval (60) plus one interval (10) is a lower bound, on the
    # claim's slower side, so the claim stands.
    slower = claims["steps/640/scale=1.0 vs plain"]
    assert slower.status == SUPPORTED and slower.data["censored_a"] == 5
    assert "residual, unscaled never reached it in 5, counted as step 70, a lower bound" in slower.text


def test_a_run_that_diverged_before_its_first_evaluation_does_not_switch_the_width_to_train_accuracy(tmp_path):
    """Diverged runs are left out of the comparisons; they must not decide which metric the others are compared on
    (cpu_long once reported 1280 filters on train accuracy, 160 on eval top-1, because one run blew up at step 4)."""
    specs = default_job_specs()
    first = next(s for s in specs if s.run_id == "w640_scale=0.3_seed0")
    specs[specs.index(first)] = SyntheticRun(first.run_id, 640, "scale=0.3", seed=0, eval_every=10, learn_step=None,
                                             diverge_step=5)
    claims = by_claim(findings_of(write_sweep(tmp_path, specs)))
    steps = claims["steps/640/scale=0.3 vs plain"]
    assert steps.data["source"] == claims["steps/160/scale=0.3 vs plain"].data["source"] == "eval top-1"
    assert "eval top-1" in steps.text and steps.data["n"] == 4


def test_deaths_between_cells_and_per_cell_with_exact_intervals(default_job):
    findings = findings_of(default_job)
    claims = by_claim(findings)
    assert claims["deaths/640/scale=1.0 vs plain"].text == (
        "Filter count 640, deaths of residual, unscaled against plain: 5/5 vs 0/5, +100.0 points (95 % interval "
        "+38.6 to +100.0): supported.")
    assert "deaths/160/scale=1.0 vs plain" not in claims  # no death on either side: nothing to compare
    per_cell = next(f for f in findings if f.kind == "dying")
    assert per_cell.text == (
        "Deaths (verdict died) per cell, with exact 95 % intervals of the death rate: plain 0/5 at 160 (0 %-52 %), "
        "0/5 at 640 (0 %-52 %); residual, scale 0.3 0/5 at 160 (0 %-52 %), 0/5 at 640 (0 %-52 %); residual, "
        "unscaled 0/5 at 160 (0 %-52 %), 5/5 at 640 (48 %-100 %).")


def test_a_death_never_recovered_from_at_chance_is_counted_as_died(default_job):
    """Issue #30's two unscaled 640-filter runs: training wrote transient_death (the zero fraction dipped to 0.982),
    but the loss stayed at 2.255 >= 0.95 ln 10 and eval top-1 ended at 0.142 and 0.094: not recovered."""
    runs = {run.label: run for run in load_runs(default_job).runs}
    for label in ("w640_scale=1.0_seed0", "w640_scale=1.0_seed1"):
        assert runs[label].verdict["stored_verdict"] == "transient_death"
        assert runs[label].verdict_name == "died"
        assert any("read as died under docs/dying.md §3" in warning for warning in runs[label].warnings)
    texts = " ".join(f.text for f in findings_of(default_job))
    assert "transient_death" not in texts and "recovered" not in texts


def test_no_run_at_chance_is_counted_as_healthy(sweep):
    """Plain at 256 filters never learns (eval top-1 0.1 of 1024 examples): training's record says healthy,
    the findings say not_learning."""
    runs = {run.label: run for run in load_runs(sweep).runs}
    assert runs["w256_plain_s0"].verdict_name == "not_learning"
    texts = [f.text for f in findings_of(sweep, (0.3, 0.5))]
    assert ("Not learning beyond chance (not_learning; never counted as healthy): plain: 2/2 at 256.") in texts


def test_with_two_seeds_nothing_is_supported_and_the_findings_say_why(sweep):
    findings = findings_of(sweep, (0.3, 0.5))
    assert not [f for f in findings if f.status == SUPPORTED]
    assert findings[0].text == (
        "Seeds per (filter count, variant): 2 (seeds 0, 1). With 2 seed(s) in a cell no comparison with it can be "
        "supported (at least 3 are needed): add seeds to the same workdir (:seeds= or :seed_offset=); the report "
        "pools every seed it finds.")
    claims = by_claim(findings)
    assert claims["width/deaths/scale=1.0/256 vs 64"].text == (
        "Width effect on deaths, residual, unscaled, 256 against 64 filters: 2/2 vs 1/2, +50.0 points (95 % interval "
        "-27.3 to +90.5): inconclusive with 2 seeds (at least 3 are needed).")
    # Plain never reached 30 % at 256 filters: its last eval (60) plus one interval is a lower bound.
    assert claims["steps/256/scale=0.1 vs plain"].text == (
        "Filter count 256, steps to 30 % eval top-1 of residual, scale 0.1 against plain: 0.14x plain's steps (no "
        "interval, 2 seed pairs; plain never reached it in 2, counted as step 70, a lower bound): inconclusive with 2 "
        "seeds (at least 3 are needed).")


def test_the_report_pools_every_seed_in_the_workdir(tmp_path):
    """Seeds 0-4, then seeds 10-14 run into the same workdir (:seed_offset=10): one cell of 10 seeds each."""
    write_sweep(tmp_path, default_job_specs())
    write_sweep(tmp_path, default_job_specs(seeds=range(10, 15)))
    findings = findings_of(tmp_path)
    assert findings[[f.kind for f in findings].index("seeds")].data["per_curve"] == [10]
    claim = by_claim(findings)["top1/640/scale=0.3 vs plain"]
    assert claim.data["n"] == 10 and claim.data["paired"]


def test_the_same_seeds_rerun_elsewhere_are_pooled_not_dropped(tmp_path):
    """A folder of two sweeps with seeds 0-4 each (the same seeds on two machines): 10 runs a cell, 10 pairs."""
    write_sweep(tmp_path / "machine_a", default_job_specs())
    write_sweep(tmp_path / "machine_b", default_job_specs())
    claims = by_claim(findings_of(tmp_path))
    assert claims["top1/640/scale=0.3 vs plain"].data["n"] == 10
    assert claims["steps/640/scale=0.3 vs plain"].data["n"] == 10
    assert claims["width/deaths/scale=1.0/640 vs 160"].data["died"] == [10, 0]


def test_the_report_opens_with_the_findings_and_writes_them_as_json_and_markdown(default_job, tmp_path):
    result = generate_report(default_job / "runs", tmp_path, thresholds=(0.3, 0.4))
    page = result.html.read_text()
    assert page.index('<section id="findings">') < page.index('<h2 id="group-')
    assert "only when at least 3 seeds per side went in" in page  # the rule, in the methods
    stored = json.loads((tmp_path / "findings.json").read_text())
    (label,) = stored
    assert [f["text"] for f in stored[label]] == [f.text for f in result.findings[label]]
    width = next(f for f in stored[label] if f["claim"] == "width/deaths/scale=1.0/640 vs 160")
    assert width["status"] == SUPPORTED and width["data"]["low"] == pytest.approx(0.386, abs=1e-3)
    summary = result.summary.read_text()
    assert summary.startswith("Generated ") and "from 30 runs" in summary
    # Regenerated away from the sweep, it names the command that ran the runs too.
    assert "(runs: `python -m inception_jax.main --config=configs/ablation_scale.py --rows_csv=synthetic.csv`)" in (
        summary.splitlines()[0])
    assert "- **Width effect on deaths, residual, unscaled, 640 against 160 filters: 5/5" in summary  # headline
    assert "- Deaths (verdict died) per cell" in summary


def test_the_thresholds_table_gives_the_residual_plain_ratio_seed_by_seed(sweep, tmp_path):
    thresholds = generate_report(sweep / "runs", tmp_path, thresholds=(0.3, 0.5)).frames["thresholds"]
    rows = thresholds.set_index(["width", "variant"])
    assert rows.loc[(64, "scale=0.1"), "ratio_steps_per_seed@0.5"] == "0.25, 0.67"
    assert rows.loc[(64, "scale=1.0"), "ratio_steps_per_seed@0.5"] == "not reached by step 60, 1.67"
    assert rows.loc[(256, "scale=0.1"), "ratio_steps_per_seed@0.3"] == "plain never, plain never"
    assert rows.loc[(256, "scale=1.0"), "ratio_steps_per_seed@0.3"] == "–, –"
