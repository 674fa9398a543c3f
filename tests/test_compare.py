"""`python -m analysis.compare A B`: two sweeps' findings, claim by claim (analysis.compare).

Sweep A is analysis.synthetic_runs.default_job_specs with seeds 0-4; sweep B the same with seeds 10-14 and `flip`:
residual scale 0.3 at 640 filters ends 5 points below plain instead of 20 above. So exactly one claim flips; the width
effect on scale 0.3's top-1 (640 against 160 filters), nothing in A, becomes supported; every other claim replicates.
"""

import pytest

from analysis import compare
from analysis.report import generate_report
from analysis.synthetic_runs import default_job_specs, write_sweep

FLIPPED = "top1/640/scale=0.3 vs plain"


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    a = write_sweep(tmp_path_factory.mktemp("a"), default_job_specs())
    b = write_sweep(tmp_path_factory.mktemp("b"), default_job_specs(seeds=range(10, 15), flip=True))
    return a, b


def test_one_claim_flips_and_the_others_replicate(sweeps, capsys):
    a, b = sweeps
    assert compare.main([str(a), str(b / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    flipped = [line for line in lines if line.startswith("flipped:")]
    assert flipped == [
        "flipped: Filter count 640, final eval top-1 of residual, scale 0.3 against plain: A +19.8 [+17.6, +22.0] n=5 "
        "supported; B -5.2 [-7.4, -3.0] n=5 supported"]
    assert ("replicated: Width effect on deaths, residual, unscaled, 640 against 160 filters: A +100.0 [+38.6, "
            "+100.0] n=5 supported; B +100.0 [+38.6, +100.0] n=5 supported") in lines
    # B's width effect of scale 0.3 is -25 points in every seed: no spread, so no interval and not supported.
    assert ("still inconclusive: Width effect on final eval top-1, residual, scale 0.3, 640 against 160 filters: A "
            "+0.0 n=5 inconclusive; B -25.0 n=5 inconclusive") in lines
    assert lines[-1] == "18 claims: 16 replicated, 1 flipped, 1 still inconclusive"


def test_a_report_s_findings_json_is_read_when_present(sweeps, tmp_path):
    a, _ = sweeps
    generate_report(a / "runs", thresholds=(0.3, 0.4))  # writes a/report/findings.json
    claims, source = compare.load_claims(a)
    assert source == str(a / "report" / "findings.json")
    assert claims[("shapes_textures, 75 px, 10 classes, sgd, lr 0.1, batch 64", FLIPPED)]["status"] == "supported"
    from_report, _ = compare.load_claims(a / "report")
    assert from_report.keys() == claims.keys()


@pytest.mark.parametrize(("a", "b", "category"), [
    (("supported", 0.2), ("supported", 0.1), "replicated"),
    (("inconclusive", 0.2), ("inconclusive", 0.1), "replicated"),
    (("supported", 0.2), ("supported", -0.1), "flipped"),
    (("supported", 0.2), ("inconclusive", -0.1), "flipped"),
    (("supported", 0.2), ("inconclusive", 0.1), "became inconclusive"),
    (("inconclusive", 0.2), ("supported", 0.1), "became supported"),
    (("inconclusive", 0.2), ("inconclusive", -0.1), "still inconclusive"),
    (("supported", 0.2), None, "only in A"),
])
def test_the_categories(a, b, category):
    def claim(status, effect):
        return {"status": status, "data": {"effect": effect, "null": 0.0}}

    assert compare.classify(claim(*a), claim(*b) if b else None) == category
    ratio = {"status": "supported", "data": {"effect": 0.5, "null": 1.0}}  # a ratio's "no difference" is 1
    assert compare.classify(ratio, {"status": "supported", "data": {"effect": 1.5, "null": 1.0}}) == "flipped"


def test_a_folder_without_runs_is_one_line_and_exit_2(sweeps, tmp_path, capsys):
    a, _ = sweeps
    assert compare.main([str(a), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: no finished runs under")
    assert compare.main([str(a), str(tmp_path / "absent")]) == 2
