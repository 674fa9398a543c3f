"""The figures as matplotlib objects: panels, titles, series and their points (analysis.convergence/dying).

Synthetic runs from analysis.synthetic_runs.example_specs: 60 train lines per run (0.5 s per step), so each curve has 60
points; imagenet2012 runs log eval every 10 steps.
"""

import math

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba

from analysis.convergence import convergence_figure
from analysis.dying import block_ratio_figure, dying_figure, learnable_curves, learnable_scale_figure, verdict_heatmap
from analysis.grouping import group_runs
from analysis.plotting import VERDICT_COLOURS
from analysis.runs import load_runs
from analysis.synthetic_runs import SyntheticRun, example_specs, write_sweep
from analysis.tables import verdict_cells


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    imagenet, shapes = group_runs(load_runs(write_sweep(tmp_path_factory.mktemp("sweep"), example_specs())).runs)
    return {"imagenet": imagenet, "shapes": shapes}


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_convergence_without_eval_has_train_panels_against_step_and_wall_time(groups):
    figure = convergence_figure(groups["shapes"], 64)
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["train loss vs step", "train top-1 error vs step", "train loss vs wall time",
                      "train top-1 error vs wall time"]
    assert "filter count 64" in figure.get_suptitle()
    for ax in figure.axes:
        lines = lines_by_label(ax)
        assert list(lines) == ["plain", "residual, scale 0.1 (2 seeds)", "residual, unscaled",
                               "residual, learnable scale"]
        assert all(len(line.get_xdata()) == 60 for line in lines.values())
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1  # one band: the 2-seed curve
    error = lines_by_label(figure.axes[1])["plain"]
    assert error.get_ydata()[-1] == pytest.approx(20.0)  # accuracy 0.8 -> 20 % error
    assert error.get_ydata()[0] == pytest.approx(90.0)
    assert lines_by_label(figure.axes[2])["plain"].get_xdata()[-1] == 30.0  # 60 steps of 0.5 s


def test_loss_is_on_a_log_axis_and_a_diverged_run_is_marked_where_it_stops(groups):
    """A run that diverges blows its loss up before the NaN: on a linear axis it would flatten every other curve."""
    figure = convergence_figure(groups["shapes"], 256)
    by_title = {ax.get_title(): ax for ax in figure.axes}
    for title in ("train loss vs step", "train loss vs wall time"):
        ax = by_title[title]
        assert ax.get_yscale() == "log"
        assert [t.get_text() for t in ax.texts] == ["diverged (w256_s1.0_seed2, step 30)"]
    assert by_title["train top-1 error vs step"].get_yscale() == "linear" and not by_title[
        "train top-1 error vs step"].texts
    assert dying_figure(groups["shapes"]).axes[5].get_yscale() == "log"


def test_convergence_with_eval_adds_top1_and_top5_error_panels(groups):
    figure = convergence_figure(groups["imagenet"], 512)
    assert len(figure.axes) == 8
    by_title = {ax.get_title(): ax for ax in figure.axes}
    top1 = lines_by_label(by_title["eval top-1 error vs step"])
    assert list(top1) == ["plain", "residual, scale 0.1"]
    assert top1["plain"].get_xdata().tolist() == [10, 20, 30, 40, 50, 60]
    assert top1["plain"].get_ydata().tolist() == pytest.approx([90, 90, 90, 25, 25, 25])
    top5 = lines_by_label(by_title["eval top-5 error vs wall time"])
    assert top5["residual, scale 0.1"].get_xdata().tolist() == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    assert top5["residual, scale 0.1"].get_ydata().tolist() == pytest.approx([70, 5, 5, 5, 5, 5])


