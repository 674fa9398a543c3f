"""The main job as users type it: the ablation sweep end to end (tiny preset, through the command line), one row
rerun alone, finished rows skipped, interrupted ones resumed, and every spreadsheet refusal."""

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from inception_jax.config_files import load_config
from inception_jax.sweeps.main_job import config_rows
from inception_jax.sweeps.sweep_checks import check_rows
from inception_jax.sweeps.sweep_rows import SweepRow, format_cell, parse_cell, read_csv, validate_rows, write_csv
from inception_jax.training.run_folder import config_record
from inception_jax.validation import ConfigError
from tests.training_helpers import CONFIG, ROOT, main_job, read_json, read_text, tensorboard_sessions


def run_logs(workdir, *run_ids):
    """The rows' train.log files (a lane's process logs there, not to the sweep's log), joined."""
    return "".join(read_text(workdir, "runs", run_id, "train.log") for run_id in run_ids)


def final_numbers(run_dir):
    """What a row computed: its result's numbers and every logged loss."""
    result = read_json(run_dir, "result.json")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        losses = [(r["split"], r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]
    return {k: result[k] for k in ("eval_top1", "eval_loss", "final_train_loss")}, losses


def test_the_main_job_runs_every_row_then_writes_results_and_report(tiny_sweep):
    workdir, proc = tiny_sweep
    run_ids = [row.run_id for row in config_rows(f"{CONFIG}:preset=tiny")]
    assert run_ids == ["w268_plain", "w268_scale1", "w268_scale0.1", "w1040_plain", "w1040_scale1",
                       "w1040_scale0.1"]
    runs = os.listdir(os.path.join(workdir, "runs"))
    # The run folders, and TensorBoard's HParams experiment of the sweep (inception_jax/sweeps/hparams.py).
    assert sorted(r for r in runs if not r.startswith("events.out.tfevents.")) == sorted(run_ids)
    assert len([r for r in runs if r.endswith(".sweep_hparams")]) == 1 and len(runs) == len(run_ids) + 1
    with open(os.path.join(workdir, "results.csv")) as f:
        results = list(csv.DictReader(f))
    assert [r["run_id"] for r in results] == run_ids
    for r in results:
        # Four steps learn nothing: alive runs are not_learning, never "healthy".
        assert r["status"] == "finished" and r["steps"] == "4" and r["verdict"] in ("not_learning", "damaged", "died")
        assert r["deepest_width"] in ("268", "1040") and float(r["wall_time_s"]) > 0
    assert {r["variant"] for r in results} == {"plain", "scale=1", "scale=0.1"}
    threshold = load_config(f"{CONFIG}:preset=tiny").report.thresholds[0]  # the config's own thresholds
    assert f"steps_to_train_acc_{threshold:g}" in results[0]
    with open(os.path.join(workdir, "runs", "w1040_scale1", "config.json")) as f:
        config = json.load(f)
    assert config["run_id"] == "w1040_scale1" and config["derived"]["deepest_width"] == 1040
    assert config["sweep"]["overrides"]["model.residual_scale"] == 1.0
    assert config["cpu_threads"] == 1 and config["sweep"]["command"].endswith("--parallel_rows=2")
    assert read_json(workdir, "sweep.json")["command"] == config["sweep"]["command"]
    assert os.path.exists(os.path.join(workdir, "report", "report.html"))
    assert f"results table: {os.path.join(workdir, 'results.csv')}" in proc.stdout
    # Two lanes of one core; plain or residual and the scale are values: one program family per filter count,
    # compiled by a lane before its first row of it, which the lane's later rows reuse (a lane that takes the
    # other family later loads it from the cache another lane warmed).
    log = read_text(workdir, "sweep.log")  # the console shows none of it (tests/test_console.py)
    assert "2 lane(s) of 1 core(s) each" in log
    logs = run_logs(workdir, *run_ids)
    assert 2 <= logs.count("program families ahead of their runs") <= 4
    assert logs.count("are an earlier run's: nothing to compile") == 6
    assert "compiled the train" not in log  # the lanes' lines go to the rows' train.log


def test_finished_rows_are_skipped_and_an_interrupted_row_resumes(tiny_sweep, shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)
    metrics = os.path.join(workdir, "runs", "w268_plain", "metrics.jsonl")
    before = os.path.getmtime(metrics)
    # An interrupted row: its checkpoint exists, its result does not.
    os.remove(os.path.join(workdir, "runs", "w268_scale1", "result.json"))
    main_job(workdir=workdir, data_dir=shapes_tiny_dir)
    log = read_text(workdir, "sweep.log")
    assert "w268_plain: finished earlier, skipped" in log
    assert "resumed from" in run_logs(workdir, "w268_scale1")
    assert os.path.exists(os.path.join(workdir, "runs", "w268_scale1", "result.json"))
    assert os.path.getmtime(metrics) == before
    # The resumed run finished again: still one HParams session (TensorBoard would list a second one twice).
    assert tensorboard_sessions(os.path.join(workdir, "runs", "w268_scale1")) == ["w268_scale1"]


def test_a_row_gives_the_same_numbers_alone_or_beside_others_whatever_the_cache_holds(tiny_sweep, shapes_tiny_dir,
                                                                                        tmp_path):
    """In the 2-lane sweep, w1040_scale0.1 ran beside another row, on the program w1040_plain's lane compiled.
    Alone (--row), it runs in a lane of its own, after a 2-core run of the same row (cpu_threads=0) left its
    compiled programs in the same compilation cache. The same bits: a row computes on its cpu_threads cores
    wherever it runs, and a pinned process loads only programs compiled on as many threads."""
    workdir, _ = tiny_sweep
    cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the session's (tests/conftest.py), the sweep's too
    main_job("--row=w1040_scale0.1", "--config.cpu_threads=0", workdir=str(tmp_path / "two_cores"),
                         data_dir=shapes_tiny_dir)
    assert "lane(s) of" not in read_text(str(tmp_path / "two_cores"), "sweep.log")  # trained in its own process
    main_job("--row=w1040_scale0.1", workdir=str(tmp_path / "alone"), data_dir=shapes_tiny_dir)
    log = read_text(str(tmp_path / "alone"), "sweep.log")
    assert "[1/1] w1040_scale0.1: " in log and "1 lane(s) of 1 core(s) each" in log
    # The 2-core run's programs are in the cache's top folder; pinned processes keep theirs in cpu_threads-1/.
    assert os.listdir(os.path.join(cache, "cpu_threads-1")) and len(os.listdir(cache)) > 1
    numbers, losses = final_numbers(os.path.join(workdir, "runs", "w1040_scale0.1"))
    assert final_numbers(str(tmp_path / "alone" / "runs" / "w1040_scale0.1")) == (numbers, losses)
    assert len([loss for split, _, loss in losses if split == "train"]) == 4
    bad = main_job("--row=w1040_plan", workdir=workdir, data_dir=shapes_tiny_dir, check=False)
    assert bad.returncode == 2 and "--row='w1040_plan' is not a run_id of this sweep" in bad.stderr
    assert "did you mean ['w1040_plain'" in bad.stderr


def test_a_finished_row_of_another_config_is_refused_then_rerun_on_request(tiny_sweep, shapes_tiny_dir, tmp_path):
    """Rerunning finished rows with another learning rate must not report the old runs' numbers as the new ones."""
    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)
    results_before = read_text(workdir, "results.csv")
    refused = main_job("--config.train.learning_rate=0.1", workdir=workdir, data_dir=shapes_tiny_dir, check=False)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (message,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert message.startswith(f"error: 6 row(s) have a run of a different config in {workdir}/runs: sweep row "
                              "'w268_plain' [finished: train.learning_rate: stored 0.05, now 0.1]; sweep row "
                              "'w268_scale1' [finished: train.learning_rate: stored 0.05, now 0.1]; ")
    assert message.endswith(". A finished one's numbers would be reported as this sweep's. Use another --workdir, or "
                            f"--rerun_changed to move these run folders to {workdir}/replaced/ and run the rows again")
    assert "finished earlier, skipped" not in refused.stderr and read_text(workdir, "results.csv") == results_before

    rerun = main_job("--config.train.learning_rate=0.1", "--rerun_changed", "--row=w268_plain", workdir=workdir,
                     data_dir=shapes_tiny_dir)
    (replaced,) = os.listdir(os.path.join(workdir, "replaced"))
    assert replaced.startswith("w268_plain-")
    assert read_json(workdir, "replaced", replaced, "config.json")["train"]["learning_rate"] == 0.05
    assert read_json(workdir, "runs", "w268_plain", "config.json")["train"]["learning_rate"] == 0.1
    assert read_json(workdir, "runs", "w268_plain", "result.json")["status"] == "finished"
    # The other rows still hold the old config's runs: no table or report mixes the two.
    assert "results.csv and the report not written: rows not run now hold runs of another config: w268_scale1 " \
           "[finished: train.learning_rate: stored 0.05, now 0.1]" in rerun.stdout
    assert read_text(workdir, "results.csv") == results_before


def test_a_finished_row_asked_to_train_longer_is_not_reported_finished(tiny_sweep, shapes_tiny_dir, tmp_path):
    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)
    rows, configs = _tiny_rows(shapes_tiny_dir, **{"train.num_steps": 6})
    with pytest.raises(ConfigError, match=r"sweep row 'w268_plain' \[finished: training length: stored 4 steps, now "
                                          r"6\]"):
        check_rows(list(zip(rows, configs)), {"w268_plain"}, workdir)
    # Keys a resume may change (how often to log, evaluate, checkpoint) leave a finished run this row's.
    rows, configs = _tiny_rows(shapes_tiny_dir, **{"train.log_every_steps": 5, "train.checkpoint_every_steps": 4})
    assert check_rows(list(zip(rows, configs)), {r.run_id for r in rows}, workdir) == []


