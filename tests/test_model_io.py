"""Exported model directories (model_io): round trips in both layouts, the overrides load_model accepts and the
ones it refuses, and clear errors for directories that are not exported models."""

import json

import jax
import numpy as np
import pytest

from inception_jax.models import KNOB_DEFAULTS, model_options
from inception_jax.pretrained import model_io
from inception_jax.pretrained.importers.parity import forward_stages

TINY_IRV2 = dict(width_multiplier=0.1, block_counts=(2, 2, 2), num_classes=7)


def random_variables(opts, seed=0):
    """Weights with realistic scales (fan-in kernels, positive variances), so outputs stay finite."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, model_io.abstract_variables(opts))


def random_model(name, seed=0, **knobs):
    opts = model_options(name, **knobs)
    return model_io.model_from_variables(opts, random_variables(opts, seed))


def logits(model, images):
    return forward_stages(model, images)["logits"]  # jitted: one compile instead of hundreds of eager ops


def leaves_equal(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(-1, 1, (2, 75, 75, 3)).astype(np.float32)


@pytest.mark.parametrize("scan_blocks", [True, False])
def test_round_trip_keeps_weights_options_and_outputs(tmp_path, images, scan_blocks):
    model = random_model("inception_resnet_v2", scan_blocks=scan_blocks, **TINY_IRV2)
    model_io.save_model(tmp_path / "m", model, source="unit test")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format"] == "inception_jax.model/1" and meta["model"] == "inception_resnet_v2"
    assert meta["num_classes"] == 7 and meta["source"] == "unit test" and "labels" not in meta
    assert set(meta["knobs"]) == set(KNOB_DEFAULTS) and isinstance(meta["knobs"]["filters"], dict)
    assert meta["knobs"]["scan_blocks"] is scan_blocks

    opts, variables = model_io.load_variables(tmp_path / "m")
    assert opts == model.options
    leaves_equal(variables, model_io.model_variables(model))

    loaded = model_io.load_model(tmp_path / "m")
    assert loaded.options == model.options
    expected = logits(model, images)
    np.testing.assert_array_equal(logits(loaded, images), expected)
    other = model_io.load_model(tmp_path / "m", scan_blocks=not scan_blocks)
    assert other.options.scan_blocks is (not scan_blocks)
    np.testing.assert_allclose(logits(other, images), expected, rtol=1e-5, atol=1e-6)


def test_plain_network_and_learnable_scales_round_trip(tmp_path):
    v4 = random_model("inception_v4", width_multiplier=0.1, block_counts=(1, 1, 1), num_classes=3)
    model_io.save_model(tmp_path / "v4", v4)
    assert model_io.load_model(tmp_path / "v4").options == v4.options  # residual knobs of a plain net round-trip

    v1 = random_model("inception_resnet_v1", width_multiplier=0.1, block_counts=(2, 1, 1), num_classes=3,
                      residual_scale_mode="learnable_channel")
    model_io.save_model(tmp_path / "v1", v1)
    _, variables = model_io.load_variables(tmp_path / "v1")
    assert variables["params"]["blocks_a"]["residual_scale"].shape == (2, 26)  # a parameter: saved
    leaves_equal(variables, model_io.model_variables(v1))


def test_shape_keeping_overrides_are_applied(tmp_path):
    model = random_model("inception_resnet_v2", **TINY_IRV2)
    model_io.save_model(tmp_path / "m", model)
    loaded = model_io.load_model(tmp_path / "m", dropout_rate=0.0, bn_momentum=0.99, residual_scale=0.3,
                                 dtype="bfloat16", param_dtype="bfloat16")
    o = loaded.options
    assert (o.dropout_rate, o.bn_momentum, o.residual_scale, o.dtype) == (0.0, 0.99, (0.3, 0.3, 0.3), "bfloat16")
    assert loaded.head.fc.kernel[...].dtype == jax.numpy.bfloat16
    assert loaded.blocks_a.b0_0.bn.mean[...].dtype == jax.numpy.float32  # statistics stay float32


@pytest.mark.parametrize("override,message", [
    (dict(num_classes=10), r"head/fc/kernel: expected \(154, 10\), found \(154, 7\)"),
    (dict(width_multiplier=0.2), "change the parameters"),
    (dict(block_counts=(1, 2, 2)), "change the parameters"),
    (dict(aux_head=True), "missing params/aux/"),
    (dict(bn_scale=True), "missing params/.*bn/scale"),
])
def test_overrides_that_change_shapes_are_refused(tmp_path, override, message):
    model_io.save_model(tmp_path / "m", random_model("inception_resnet_v2", **TINY_IRV2))
    with pytest.raises(ValueError, match=message):
        model_io.load_model(tmp_path / "m", **override)


def test_invalid_overrides_name_the_knob(tmp_path):
    model_io.save_model(tmp_path / "m", random_model("inception_resnet_v2", **TINY_IRV2))
    with pytest.raises(TypeError, match=r"unknown knob 'bn_scael'.*did you mean 'bn_scale'"):
        model_io.load_model(tmp_path / "m", bn_scael=True)
    with pytest.raises(ValueError, match=r"dropout_rate=2\.0 is out of range"):
        model_io.load_model(tmp_path / "m", dropout_rate=2.0)
    v4 = random_model("inception_v4", width_multiplier=0.1, block_counts=(1, 1, 1), num_classes=3)
    model_io.save_model(tmp_path / "v4", v4)
    with pytest.raises(ValueError, match="no residual blocks"):
        model_io.load_model(tmp_path / "v4", residual_scale=0.2)


def test_save_refuses_to_overwrite_and_checks_labels(tmp_path):
    model = random_model("inception_resnet_v2", **TINY_IRV2)
    model_io.save_model(tmp_path / "m", model, labels=[f"kind {i}" for i in range(7)])
    assert model_io.read_meta(tmp_path / "m")["labels"][6] == "kind 6"
    with pytest.raises(FileExistsError, match="already holds"):
        model_io.save_model(tmp_path / "m", model)
    model_io.save_model(tmp_path / "m", model, source="again", overwrite=True)
    assert model_io.read_meta(tmp_path / "m")["source"] == "again"
    with pytest.raises(ValueError, match="3 labels given for a model with num_classes=7"):
        model_io.save_model(tmp_path / "n", model, labels=["a", "b", "c"])


def test_not_an_exported_model_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        model_io.load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model\.json not found"):
        model_io.load_model(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        model_io.load_variables(bad)
    (bad / "model.json").write_text(json.dumps({"format": "something/2", "model": "inception_v4"}))
    with pytest.raises(ValueError, match=r"format 'something/2' is not 'inception_jax\.model/1'"):
        model_io.load_variables(bad)
    (bad / "model.json").write_text(json.dumps({"format": model_io.FORMAT, "model": "inception_v5",
                                                "num_classes": 3, "knobs": {}}))
    with pytest.raises(ValueError, match="unknown model id 'inception_v5'"):
        model_io.load_variables(bad)
    (bad / "model.json").write_text(json.dumps({"format": model_io.FORMAT, "model": "inception_v4",
                                                "num_classes": 3, "knobs": {"width_multiplier": 0.1}}))
    with pytest.raises(FileNotFoundError, match="has no weights"):
        model_io.load_variables(bad)


def test_weights_that_do_not_match_model_json_are_refused(tmp_path):
    model_io.save_model(tmp_path / "m", random_model("inception_resnet_v2", **TINY_IRV2))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["num_classes"] = 8
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"head/fc/bias: expected \(8,\), found \(7,\)"):
        model_io.load_variables(tmp_path / "m")