def test_dying_figure_has_one_column_per_filter_count_and_one_line_per_variant(groups):
    figure = dying_figure(groups["shapes"])
    titles = [ax.get_title() for ax in figure.axes]
    assert len(figure.axes) == 6
    for width in (64, 256):
        for metric in ("pre-pool zero fraction", "dead-channel fraction", "train loss (mean of 10 lines)"):
            assert f"{metric}, filter count {width}" in titles
    zero_256 = lines_by_label(figure.axes[1])
    assert list(zero_256) == ["plain", "residual, scale 0.1", "residual, scale 0.3", "residual, unscaled (3 seeds)",
                              "residual, learnable scale", "z = 0.99 (dead)"]
    dying = zero_256["residual, unscaled (3 seeds)"].get_ydata()
    assert dying[9] == 0.5  # step 10: all alive
    assert dying[19] == pytest.approx((0.999 + 0.999 + 0.5) / 3)  # step 20: two seeds dead, one alive
    assert dying[-1] == 0.999  # step 60: the diverged seed stopped at 30, the dead ones remain
    assert figure.axes[1].get_ylim() == (-0.02, 1.02)
    assert list(lines_by_label(figure.axes[0])) == ["plain", "residual, scale 0.1 (2 seeds)", "residual, unscaled",
                                                    "residual, learnable scale", "z = 0.99 (dead)"]
    loss_256 = lines_by_label(figure.axes[5])
    assert loss_256["ln C = 2.303"].get_ydata()[0] == pytest.approx(math.log(10))
    diverged_mean = loss_256["residual, unscaled (3 seeds)"].get_ydata()
    assert np.isfinite(diverged_mean).all()  # the NaN seed is left out where it has no finite value


def test_heatmap_colours_each_cell_by_verdict_and_annotates_it(groups):
    group = groups["shapes"]
    figure = verdict_heatmap(group, verdict_cells(group))
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["plain", "residual, scale 0.1", "residual, scale 0.3",
                                                            "residual, unscaled", "residual, learnable scale"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["64", "256"]
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (2, 5, 4)
    np.testing.assert_allclose(image[1, 3], to_rgba(VERDICT_COLOURS["died"]))  # 256 × scale=1.0
    np.testing.assert_allclose(image[0, 0], to_rgba(VERDICT_COLOURS["healthy"]))
    np.testing.assert_allclose(image[0, 2], to_rgba("white"))  # 64 × scale=0.3: only a partial run
    texts = sorted(t.get_text() for t in ax.texts)
    assert "diverged 1/3\ndied 2/3\ntrain acc 0.100" in texts
    assert "healthy 2/2\ntrain acc 0.800" in texts
    assert len(texts) == 9
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["healthy", "died"]


def test_block_ratio_figure_has_a_panel_per_stage_and_filter_count(groups, tmp_path):
    figure = block_ratio_figure(groups["shapes"])
    assert [ax.get_title() for ax in figure.axes] == [f"stage {s}, filter count {w}" for s in "abc"
                                                      for w in (64, 256)]
    stage_c_256 = figure.axes[5]
    lines = lines_by_label(stage_c_256)
    assert "plain" not in lines and len(lines) == 4
    assert lines["residual, unscaled (3 seeds)"].get_ydata()[-1] == 50.0  # the dead seeds' last block
    assert stage_c_256.get_yscale() == "log"
    (plain_only,) = group_runs(load_runs(write_sweep(tmp_path, [SyntheticRun("p", 64, "plain")])).runs)
    assert block_ratio_figure(plain_only) is None and learnable_curves(plain_only) == {}


def test_learnable_scales_have_one_line_per_block(groups):
    group = groups["shapes"]
    assert list(learnable_curves(group)) == ["learnable"]
    figure = learnable_scale_figure(group, "learnable")
    assert [ax.get_title() for ax in figure.axes] == [f"stage {s}, filter count {w}" for s in "abc"
                                                      for w in (64, 256)]
    for ax in figure.axes:
        lines = lines_by_label(ax)
        assert list(lines) == ["block 1", "block 2"]
        assert lines["block 1"].get_ydata()[-1] == pytest.approx(0.1 + 0.06)
        assert lines["block 2"].get_ydata()[0] == pytest.approx(0.2 + 0.001)
