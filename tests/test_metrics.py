"""The run's TensorBoard events: every scalar of a log step, exactly as clu's own SummaryWriter writes it."""

import numpy as np
from clu.metric_writers import SummaryWriter
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from inception_jax.training.metrics import RunWriter


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
        clus.write_scalars(step, {"train/loss": values["loss"], "train/block_ratio/c/0": values["block_ratio/c"][0],
                                  "train/block_ratio/c/1": values["block_ratio/c"][1], "train/lr": 0.05})
    ours.close()
    clus.close()
    seen = tensorboard_scalars(str(tmp_path / "ours"))
    assert seen == tensorboard_scalars(str(tmp_path / "clu"))
    assert seen["train/loss"] == ("scalars", [(3, 1.5), (4, 1.25)])  # NaN stays in metrics.jsonl, not in TensorBoard
    rows = [r for r in ours.history() if r["split"] == "train"]
    assert [r["step"] for r in rows] == [3, 4] and np.isnan(rows[0]["nonfinite"])
