"""The report folder is replaced whole (old or new, never a mix), and a folder without runs writes nothing
(analysis.report)."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import analysis.report
from analysis.findings import Finding
from analysis.report import ReportError, generate_report, main
from analysis.report_html import _findings_html
from analysis.synthetic_runs import SyntheticRun, write_sweep

REPO = Path(__file__).resolve().parents[1]
NO_RUNS = "holds no run folders (a run folder has config.json and metrics.jsonl)"


def _contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture()
def sweep(tmp_path):
    return write_sweep(tmp_path / "sweep", [SyntheticRun("plain", 64, "plain", learn_step=30),
                                            SyntheticRun("s0.3", 64, "scale=0.3", learn_step=10)])


def test_an_interrupted_report_leaves_the_previous_one_whole(sweep, monkeypatch):
    first = generate_report(sweep)
    before = _contents(first.out_dir)
    assert {"report.html", "summary.md", "findings.json", "runs.csv", "manifest.json"} <= set(before)
    write_sweep(sweep, [SyntheticRun("s1.0", 64, "scale=1.0", death_step=12)])  # new numbers to report
    saved = []

    def save_then_interrupt(figure, out_dir, stem):
        if saved:
            raise KeyboardInterrupt  # Ctrl-C while the second figure is being written
        saved.append(stem)
        return original(figure, out_dir, stem)

    original = analysis.report.save_figure
    monkeypatch.setattr(analysis.report, "save_figure", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        generate_report(sweep)
    assert _contents(first.out_dir) == before
    assert sorted(p.name for p in sweep.iterdir()) == ["report", "runs", "sweep.json"]  # no half-written folder left
    monkeypatch.undo()
    second = generate_report(sweep)
    assert "s1.0" in (second.out_dir / "runs.csv").read_text()


def test_a_rerun_replaces_its_own_files_and_keeps_files_a_user_added(sweep):
    out = generate_report(sweep).out_dir
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({"files": [*manifest["files"], "gone__dying.png"]}))
    (out / "gone__dying.png").write_bytes(b"a figure of a group that no longer exists")
    (out / "notes.txt").write_text("mine")
    generate_report(sweep)
    assert not (out / "gone__dying.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in json.loads((out / "manifest.json").read_text())["files"]


def test_a_folder_with_no_run_is_one_line_and_writes_nothing(tmp_path, capsys):
    unrelated = tmp_path / "unrelated"
    (unrelated / "sub").mkdir(parents=True)
    (unrelated / "notes.txt").write_text("not a run")
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", unrelated):
        with pytest.raises(ReportError, match=f"^{re.escape(f'{folder} {NO_RUNS}')}$"):
            generate_report(folder)
        assert main([str(folder)]) == 2
        assert capsys.readouterr().err == f"error: {folder} {NO_RUNS}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty", "notes.txt", "sub", "unrelated"]
    sweep = write_sweep(tmp_path / "sweep", [], missing=["w64_plain"])  # sweep.json lists a run never started
    completed = subprocess.run([sys.executable, "-m", "analysis.report", str(sweep)], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert (completed.returncode, completed.stdout) == (2, "")
    assert completed.stderr == f"error: {sweep} {NO_RUNS}\n"
    assert sorted(p.name for p in sweep.iterdir()) == ["runs", "sweep.json"]


def test_an_out_folder_that_is_not_a_report_is_refused_untouched(sweep, tmp_path, capsys):
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "thesis.tex").write_text("keep")
    assert main([str(sweep), f"--out={elsewhere}"]) == 2
    assert "holds files no report wrote (no manifest.json)" in capsys.readouterr().err
    assert [p.name for p in elsewhere.iterdir()] == ["thesis.tex"]


@dataclasses.dataclass(frozen=True)
class StatusFinding:  # a finding as analysis.findings states it, with its status
    kind: str
    text: str
    data: dict
    status: str = ""


def test_findings_are_marked_supported_or_inconclusive_and_explain_verdicts():
    findings = {"group": [StatusFinding("dying", "Unscaled died in 3/3 seeds at 1024.", {}, "supported"),
                          StatusFinding("seeds", "Seeds per (filter count, variant): 3.", {}),
                          StatusFinding("noise", "Scale 0.3 vs plain: within seed noise.", {}, "inconclusive")]}
    page = _findings_html(findings, several_groups=False)
    items = re.findall(r'<li class="(\w+)">(.*?)</li>', page)
    assert [cls for cls, _ in items] == ["supported", "descriptive", "inconclusive"]  # findings.py's order
    assert items[0][1].startswith('<span class="badge supported">supported</span>Unscaled ')
    assert "badge" not in items[1][1]
    assert items[2][1].startswith('<span class="badge inconclusive">inconclusive</span>')
    assert '<a class="verdict" href="#verdict-died" title="died: the paper&#x27;s &#x27;died&#x27;' in items[0][1]
    old = {"group": [Finding("dying", "plain died in 0/2 seeds", {})]}  # findings without a status: no badges
    assert "badge" not in _findings_html(old, several_groups=False)
