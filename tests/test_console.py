"""The console of a sweep (sweeps/console.py, eta.py, console_log.py): a scripted sweep shown on a pipe, the ETA on
synthetic timelines, where log records go, and the tiny sweep end to end: a short stdout, the detail in sweep.log."""

import io
import json
import logging
import os

import pytest

from inception_jax.sweeps import console_log
from inception_jax.sweeps.console import SweepConsole, last_train_line
from inception_jax.sweeps.eta import EtaCheck, SweepEstimate
from inception_jax.wording import format_duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def write_metrics(run_dir, step, seconds, loss, *, half_line=False):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, "split": "train", "time": seconds, "loss": loss}) + "\n")
        f.write(json.dumps({"step": step, "split": "eval", "time": seconds, "top1": 0.5}) + "\n")
        if half_line:
            f.write('{"step": 99, "split": "tr')


RESULTS = {"healthy": 0.623, "died": 0.1, "not_learning": 0.095}


def scripted_sweep(tmp_path, rows, *, lanes=1, steps=600, seconds_per_step=0.07, startup=4.0):
    """Run `rows` through a console on a pipe: every row started, logging a step every 10 s of wall time, finished."""
    clock, stream = FakeClock(), io.StringIO()
    console = SweepConsole(stream, layout="3 cells x 2 seeds", log_file="/w/sweep.log", live=False, poll_s=0,
                           quiet_s=30, clock=clock)
    console.planned(name="ablation_scale", rows=rows, pending=rows, lanes=lanes, steps=dict.fromkeys(rows, steps))
    verdicts = list(RESULTS)
    for i in range(0, len(rows), lanes):
        batch = rows[i:i + lanes]
        for lane, run_id in enumerate(batch):
            console.row_started(run_id, str(tmp_path / run_id), lane)
        clock.now += startup
        for t in range(10, int(steps * seconds_per_step) + 1, 10):
            clock.now += 10
            for run_id in batch:
                write_metrics(str(tmp_path / run_id), int(t / seconds_per_step), float(t), 2.0 - t / 100)
            console.poll()
        for j, run_id in enumerate(batch):
            verdict = verdicts[(i + j) % len(verdicts)]
            result = {"status": "finished", "steps": steps, "wall_time_s": steps * seconds_per_step,
                      "verdict": verdict, "eval_top1": RESULTS[verdict]}
            console.row_finished(run_id, result, startup + steps * seconds_per_step)
    console.close()
    return stream.getvalue()


def test_a_sweep_on_a_pipe_is_a_plan_a_line_per_row_and_an_occasional_progress_line(tmp_path):
    rows = [f"w{w}_{v}_seed{s}" for w in (160, 640) for v in ("plain", "scale1", "scale0.3") for s in (0, 1)]
    out = scripted_sweep(tmp_path, rows)
    lines = out.splitlines()
    assert "\r" not in out and len(lines) <= 2 + len(rows) + 25, out
    assert lines[0] == ("sweep ablation_scale: 12 rows (3 cells x 2 seeds), 600 steps each, one at a time; ETA once "
                        "the first rows have trained a few steps")
    assert lines[1].startswith("log: /w/sweep.log")
    finished = [line for line in lines if line.startswith("[")]
    assert len(finished) == len(rows)
    assert finished[0].startswith("[ 1/12] w160_plain_seed0     healthy         top-1  62.3 %        46 s   ETA ")
    assert "died            top-1  10.0 %" in finished[1] and "ETA" not in finished[-1]
    progress = [line for line in lines if line.startswith("... ")]
    assert progress and all("ETA" in line for line in progress[1:]), out
    assert any("rows done; w160_plain_seed0 step " in line and " loss " in line for line in progress), out


def test_lanes_show_every_running_row(tmp_path):
    rows = [f"r{i}" for i in range(4)]
    out = scripted_sweep(tmp_path, rows, lanes=2, steps=100, seconds_per_step=1.0)
    assert any("r0 step" in line and "r1 step" in line for line in out.splitlines() if line.startswith("... "))
    assert len([line for line in out.splitlines() if line.startswith("[")]) == 4


def test_the_live_display_draws_bars_and_leaves_only_the_rows_lines(tmp_path):
    clock, stream = FakeClock(), io.StringIO()
    console = SweepConsole(stream, live=True, poll_s=0, clock=clock)
    console.planned(name="s", rows=["a", "b"], pending=["a", "b"], lanes=1, steps={"a": 10, "b": 10})
    console.row_started("a", str(tmp_path / "a"), 0)
    write_metrics(str(tmp_path / "a"), 5, 5.0, 1.5)
    clock.now += 6
    console.poll()
    assert "sweep 0/2 rows |" in stream.getvalue() and "a step 5/10 loss 1.500" in stream.getvalue()
    console.row_finished("a", {"verdict": "healthy", "eval_top1": 0.5}, 11.0)
    console.close()
    assert "[1/2] a  healthy         top-1  50.0 %" in stream.getvalue()


