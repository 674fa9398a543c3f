"""The main job's sweep in the pinned TensorBoard, as a user opens it (`tensorboard --logdir <workdir>/runs`): its
HTTP API lists one HParams session per run with the knobs, final metrics and verdict, the scalars come in their
groups, and headless Chromium draws the HParams table (analysis/tensorboard_view.py drives both).

Chromium comes from the system (.ci/run installs it): without it these browser checks skip, except in CI (CI=true),
where a missing browser is a failure.
"""

import json
import os
import shutil
import time

import pytest

from analysis.screenshot import find_chromium
from analysis.tensorboard_view import Chromium, TensorBoard
from inception_jax.sweeps import hparams

RUN_IDS = ["w1040_plain", "w1040_scale0.1", "w1040_scale1", "w268_plain", "w268_scale0.1", "w268_scale1"]


@pytest.fixture(scope="module")
def board(tiny_sweep, tmp_path_factory):
    """TensorBoard on a copy of the tiny sweep's runs/ (the shared sweep stays as it is; checkpoints left out)."""
    runs = str(tmp_path_factory.mktemp("tensorboard") / "runs")
    shutil.copytree(os.path.join(tiny_sweep[0], "runs"), runs, ignore=shutil.ignore_patterns("checkpoints"))
    with TensorBoard(runs) as server:
        deadline = time.monotonic() + 120  # the server answers before it has read every event file
        while len(server.session_groups()) < len(RUN_IDS) and time.monotonic() < deadline:
            time.sleep(1.0)
        yield server


def test_the_hparams_api_has_one_session_per_run_with_knobs_metrics_and_verdict(board):
    listing = board.get("/data/plugins_listing")
    assert listing["hparams"]["enabled"] and listing["scalars"]["enabled"]
    experiment = board.hparams_experiment()
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {k.name for k in hparams.KNOBS} | {"verdict", "model.filters"} <= names
    with open(os.path.join(board.logdir, "w268_plain", "config.json")) as f:
        thresholds = json.load(f)["report"]["thresholds"]
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [
        c.name for c in hparams.final_metrics(thresholds)]

    groups = board.session_groups()
    assert sorted(s["name"] for g in groups for s in g["sessions"]) == RUN_IDS  # one session per run
    for group in groups:
        (session,) = group["sessions"]
        with open(os.path.join(board.logdir, session["name"], "result.json")) as f:
            result = json.load(f)
        assert group["name"] == session["name"]  # the table's "Trial ID" is the run id
        assert group["hparams"]["verdict"] == result["verdict"]
        assert group["hparams"]["derived.deepest_width"] in (268, 1040)
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert metrics["final/eval_top1"] == pytest.approx(result["eval_top1"])
        assert metrics["final/train_loss"] == pytest.approx(result["final_train_loss"])
        assert {"final/verdict_rank", "final/eval_top5", "final/eval_loss", "final/prepool_zero_frac"} <= set(metrics)


def test_the_scalars_come_in_groups_a_reader_scans(board):
    tags = board.get("/data/plugin/scalars/tags")["w268_scale1"]
    groups = {tag.split("/")[0] for tag in tags}
    assert groups == {"train", "optim", "dying", "eval", "probe", "final"}
    assert {"train/loss", "optim/lr", "optim/grad_norm", "dying/prepool_zero_frac", "dying/block_ratio/c/0",
            "eval/top1", "probe/prepool_zero_frac", "final/eval_top1"} <= set(tags)


@pytest.mark.skipif(find_chromium() is None and os.environ.get("CI") != "true",
                    reason="chromium is not installed (apt-get install chromium; .ci/run installs it in CI)")
def test_a_browser_draws_the_hparams_table_with_every_run(board):
    with Chromium() as browser:
        browser.open(f"{board.url}/#hparams")
        text = browser.wait_for_text(RUN_IDS, timeout=120)
    assert "No hparams data was found" not in text
    assert all(column in text for column in ("filter count", "variant", "verdict", "eval top-1", "not_learning"))