def test_an_unfinished_row_of_another_config_is_refused_before_any_row_trains(shapes_tiny_dir, tmp_path):
    rows, configs = _tiny_rows(shapes_tiny_dir)
    run_dir = tmp_path / "runs" / "w1040_plain"  # the last row, interrupted, under another width
    run_dir.mkdir(parents=True)
    stored = config_record(configs[3], run_id="w1040_plain", num_classes=10)
    stored["model"]["width_multiplier"] = 0.25
    (run_dir / "config.json").write_text(json.dumps({**stored, "derived": {"num_steps": 4}}))
    with pytest.raises(ConfigError, match=r"1 row\(s\) have a run of a different config in .*: sweep row "
                                          r"'w1040_plain' \[unfinished: model.width_multiplier: stored 0.25, now "
                                          r"0.125\]"):
        check_rows(list(zip(rows, configs)), {r.run_id for r in rows}, str(tmp_path))
    assert os.listdir(tmp_path) == ["runs"]


def _tiny_rows(data_dir, **overrides):
    base = load_config(os.path.join(ROOT, f"{CONFIG}:preset=tiny"))
    base.data.data_dir = data_dir
    base.update_from_flattened_dict(overrides)
    rows = config_rows(f"{CONFIG}:preset=tiny")
    return rows, validate_rows(base, rows)