def test_last_train_line_skips_eval_lines_and_a_half_written_line(tmp_path):
    write_metrics(str(tmp_path), 3, 1.5, 2.25)
    write_metrics(str(tmp_path), 4, 2.0, 2.0, half_line=True)
    assert last_train_line(str(tmp_path / "metrics.jsonl")) == {"step": 4, "split": "train", "time": 2.0, "loss": 2.0}
    assert last_train_line(str(tmp_path / "missing.jsonl")) is None


# ------------------------------------------------------------------------------------------------- the ETA
def serial_timeline(durations, lanes=1):
    """(start, end, lane) of rows run in order, each on the lane that frees first."""
    free, spans = [0.0] * lanes, []
    for d in durations:
        lane = free.index(min(free))
        spans.append((free[lane], free[lane] + d, lane))
        free[lane] += d
    return spans


def estimate_at(now, *, steps, rates, startups, lanes):
    """(ETA, true time left) at `now` for rows run in order on `lanes` lanes: row i spends startups[i] seconds
    before its clock starts, then steps at rates[i] seconds each, logging every step."""
    rows = [f"r{i}" for i in range(len(rates))]
    spans = serial_timeline([s + steps * r for s, r in zip(startups, rates, strict=True)], lanes)
    estimate = SweepEstimate(dict.fromkeys(rows, steps), rows, lanes)
    for run_id, (start, stop, lane), rate, startup in zip(rows, spans, rates, startups, strict=True):
        if start > now:
            continue
        estimate.started(run_id, start, lane)
        if stop <= now:
            estimate.finished(run_id, stop - start, steps=steps, train_seconds=steps * rate)
        elif now - start > startup:
            step = int((now - start - startup) / rate)
            estimate.progressed(run_id, step, step * rate, start + startup + step * rate)
    return estimate.remaining(now), max(e for _, e, _ in spans) - now


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_the_eta_is_within_20_percent_half_way_when_the_second_half_is_slower(lanes):
    """The default sweep's shape: 6 rows of the narrow network, then 6 of the wide one, whose steps cost 15 %
    more; every row 600 steps after 4 s of start-up. Checked when half the rows have finished and at half time."""
    timeline = {"steps": 600, "rates": [0.061] * 6 + [0.070] * 6, "startups": [4.0] * 12, "lanes": lanes}
    spans = serial_timeline([4.0 + 600 * r for r in timeline["rates"]], lanes)
    end = max(e for _, e, _ in spans)
    half_rows = sorted(e for _, e, _ in spans)[5]  # the sixth row ends
    for now in (half_rows, end / 2):
        eta, left = estimate_at(now, **timeline)
        assert abs(eta - left) <= 0.2 * left, (now, eta, left)
    assert estimate_at(0.0, **timeline)[0] is None  # nothing measured yet
    assert estimate_at(end, **timeline)[0] == 0.0


def test_the_first_rows_compile_is_not_charged_to_every_row_after_them():
    """The default sweep's shape on 2 lanes: each lane's first row compiles for 45 s before its clock starts, the
    rows after it start in 2 s. Estimates made while the first rows train and once they have finished are within
    20 % of the time left (charging every row the first rows' start-up doubled the first estimate)."""
    timeline = {"steps": 450, "rates": [0.055] * 30, "startups": [45.0] * 2 + [2.0] * 28, "lanes": 2}
    first_end = 45.0 + 450 * 0.055
    for now in (45.0 + 450 * 0.055 / 2, first_end + 1.0, first_end + 10.0):
        eta, left = estimate_at(now, **timeline)
        assert abs(eta - left) <= 0.2 * left, (now, eta, left)


def test_a_running_rows_own_rate_and_the_time_since_its_last_line_count():
    estimate = SweepEstimate({"a": 100, "b": 100}, ["a", "b"], 1)
    estimate.started("a", 0.0)
    estimate.progressed("a", 50, 50.0, 55.0)  # 1 s per step, after 5 s of start-up (compiling, b will not)
    assert estimate.remaining(55.0) == pytest.approx(50 + 100)
    assert estimate.remaining(65.0) == pytest.approx(40 + 100)
    estimate.finished("a", 106.0, steps=100, train_seconds=100.0)
    estimate.started("b", 106.0)
    assert estimate.remaining(106.0) == pytest.approx(100.0)  # a compiled: b's start-up is known once it logs
    estimate.progressed("b", 10, 10.0, 118.0)  # 2 s of start-up
    assert estimate.remaining(118.0) == pytest.approx(90.0)
    estimate.skipped("b")
    assert estimate.remaining(106.0) == 0.0


