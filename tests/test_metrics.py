"""The run's TensorBoard events: every scalar of a log step, exactly as clu's own SummaryWriter writes it."""

import numpy as np
from clu.metric_writers import SummaryWriter
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from inception_jax.training.metrics import RunWriter, tensorboard_tag


def tensorboard_scalars(logdir: str) -> dict:
    """What TensorBoard loads from a folder: {tag: (plugin name, [(step, value), ...])}."""
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return {tag: (acc.SummaryMetadata(tag).plugin_data.plugin_name,
                  [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)])
            for tag in acc.Tags()["tensors"]}


def test_one_event_per_log_step_reads_back_like_clus_one_op_per_scalar_writer(tmp_path):
    steps = {3: {"loss": 1.5, "block_ratio/c": [0.25, 0.5]}, 4: {"loss": 1.25, "block_ratio/c": [0.125, 1.0]}}
    ours = RunWriter(str(tmp_path / "ours"), resume_step=0)
    clus = SummaryWriter(str(tmp_path / "clu"))
    for step, values in steps.items():
        ours.write(step, "train", values, lr=0.05, nonfinite=float("nan"))
        clus.write_scalars(step, {"train/loss": values["loss"], "dying/block_ratio/c/0": values["block_ratio/c"][0],
                                  "dying/block_ratio/c/1": values["block_ratio/c"][1], "optim/lr": 0.05})
    ours.close()
    clus.close()
    seen = tensorboard_scalars(str(tmp_path / "ours"))
    assert seen == tensorboard_scalars(str(tmp_path / "clu"))
    assert seen["train/loss"] == ("scalars", [(3, 1.5), (4, 1.25)])  # NaN stays in metrics.jsonl, not in TensorBoard
    rows = [r for r in ours.history() if r["split"] == "train"]
    assert [r["step"] for r in rows] == [3, 4] and np.isnan(rows[0]["nonfinite"])


def test_tensorboard_groups_scalars_by_what_a_reader_looks_for():
    """metrics.jsonl keys stay as analysis reads them; only the TensorBoard tags are grouped (docs/run_folder.md)."""
    assert [tensorboard_tag("train", k) for k in ("loss", "accuracy", "images_per_sec", "time", "epoch")] == [
        "train/loss", "train/accuracy", "train/images_per_sec", "train/time", "train/epoch"]
    assert [tensorboard_tag("train", k) for k in ("lr", "grad_norm", "update_norm", "param_norm")] == [
        "optim/lr", "optim/grad_norm", "optim/update_norm", "optim/param_norm"]
    assert [tensorboard_tag("train", k) for k in ("prepool_zero_frac", "logit_std", "block_zero_frac/a",
                                                  "block_ratio/c", "residual_scale/b")] == [
        "dying/prepool_zero_frac", "dying/logit_std", "dying/block_zero_frac/a", "dying/block_ratio/c",
        "dying/residual_scale/b"]
    assert [tensorboard_tag("eval", k) for k in ("top1", "ema_top5", "bn_batch_top1", "time", "epoch")] == [
        "eval/top1", "eval/ema_top5", "eval/bn_batch_top1", None, None]
    assert tensorboard_tag("probe", "prepool_zero_frac") == "probe/prepool_zero_frac"