def test_every_row_is_checked_against_its_data_before_the_first_trains(tmp_path, shapes_tiny_dir):
    sheet = tmp_path / "rows.csv"
    sheet.write_text("run_id,model.use_residual,data.eval_split\nplain,False,\nsmall,,validation[:20]\n")
    workdir = tmp_path / "w"
    proc = main_job(f"--rows_csv={sheet}", workdir=str(workdir), data_dir=shapes_tiny_dir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: sweep row 'small' ({sheet} line 3), column 'data.eval_split': train.eval_batch_size=40 is larger "
        f"than data.eval_split='validation[:20]' of 'shapes_textures/tiny' (20 examples in {shapes_tiny_dir}); use "
        "at most 20")
    assert not workdir.exists()  # no sweep.json, no run folder: nothing trained


def test_a_preempted_sweep_exits_75_and_writes_no_table(monkeypatch, tmp_path, shapes_tiny_dir):
    """Exit status 75 (EX_TEMPFAIL) tells a job array the sweep was preempted, not finished (0). (Rows run in this
    process with cpu_threads=0.)"""
    from inception_jax.sweeps import sweep
    from inception_jax.training.modes import RunResult

    monkeypatch.setattr(sweep, "train_and_evaluate", lambda config, run_dir: RunResult("preempted", 3, {}))
    config = load_config(os.path.join(ROOT, f"{CONFIG}:preset=tiny"))
    config.data.data_dir, config.cpu_threads = shapes_tiny_dir, 0
    rows = [(SweepRow("a", {}), config), (SweepRow("b", {}), config)]
    status = sweep.run_sweep(rows, rows, workdir=str(tmp_path), name="t", command="c")
    assert status == sweep.EXIT_PREEMPTED == 75
    assert not (tmp_path / "results.csv").exists()