def test_a_resumed_row_does_not_make_the_start_up_zero():
    """A resumed row's clock holds its earlier commands' training, so its wall time minus its clock is <= 0: not a
    start-up. The rows still to start keep the 5 s measured on a row that was not resumed."""
    estimate = SweepEstimate(dict.fromkeys("abcd", 100), list("abcd"), 1)
    estimate.started("a", 0.0)
    estimate.finished("a", 110.0, steps=100, train_seconds=100.0)  # the lane's first: compiled
    estimate.started("b", 110.0)
    estimate.finished("b", 105.0, steps=100, train_seconds=100.0)  # 5 s of start-up
    estimate.started("c", 215.0)
    estimate.progressed("c", 50, 110.0, 230.0)  # resumed at step 40: 60 s of its clock were an earlier command's
    assert estimate.startup() == pytest.approx(5.0)
    estimate.finished("c", 70.0, steps=100, train_seconds=160.0)
    assert estimate.startup() == pytest.approx(5.0)


def test_the_eta_check_reports_both_half_way_estimates():
    check = EtaCheck(total_rows=4)
    for t in range(0, 100, 5):
        check.sample(float(t), 100.0 - t)
    assert not check.rows_done(1, 40.0, 60.0)
    assert check.rows_done(2, 50.0, 55.0) and not check.rows_done(3, 75.0, 25.0)
    assert check.report(100.0) == [
        "ETA at 50 % of rows (t=50 s): 55 s; actual remaining from 50 %: 50 s (error +10 %)",
        "ETA at half time (t=50 s of 100 s): 50 s; actual remaining: 50 s (error +0 %)"]
    late = EtaCheck(total_rows=2)
    late.sample(90.0, 10.0)
    assert late.report(100.0) == ["no ETA at half time (t=50 s of 100 s): no row had trained yet"]


def test_durations_read_as_people_say_them():
    assert [format_duration(s) for s in (4.4, 59.6, 250, 3600 * 2 + 300)] == ["4 s", "1 min 00 s", "4 min 10 s",
                                                                             "2 h 05 min"]


# -------------------------------------------------------------------------------------------- the log file
@pytest.fixture
def routed_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.setLevel(logging.INFO)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    console_log._Routing.buffer = console_log._Routing.console = console_log._Routing.file = None


@pytest.mark.parametrize("to_console", [False, True])
def test_the_log_file_gets_everything_the_console_only_what_a_user_acts_on(tmp_path, routed_logging, to_console):
    stream = io.StringIO()
    console_log.install(to_console=to_console, stream=stream)
    logging.getLogger("inception_jax.x").info("before the file: kept")
    path = console_log.to_file(str(tmp_path / "w" / "sweep.log"))
    logging.getLogger("absl").info("Load dataset info from /data")
    logging.getLogger("absl").warning("Variant folder /data/x has no dataset_info.json")
    logging.getLogger("inception_jax.x").warning("the disk is nearly full")
    text = (tmp_path / "w" / "sweep.log").read_text()
    assert path == console_log.log_path() == str(tmp_path / "w" / "sweep.log")
    for message in ("before the file: kept", "Load dataset info", "Variant folder", "the disk is nearly full"):
        assert message in text
    shown = stream.getvalue()
    if to_console:
        assert "Load dataset info" in shown and "before the file: kept" in shown
    else:
        assert shown == "WARNING: the disk is nearly full\n"


# ------------------------------------------------------------------------------------------- end to end
def test_the_tiny_sweep_prints_a_short_console_and_logs_the_detail(tmp_path, shapes_tiny_dir):
    from tests.test_sweep import main_job

    proc = main_job(workdir=str(tmp_path), data_dir=shapes_tiny_dir)
    out = proc.stdout + proc.stderr
    assert len(out.splitlines()) <= 40 and "\r" not in out, out
    assert "Load dataset info" not in out and "parameters:" not in out and "Unable to initialize backend" not in out
    lines = out.splitlines()
    assert lines[0].startswith("sweep ablation_scale: 6 rows (6 cells, seed 0), 4 steps each")
    assert lines[1].startswith(f"log: {tmp_path}/sweep.log")
    assert len([line for line in lines if line.startswith("[") and "top-1" in line]) == 6
    assert lines[-1] == f"log: {tmp_path}/sweep.log"
    log = (tmp_path / "sweep.log").read_text()
    assert "Load dataset info" in log and "ETA at 50 % of rows" in log
    # The rows train in lanes (cpu_threads=1), processes of their own that log to each row's train.log: a
    # parameter table per network a lane trains (2 filter counts), not one per row.
    rows = "".join((path / "train.log").read_text() for path in (tmp_path / "runs").iterdir() if path.is_dir())
    assert 2 <= rows.count("parameters:\n") <= 4
