"""The report in a real browser (headless Chromium, analysis.screenshot): every figure loads, and the findings are in
the first screen of a 1280 × 900 window. Synthetic runs (analysis.synthetic_runs) stand in for a sweep.

Skipped only where Chromium is missing and CI is not set; in CI (.ci/run installs chromium) it always runs.
"""

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from analysis.report import generate_report
from analysis.screenshot import dump_dom, find_chromium, screenshot
from analysis.synthetic_runs import SyntheticRun, write_sweep

pytestmark = pytest.mark.skipif(find_chromium() is None and not os.environ.get("CI"),
                                reason="chromium is not installed (apt-get install -y chromium); CI runs this test")

WIDTH, HEIGHT = 1280, 900
# Appended to a copy of the page (the report itself has no script): what the browser loaded, and where things are.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const top = (selector) => { const e = document.querySelector(selector);
                              return e ? e.getBoundingClientRect().top + window.scrollY : null; };
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: images.length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.getAttribute("src")),
    findings: top("#findings"), first_finding: top("#findings li"), first_figure: top("figure"),
    window_height: window.innerHeight, page_width: document.documentElement.scrollWidth});
  document.body.appendChild(probe);
});
</script>"""


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep = write_sweep(tmp_path_factory.mktemp("sweep"), [
        SyntheticRun("w64_plain", 64, "plain", learn_step=30, eval_every=10),
        SyntheticRun("w64_s0.3", 64, "scale=0.3", learn_step=10, eval_every=10),
        SyntheticRun("w1024_plain", 1024, "plain", learn_step=35, eval_every=10),
        SyntheticRun("w1024_s1.0", 1024, "scale=1.0", death_step=12, eval_every=10)])
    return generate_report(sweep)


def test_the_report_loads_every_figure_and_shows_the_findings_first(report):
    page = report.html.read_text(encoding="utf-8")
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert sorted(sources) == sorted(f.png.name for f in report.figures) and sources
    for source in sources:  # relative paths beside the page, each a real PNG
        assert "/" not in source and _png_size(report.out_dir / source)[0] > 100
    probe_page = report.out_dir / "probe.html"  # beside report.html, so the relative paths resolve alike
    shutil.copyfile(report.html, probe_page)
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = dump_dom(probe_page, width=WIDTH, height=HEIGHT)
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run: " + dom[-2000:]
    facts = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert facts["images"] == len(report.figures) and facts["broken"] == []
    # --dump-dom's window may be shorter than the screenshot's 900 px (browser chrome): the smaller one counts.
    first_screen = min(HEIGHT, facts["window_height"])
    assert facts["first_finding"] is not None and facts["first_finding"] < first_screen - 40, facts  # a line shows
    assert facts["findings"] < facts["first_figure"]
    assert facts["page_width"] <= WIDTH  # nothing wider than the window: no sideways scrolling


def test_a_screenshot_of_the_first_screen(report, tmp_path):
    png = screenshot(report.html, tmp_path / "first_screen.png", width=WIDTH, height=HEIGHT)
    assert _png_size(png) == (WIDTH, HEIGHT)