def test_sigterm_to_a_parallel_sweep_checkpoints_its_lanes_exits_75_and_a_rerun_resumes(tiny_sweep, shapes_tiny_dir,
                                                                                         tmp_path):
    """SIGTERM to the command reaches every lane: each checkpoints its row (or, still compiling, does not start
    it) and the command exits 75. A lane killed outright is reported (exit 1), never waited for. The same command
    then finishes the rows."""
    import signal
    import time

    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)
    for run_id in ("w268_scale1", "w1040_scale1"):  # one row of each family to train again, side by side
        shutil.rmtree(os.path.join(workdir, "runs", run_id))
    os.remove(os.path.join(workdir, "results.csv"))

    def when_both_lanes_have_rows(proc, log_from):
        """This command's lines of sweep.log once it has handed a row to each lane ("[2/6] w268_scale1: {...}
        (lane 1)")."""
        seen, deadline = "", time.monotonic() + 600
        while len(re.findall(r"\(lane \d\)$", seen, re.M)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            with open(os.path.join(workdir, "sweep.log")) as f:
                seen = f.read()[log_from:]
        assert len(re.findall(r"\(lane \d\)$", seen, re.M)) == 2, seen[-3000:]
        return seen

    proc = main_job("--parallel_rows=2", workdir=workdir, data_dir=shapes_tiny_dir, popen=True)
    when_both_lanes_have_rows(proc, len(read_text(workdir, "sweep.log")))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 75, err[-3000:]
    assert re.search(r"preempted during w(268|1040)_scale1(, w(268|1040)_scale1)?; rerun the same command to "
                     r"resume", out), out
    assert not os.path.exists(os.path.join(workdir, "results.csv"))

    log_from = len(read_text(workdir, "sweep.log"))
    proc = main_job("--parallel_rows=2", workdir=workdir, data_dir=shapes_tiny_dir, popen=True)
    seen = when_both_lanes_have_rows(proc, log_from)
    pid = int(re.search(r"lane 1 on core\(s\) \[\d+\] \(pid (\d+)\)", seen).group(1))
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert re.search(r"error: sweep row 'w(268|1040)_scale1': its worker process \(lane 1, pid \d+\) died \(killed "
                     r"by SIGKILL\) before the row ended; its run folder keeps its last checkpoint", err), err[-3000:]

    main_job("--parallel_rows=2", workdir=workdir, data_dir=shapes_tiny_dir)
    with open(os.path.join(workdir, "results.csv")) as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["finished"] * 6


def test_a_row_another_command_finished_meanwhile_is_refused_when_skipped(tiny_sweep, shapes_tiny_dir, tmp_path):
    """Issue #33's race: two sweeps started together on one workdir, lr 0.05 and 0.01. The second passed its
    early check (run_sweep is what runs after it) while the first was still training; by the time it reaches a
    row, the row holds the first one's finished run. Checked again under the row's lock, it is refused: no
    results.csv, no report, and sweep.json does not name the second command."""
    from inception_jax.sweeps import sweep

    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)  # the first sweep's runs (lr 0.05)
    for name in ("results.csv", "report"):
        shutil.rmtree(os.path.join(workdir, name)) if name == "report" else os.remove(os.path.join(workdir, name))
    sweep_json = read_text(workdir, "sweep.json")
    rows, configs = _tiny_rows(shapes_tiny_dir, **{"train.learning_rate": 0.01})
    pairs = list(zip(rows, configs))
    with pytest.raises(ConfigError) as refused:
        sweep.run_sweep(pairs, pairs, workdir=workdir, name="ablation_scale", command="the second sweep")
    assert str(refused.value) == (
        f"sweep row 'w268_plain': its run folder {workdir}/runs/w268_plain now holds a run of a different config "
        "[finished: train.learning_rate: stored 0.05, now 0.01], written after this sweep checked it (another "
        "command on this workdir?); its numbers are not this sweep's, so results.csv and the report are not "
        f"written. Use another --workdir, or --rerun_changed to move it to {workdir}/replaced/ and run the row "
        "again")
    assert not os.path.exists(os.path.join(workdir, "results.csv"))
    assert not os.path.exists(os.path.join(workdir, "report"))
    assert json.loads(read_text(workdir, "sweep.json"))["command"] == json.loads(sweep_json)["command"]


