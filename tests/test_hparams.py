"""What a run and a sweep write for TensorBoard's HParams tab (inception_jax/sweeps/hparams.py), read back from
the event files, on synthetic run folders (analysis/synthetic_runs.py): no training, no TensorBoard server. The
server and the browser are tests/test_tensorboard.py."""

import glob
import json

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

from analysis.synthetic_runs import SyntheticRun, write_run
from inception_jax.sweeps import hparams
from inception_jax.training.verdicts import VERDICTS
from tests.training_helpers import tensorboard_sessions

THRESHOLDS = [0.3, 0.5]


def synthetic_run(runs_dir, spec):
    folder = write_run(runs_dir, spec)
    config = json.loads((folder / "config.json").read_text())
    config["report"] = {"thresholds": THRESHOLDS}
    config["derived"]["num_steps"] = spec.num_steps
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def finish(folder):
    """What the sweep runner does once a run has finished."""
    hparams.write_run_summary(str(folder))


def session_start(folder):
    for path in glob.glob(str(folder / "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
                    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in
                            info.hparams.items()}
    return None


def final_summaries(folder):
    """{tag: [(step, value), ...]} of the `final/` scalars, and the same of its texts."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {"scalars": {}, "text": {}}
    for tag in acc.Tags()["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        if tag.startswith(hparams.FINAL):
            out[plugin][tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto).item()) for e in acc.Tensors(tag)]
    return out["scalars"], out["text"]


def test_a_finished_run_has_one_session_with_its_knobs_final_numbers_and_verdict(tmp_path):
    spec = SyntheticRun("w256_s0.1", 256, "scale=0.1", learn_step=20, eval_every=10)
    folder = synthetic_run(tmp_path / "runs", spec)
    finish(folder)
    finish(folder)  # finished again (a resume of a finished run): the numbers again, never a second session
    assert tensorboard_sessions(str(folder)) == ["w256_s0.1"]
    start = session_start(folder)
    assert start["variant"] == "residual, scale 0.1" and start["verdict"] == "healthy"
    assert start["derived.deepest_width"] == 256.0 and start["model.residual_scale"] == 0.1
    assert start["model.use_residual"] is True and start["model.residual_scale_mode"] == "constant"
    assert start["derived.num_steps"] == 60.0 and start["train.optimizer"] == "sgd" and start["seed"] == 0.0
    # Eval top-1 is 0.1 until step 20, then 0.75 (eval every 10 steps); train accuracy's 10-line mean reaches 0.3
    # at step 22 and 0.5 at 25 (analysis/synthetic_runs.py).
    expected = {"verdict_rank": 0.0, "eval_top1": 0.75, "eval_top5": 0.95, "train_loss": 0.8,
                "prepool_zero_frac": 0.5, "eval_loss": 1.0, "steps_to_eval_top1_0.3": 20.0,
                "steps_to_eval_top1_0.5": 20.0, "steps_to_train_acc_0.3": 22.0, "steps_to_train_acc_0.5": 25.0}
    seen, texts = final_summaries(folder)
    assert sorted(seen) == sorted(c.name for c in hparams.final_metrics(THRESHOLDS))
    assert texts["final/verdict"][-1][0] == 60 and texts["final/verdict"][-1][1].startswith(b"healthy")
    for key, value in expected.items():
        (step, number), *_ = seen[hparams.FINAL + key]
        assert step == 60 and abs(number - value) < 1e-6, (key, seen[hparams.FINAL + key])


def test_a_dead_plain_run_has_no_scale_and_ranks_its_verdict(tmp_path):
    plain = synthetic_run(tmp_path / "runs", SyntheticRun("w256_plain", 256, "plain", death_step=12))
    finish(plain)
    start = session_start(plain)
    assert start["variant"] == "plain" and start["model.use_residual"] is False and start["verdict"] == "died"
    assert "model.residual_scale" not in start and "model.residual_scale_mode" not in start
    seen, _ = final_summaries(plain)
    assert seen[hparams.FINAL + "verdict_rank"] == [(60, float(VERDICTS.index("died")))]
    assert hparams.FINAL + "steps_to_train_acc_0.3" not in seen  # never reached: a blank cell


def test_the_sweep_experiment_lists_every_knob_value_and_is_one_file(tmp_path):
    runs = tmp_path / "runs"
    for spec in (SyntheticRun("w64_plain", 64, "plain"), SyntheticRun("w64_s1", 64, "scale=1.0", seed=1),
                 SyntheticRun("w256_learnable", 256, "learnable")):
        synthetic_run(runs, spec)
    first = hparams.write_sweep_experiment(str(runs))
    second = hparams.write_sweep_experiment(str(runs))  # rewritten after every run: the older file goes
    assert glob.glob(str(runs / "events.out.tfevents.*")) == [second] and first != second
    (experiment,) = [metadata.parse_experiment_plugin_data(v.metadata.plugin_data.content)
                     for event in EventFileLoader(second).Load() for v in event.summary.value
                     if v.tag == metadata.EXPERIMENT_TAG]
    infos = {h.name: h for h in experiment.hparam_infos}
    domain = {name: [v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for v in h.domain_discrete.values]
              for name, h in infos.items()}
    assert domain["variant"] == ["plain", "residual, learnable scale", "residual, unscaled"]
    assert domain["verdict"] == sorted(VERDICTS) and domain["derived.deepest_width"] == [64.0, 256.0]
    assert domain["model.residual_scale_mode"] == ["constant", "learnable"]
    assert infos["derived.deepest_width"].display_name == "filter count"
    # Shown by default: the knobs the runs vary and the verdict, not what the variant already says.
    assert {name for name, h in infos.items() if h.differs} == {"derived.deepest_width", "variant", "seed", "verdict"}
    assert [m.name.tag for m in experiment.metric_infos] == [c.name for c in hparams.final_metrics(THRESHOLDS)]


def test_without_a_config_no_experiment_is_written(tmp_path):
    assert hparams.write_sweep_experiment(str(tmp_path)) is None and list(tmp_path.iterdir()) == []
