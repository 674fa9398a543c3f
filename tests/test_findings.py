"""The findings the report opens with, worded from a fixed set of runs (analysis.findings).

Two filter counts, plain / scale 0.1 / scale 1.0, seeds 0 and 1, eval top-1 every 10 of 60 steps (0.75 once a run
has learned, 0.1 before). At 64 filters plain learns at steps 40 and 30; scale 0.1 at 10 and 20; scale 1.0 seed 0
dies at 12, seed 1 learns at 50. At 256 plain never learns, scale 0.1 learns at 10 in both seeds, scale 1.0 dies
at 12 and 14.
"""

import json

import pytest

from analysis.findings import group_findings
from analysis.grouping import group_runs
from analysis.report import generate_report
from analysis.runs import load_runs
from analysis.synthetic_runs import SyntheticRun, write_sweep


def runs():
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
    return write_sweep(tmp_path_factory.mktemp("findings"), runs())


def test_the_findings_state_what_the_runs_support_seed_by_seed(sweep):
    (group,) = group_runs(load_runs(sweep).runs)
    texts = [f.text for f in group_findings(group, (0.3, 0.5))]
    assert texts[0] == ("Seeds per (filter count, variant): 2 (seeds 0, 1). With 2 seed(s) a cell's 'k/2' is weak "
                        "evidence: rerun with other seeds (the config's seed_offset) before relying on it.")
    assert texts[1] == ("Residual vs plain, over every (filter count, seed) pair: the residual net reached the "
                        "accuracy threshold in fewer steps than plain (or plain never reached it): scale=0.1 in 4/4; "
                        "scale=1.0 in 0/4.")
    # The highest threshold every plain seed reached, residual steps over plain's seed by seed.
    assert texts[2] == ("Filter count 64: steps to 50 % eval top-1 as a multiple of plain's (plain: steps 40, 30): "
                        "scale=0.1 0.25x, 0.67x (2/2 seeds faster); scale=1.0 not reached by step 60, 1.67x "
                        "(0/2 seeds faster).")
    assert texts[3] == ("Filter count 256: plain did not reach 30 % eval top-1 by step 60 in 2/2 seeds; scale=0.1 "
                        "reached it in 2/2 seeds (steps 10, 10); scale=1.0 reached it in 0/2 seeds.")
    assert texts[4] == ("Deaths (verdict died): plain died in 0/2 seeds at every filter count (64, 256); scale=0.1 "
                        "died in 0/2 seeds at every filter count (64, 256); scale=1.0 died in 1/2 at 64, 2/2 at 256.")
    noise = {f.data["width"]: f for f in group_findings(group, (0.3, 0.5)) if f.kind == "noise"}
    assert noise[64].text == ("Filter count 64, final eval top-1: plain 75 % (75 %-75 %, 2 seeds), scale=0.1 75 % "
                              "(75 %-75 %, 2 seeds), scale=1.0 42 % (10 %-75 %, 2 seeds). Within seed noise (seed "
                              "ranges overlap): plain vs scale=0.1, scale=0.1 vs scale=1.0.")
    assert noise[256].data["separated"] == ["scale=0.1 vs plain"]


def test_a_threshold_only_some_plain_seeds_reach_is_compared_seed_by_seed(tmp_path):
    """Plain seed 0 learns at step 50, seed 1 never: no threshold is every plain seed's, so the lowest is used and
    the wording says which plain seeds reached it; a residual seed counts as faster only against its own twin."""
    def run(variant, seed, **kw):
        return SyntheticRun(f"w64_{variant}_s{seed}", 64, variant, seed=seed, eval_every=10, **kw)

    sweep = write_sweep(tmp_path, [run("plain", 0, learn_step=50), run("plain", 1, learn_step=None),
                                   run("scale=0.1", 0, learn_step=10), run("scale=0.1", 1, learn_step=None)])
    (group,) = group_runs(load_runs(sweep).runs)
    texts = [f.text for f in group_findings(group, (0.3, 0.5))]
    assert texts[1] == ("Residual vs plain, over every (filter count, seed) pair: the residual net reached the "
                        "accuracy threshold in fewer steps than plain (or plain never reached it): scale=0.1 in 1/2.")
    assert texts[2] == ("Filter count 64: plain reached 30 % eval top-1 by step 60 in only 1/2 seeds (steps 50); "
                        "scale=0.1 reached it in 1/2 seeds (steps 10), 1/2 seeds faster than plain.")


def test_the_report_opens_with_the_findings_and_writes_them_as_json_and_markdown(sweep, tmp_path):
    result = generate_report(sweep / "runs", tmp_path, thresholds=(0.3, 0.5))
    page = result.html.read_text()
    assert page.index('<section id="findings">') < page.index('<h2 id="group-')
    stored = json.loads((tmp_path / "findings.json").read_text())
    (label,) = stored
    assert [f["text"] for f in stored[label]] == [f.text for f in result.findings[label]]
    summary = result.summary.read_text()
    assert summary.startswith("Generated ") and "from 12 runs" in summary
    assert "- Deaths (verdict died): plain died in 0/2 seeds" in summary


def test_the_thresholds_table_gives_the_residual_plain_ratio_seed_by_seed(sweep, tmp_path):
    thresholds = generate_report(sweep / "runs", tmp_path, thresholds=(0.3, 0.5)).frames["thresholds"]
    rows = thresholds.set_index(["width", "variant"])
    assert rows.loc[(64, "scale=0.1"), "ratio_steps_per_seed@0.5"] == "0.25, 0.67"
    assert rows.loc[(64, "scale=1.0"), "ratio_steps_per_seed@0.5"] == "not reached by step 60, 1.67"
    assert rows.loc[(256, "scale=0.1"), "ratio_steps_per_seed@0.3"] == "plain never, plain never"
    assert rows.loc[(256, "scale=1.0"), "ratio_steps_per_seed@0.3"] == "–, –"