def test_results_are_checked_again_right_before_they_are_written(tiny_sweep, shapes_tiny_dir, tmp_path,
                                                                  monkeypatch):
    """A folder replaced by another command after this one skipped or trained its row: no table, no report."""
    from inception_jax.sweeps import sweep

    workdir = str(tmp_path / "sweep")
    shutil.copytree(tiny_sweep[0], workdir)
    os.remove(os.path.join(workdir, "results.csv"))
    monkeypatch.setattr(sweep, "claim_row", lambda *args, **kwargs: True)  # skipped, as if before the replacement
    rows, configs = _tiny_rows(shapes_tiny_dir, **{"train.learning_rate": 0.01})
    pairs = list(zip(rows, configs))
    with pytest.raises(ConfigError, match=r"^6 row\(s\) of this sweep were replaced by another command's runs "
                                          r"while it ran: sweep row 'w268_plain' \[finished: train.learning_rate: "
                                          r"stored 0.05, now 0.01\]; .*results.csv and the report are not written"):
        sweep.run_sweep(pairs, pairs, workdir=workdir, name="ablation_scale", command="c")
    assert not os.path.exists(os.path.join(workdir, "results.csv"))


@pytest.mark.parametrize("flag, message", [
    ("--config.train.nonexistent=1", "error: --config.train.nonexistent=1: 'train.nonexistent' is not a key of "
                                     f"{CONFIG}:preset=tiny's config; closest valid keys: ['train.momentum', "
                                     "'train.num_steps']"),
    ("--config.trian.batch_size=4", "error: --config.trian.batch_size=4: 'trian.batch_size' is not a key of "
                                    f"{CONFIG}:preset=tiny's config; closest valid keys: ['train.batch_size', "
                                    "'train.eval_batch_size']"),
])
def test_an_unknown_config_key_is_one_line_naming_the_closest(tmp_path, shapes_tiny_dir, flag, message):
    proc = main_job(flag, workdir=str(tmp_path / "w"), data_dir=shapes_tiny_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == message


def test_a_workdir_that_cannot_be_written_is_one_line(shapes_tiny_dir):
    """/sys refuses new folders even to root (EPERM, EACCES to others; a read-only mount: EROFS, the same line)."""
    proc = main_job(workdir="/sys/inception_jax_sweep", data_dir=shapes_tiny_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert re.fullmatch(r"error: --workdir=/sys/inception_jax_sweep cannot be written: creating a folder in /sys "
                        r"failed \((Operation not permitted|Permission denied|Read-only file system)\); use a "
                        r"--workdir on a writable file system", proc.stderr.strip().splitlines()[-1])


def test_print_commands_gives_each_rows_exact_command(tmp_path):
    workdir = str(tmp_path / "my runs")  # pasted unquoted, a space made it write to ./my and exit 0
    overrides = ["--config.train.learning_rate=0.01", "--config.model.block_counts=(1, 1, 1)"]
    proc = subprocess.run([sys.executable, "-m", "inception_jax.main", f"--config={CONFIG}", "--print_commands",
                           f"--workdir={workdir}", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 30, proc.stderr[-3000:]  # 2 filter counts x 3 variants x 5 seeds
    assert lines[0] == (f"python -m inception_jax.main --config={CONFIG} '--workdir={workdir}' "
                        "--config.train.learning_rate=0.01 '--config.model.block_counts=(1, 1, 1)' "
                        "--row=w160_plain_seed0")
    # What a shell makes of the line is the command that ran (the command-line overrides were dropped).
    assert shlex.split(lines[0]) == ["python", "-m", "inception_jax.main", f"--config={CONFIG}",
                                     f"--workdir={workdir}", *overrides, "--row=w160_plain_seed0"]


def test_seeds_and_seed_offset_choose_the_rows_seeds():
    """A rerun with other seeds is one argument away; the default runs 5 per cell, cpu_long 3."""
    rows = config_rows(f"{CONFIG}:seed_offset=10")
    assert {row.overrides["seed"] for row in rows} == set(range(10, 15)) and rows[0].run_id == "w160_plain_seed10"
    assert {row.overrides["seed"] for row in config_rows(f"{CONFIG}:preset=cpu_long")} == {0, 1, 2}
    assert len(config_rows(f"{CONFIG}:seeds=3")) == 18


def test_the_committed_spreadsheet_is_the_default_sweep(tmp_path):
    """experiments/ablation_scale.csv is what --export_csv writes for the default preset (no drift)."""
    exported = tmp_path / "rows.csv"
    write_csv(str(exported), config_rows(CONFIG))
    with open(os.path.join(ROOT, "experiments", "ablation_scale.csv")) as f:
        assert exported.read_text() == f.read()
    rows = read_csv(os.path.join(ROOT, "experiments", "ablation_scale.csv"))
    assert rows == config_rows(CONFIG)


def test_cells_round_trip():
    for value in (0.1, 1, True, "sgd", "1", (1, 2, 2), (("reduction_b.b0_1", 298),), None):
        assert parse_cell(format_cell(value)) == value


@pytest.mark.parametrize("rows, message", [
    ([SweepRow("a", {"model.residual_scael": 0.1})],
     r"sweep row 'a': unknown column 'model.residual_scael'; closest valid keys: \['model.residual_scale'"),
    ([SweepRow("a", {"train.optimizer": "adam"})],
     r"sweep row 'a', column 'train.optimizer': train.optimizer='adam' is not one of \['rmsprop', 'sgd', 'adamw'\]"),
    ([SweepRow("a", {"model.residual_scale_mode": "rezero"})],
     r"sweep row 'a', column 'model.residual_scale_mode': .*'rezero' is not one of \['constant', 'learnable'"),
    ([SweepRow("a", {"train.batch_size": "big"})],
     r"sweep row 'a', column 'train.batch_size': value 'big' does not fit \(the config holds int 32\)"),
    ([SweepRow("a", {"model.residual_scale": -1.0})], r"sweep row 'a', column 'model.residual_scale': .*>= 0"),
    ([SweepRow("a", {"model.residual_scale": parse_cell("nan")})],
     r"sweep row 'a', column 'model.residual_scale': .*residual_scale='nan' must be one number"),
    ([SweepRow("a", {}), SweepRow("a", {"seed": 1})], r"sweep row 'a', column 'run_id': run_id 'a' appears twice"),
    ([SweepRow("a b", {})], r"sweep row 'a b', column 'run_id': 'a b' is not a valid run_id"),
])
def test_rows_are_validated_before_anything_runs(rows, message):
    with pytest.raises(ConfigError, match=message):
        validate_rows(load_config(os.path.join(ROOT, CONFIG)), rows)


def test_a_spreadsheet_saved_by_excel_reads_as_written(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark and writes empty rows as commas only."""
    sheet = tmp_path / "rows.csv"
    sheet.write_bytes("\ufeffrun_id,model.residual_scale,train.learning_rate\r\n"
                      "a,0.1,\r\n,,\r\n , ,\r\nb,,0.01\r\n,,\r\n".encode())
    assert read_csv(str(sheet)) == [SweepRow("a", {"model.residual_scale": 0.1}),
                                    SweepRow("b", {"train.learning_rate": 0.01})]
    assert [r.origin for r in read_csv(str(sheet))] == [f"{sheet} line 2", f"{sheet} line 5"]


@pytest.mark.parametrize("text, message", [
    ("id,seed\na,1\n", r"rows.csv line 1: the first column must be 'run_id', found \['id', 'seed'\]"),
    ("run_id,seed,seed\na,1,2\n", r"rows.csv line 1: columns \['seed'\] appear more than once"),
    ("run_id,seed\n,,\na,1,2\n", r"rows.csv line 3 \(run_id 'a'\): 3 cells but 2 columns"),
    ("run_id,seed\n\na,1\nb c,2\n", r"sweep row 'b c' \(.*rows.csv line 4\), column 'run_id': 'b c' is not a "
                                     r"valid run_id"),
    ("run_id,seed\na,1\n,2\n", r"sweep row '' \(.*rows.csv line 3\), column 'run_id': '' is not a valid run_id"),
    ("run_id,seed\na,1\na,2\n", r"sweep row 'a' \(.*rows.csv line 3\), column 'run_id': run_id 'a' appears twice "
                                 r"\(first at .*rows.csv line 2\)"),
    ("run_id,train.batch_size\na,\nb,big\n", r"sweep row 'b' \(.*rows.csv line 3\), column 'train.batch_size': "
                                             r"value 'big' does not fit"),
    ("run_id,seed\na,1\nb,2 \xe9t\xe9\n".encode("cp1252"), r"rows.csv line 3: not UTF-8 text \(byte b'\\xe9'\); "
                                                          r"save the spreadsheet as 'CSV UTF-8'"),
])
def test_every_spreadsheet_error_names_its_line(tmp_path, text, message):
    sheet = tmp_path / "rows.csv"
    sheet.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        validate_rows(load_config(os.path.join(ROOT, CONFIG)), read_csv(str(sheet)))


def test_a_bad_spreadsheet_stops_the_command_before_any_run(tmp_path, shapes_tiny_dir):
    sheet = tmp_path / "rows.csv"
    sheet.write_text("run_id,model.use_residual,train.learning_rat\nok,False,\nbad,,0.1\n")
    proc = main_job(f"--rows_csv={sheet}", workdir=str(tmp_path / "w"), data_dir=shapes_tiny_dir, check=False)
    assert proc.returncode == 2
    assert (f"sweep row 'bad' ({sheet} line 3): unknown column 'train.learning_rat'; closest valid keys: "
            "['train.learning_rate'") in proc.stderr
    assert not os.path.exists(tmp_path / "w" / "runs")


def test_the_report_names_the_command_as_the_user_typed_it():
    from inception_jax.sweeps.main_job import user_command

    main_py = os.path.join(ROOT, "inception_jax", "main.py")
    assert user_command([main_py, "--config=configs/ablation_scale.py", "--row=a b"]) == \
        "python -m inception_jax.main --config=configs/ablation_scale.py '--row=a b'"
    assert user_command(["tool.py", "--x=1"]) == "tool.py --x=1"


def test_the_timing_line_counts_only_this_commands_training(monkeypatch, tmp_path, capsys, shapes_tiny_dir):
    """A row resumed after a kill -9 reports the training of both commands in its wall_time_s; the line said "97 s
    of training in the 87 s since the command started (112 %)"."""
    from inception_jax import COMMAND_STARTED
    from inception_jax.sweeps import sweep
    from inception_jax.training.modes import RunResult

    def resumed_row(config, run_dir):
        os.makedirs(run_dir)
        return RunResult("finished", 4, {"wall_time_s": 97.0}, resumed_time_s=60.0)

    monkeypatch.setattr(sweep, "train_and_evaluate", resumed_row)
    monkeypatch.setattr(sweep, "write_results", lambda *a: "results.csv")
    monkeypatch.setattr(sweep, "write_report", lambda *a: type("R", (), {"summary": tmp_path / "s.md", "html": "r"}))
    (tmp_path / "s.md").write_text("summary")
    monkeypatch.setenv(COMMAND_STARTED, repr(__import__("time").time() - 87.0))
    row = SweepRow("a", {})
    config = load_config(os.path.join(ROOT, f"{CONFIG}:preset=tiny"))
    config.data.data_dir, config.cpu_threads = shapes_tiny_dir, 0  # rows in this process, where the patch is
    assert sweep.run_sweep([(row, config)], [(row, config)], workdir=str(tmp_path / "w"), name="t", command="c") == 0
    assert re.search(r"time: 37 s of training and evaluation in the 8[78] s since the command started \(4[23] %",
                     capsys.readouterr().out)
