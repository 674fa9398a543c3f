"""The converters' name maps and refusals, and the convert command end to end (from a Keras .h5 written here).

Runs without torch: timm state dicts are synthesised as numpy arrays from our own variables through the inverse of
docs/architecture.md §8.1's per-tensor rules (the real-timm comparison is tests/test_parity_timm.py).
"""

import os
import re
import subprocess
import sys
import tomllib

import jax
import numpy as np
import pytest

from inception_jax.models import model_options
from inception_jax.models.stacking import to_unrolled
from inception_jax.pretrained import model_io
from inception_jax.pretrained.convert import convert
from inception_jax.pretrained.importers import (
    ImportMismatchError,
    import_keras,
    import_timm,
    keras_file_classes,
    timm_unit_map,
)
from tests.training_helpers import ROOT

CONVERT = (sys.executable, "-m", "inception_jax.pretrained.convert")  # the command, as a user runs it

# Spot checks straight from the module maps of docs/architecture.md §8.2 / §8.3.
SPEC_ROWS = {
    "inception_v4": [
        ("convbn", "features.0", "stem/conv1a"), ("convbn", "features.3.conv", "stem/mixed3a/b1_0"),
        ("convbn", "features.4.branch1.3", "stem/mixed4a/b1_3"), ("convbn", "features.5.conv", "stem/mixed5a/b0_0"),
        ("convbn", "features.6.branch3.1", "blocks_a_0/b3_1"), ("convbn", "features.10.branch0", "reduction_a/b0_0"),
        ("convbn", "features.17.branch2.4", "blocks_b_6/b2_4"), ("convbn", "features.18.branch1.3", "reduction_b/b1_3"),
        ("convbn", "features.19.branch1_1a", "blocks_c_0/b1_1a"),
        ("convbn", "features.21.branch2_3b", "blocks_c_2/b2_3b"),
        ("convbn", "features.21.branch3.1", "blocks_c_2/b3_1"),
        ("dense", "last_linear", "head/fc")],
    "inception_resnet_v2": [
        ("convbn", "conv2d_4a", "stem/conv4a"), ("convbn", "mixed_5b.branch3.1", "stem/mixed5b/b3_1"),
        ("convbn", "repeat.9.branch2.2", "blocks_a_9/b2_2"), ("up", "repeat.9.conv2d", "blocks_a_9/up"),
        ("convbn", "mixed_6a.branch1.2", "reduction_a/b1_2"), ("convbn", "repeat_1.19.branch1.2", "blocks_b_19/b1_2"),
        ("convbn", "mixed_7a.branch2.2", "reduction_b/b2_2"), ("up", "repeat_2.8.conv2d", "blocks_c_8/up"),
        ("convbn", "block8.branch1.1", "blocks_c_9/b1_1"), ("up", "block8.conv2d", "blocks_c_9/up"),
        ("convbn", "conv2d_7b", "final_conv"), ("dense", "classif", "head/fc")],
}
COUNTS = {"inception_v4": (149, 0, 896), "inception_resnet_v2": (204, 40, 1306)}  # ConvBN, UP, tensors (§8.1)


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_timm_name_map_follows_the_spec_tables(name):
    rows = timm_unit_map(model_options(name, scan_blocks=False))
    for row in SPEC_ROWS[name]:
        assert row in rows
    kinds = [kind for kind, _, _ in rows]
    convbn, up, tensors = COUNTS[name]
    assert (kinds.count("convbn"), kinds.count("up"), kinds.count("dense")) == (convbn, up, 1)
    assert 6 * convbn + 2 * up + 2 == tensors
    assert len({prefix for _, prefix, _ in rows}) == len(rows) == len({path for _, _, path in rows})


def random_unrolled_variables(name, bn_scale, seed=0):
    rng = np.random.default_rng(seed)
    abstract = model_io.abstract_variables(model_options(name, bn_scale=bn_scale, scan_blocks=False))
    return jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32), abstract)


def timm_state_dict(name, variables, bn_scale):
    """The inverse of the importer's §8.1 rules: our unrolled variables -> a timm-named numpy state dict."""
    def leaf(collection, path):
        node = variables[collection]
        for key in path.split("/"):
            node = node[key]
        return node

    out = {}
    for kind, prefix, path in timm_unit_map(model_options(name, scan_blocks=False)):
        if kind == "convbn":
            out[f"{prefix}.conv.weight"] = leaf("params", f"{path}/conv/kernel").transpose(3, 2, 0, 1)
            bias = leaf("params", f"{path}/bn/bias")
            out[f"{prefix}.bn.weight"] = leaf("params", f"{path}/bn/scale") if bn_scale else np.ones_like(bias)
            out[f"{prefix}.bn.bias"] = bias
            out[f"{prefix}.bn.running_mean"] = leaf("batch_stats", f"{path}/bn/mean")
            out[f"{prefix}.bn.running_var"] = leaf("batch_stats", f"{path}/bn/var")
            out[f"{prefix}.bn.num_batches_tracked"] = np.array(0, np.int64)
        elif kind == "up":
            out[f"{prefix}.weight"] = leaf("params", f"{path}/kernel").transpose(3, 2, 0, 1)
            out[f"{prefix}.bias"] = leaf("params", f"{path}/bias")
        else:
            out[f"{prefix}.weight"] = leaf("params", f"{path}/kernel").T
            out[f"{prefix}.bias"] = leaf("params", f"{path}/bias")
    return out


def assert_same_tree(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name,bn_scale", [("inception_v4", False), ("inception_resnet_v2", True)])
def test_timm_state_dict_round_trips_in_both_layouts(name, bn_scale):
    ours = random_unrolled_variables(name, bn_scale)
    state = timm_state_dict(name, ours, bn_scale)
    convbn, _, tensors = COUNTS[name]
    for scan_blocks in (False, True):
        imported = import_timm(state, name, bn_scale=bn_scale, scan_blocks=scan_blocks)
        assert (imported.tensors_read, imported.tensors_used, imported.tensors_dropped) == (
            tensors, tensors - convbn, convbn)
        got = imported.variables if not scan_blocks else {k: to_unrolled(v) for k, v in imported.variables.items()}
        assert_same_tree(got, ours)


@pytest.fixture(scope="module")
def v4_state():
    return timm_state_dict("inception_v4", random_unrolled_variables("inception_v4", False, seed=1), False)


def test_timm_mismatches_name_every_offending_tensor(v4_state):
    state = dict(v4_state)
    del state["features.17.branch2.4.bn.running_var"]
    state["features.22.conv.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    state["features.0.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    with pytest.raises(ImportMismatchError) as e:
        import_timm(state, "inception_v4")
    message = str(e.value)
    assert "features.17.branch2.4.bn.running_var (for blocks_b_6/b2_4)" in message
    assert "batch_stats/blocks_b_6/b2_4/bn/var (256,)" in message  # the leaf left empty
    assert re.search(r"left unused \(1\):\n\s+features\.22\.conv\.weight", message)
    assert ("features.0.conv.weight (32, 3, 5, 5) ((5, 5, 3, 32) in our layout) does not fit "
            "params/stem/conv1a/conv/kernel, which is (3, 3, 3, 32)") in message


def test_timm_gamma_model_and_head_rules(v4_state):
    state = dict(v4_state)
    state["features.8.branch1.1.bn.weight"] = np.full(96, 1.25, np.float32)
    with pytest.raises(ImportMismatchError, match=r"features\.8\.branch1\.1\.bn\.weight: gamma is not all ones "
                                                  r"\(max \|gamma - 1\| = 0\.25\).*bn_scale=True"):
        import_timm(state, "inception_v4", bn_scale=False)
    with pytest.raises(ImportMismatchError, match=r"not a timm inception_resnet_v2 state dict \(it looks like timm "
                                                  r"inception_v4\)"):
        import_timm(v4_state, "inception_resnet_v2")
    with pytest.raises(ValueError, match="model='inception_resnet_v1' has no timm weights"):
        import_timm(v4_state, "inception_resnet_v1")
    with pytest.raises(ValueError, match="drop_background=True needs a 1001-class head"):
        import_timm(v4_state, "inception_v4", drop_background=True)

    slim = dict(v4_state)  # a slim-style head: row 0 is "background"
    slim["last_linear.weight"] = np.concatenate([np.full((1, 1536), 7, np.float32), v4_state["last_linear.weight"]])
    slim["last_linear.bias"] = np.concatenate([[7.0], v4_state["last_linear.bias"]]).astype(np.float32)
    kept = import_timm(slim, "inception_v4")
    assert kept.options.num_classes == 1001 and "background" in kept.notes[0]
    dropped = import_timm(slim, "inception_v4", drop_background=True)
    assert dropped.options.num_classes == 1000
    np.testing.assert_array_equal(dropped.variables["params"]["head"]["fc"]["kernel"], v4_state["last_linear.weight"].T)


def run_convert(*flags):
    return subprocess.run([*CONVERT, *flags], capture_output=True, text=True,
                          timeout=900)


# Keras's legacy HDF5 writer calls np.array on TF tensors the numpy-2 way it deprecates, once per weight.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.exhaustive  # the Keras importer itself is in make test: tests/test_parity_keras.py
def test_convert_command_from_a_keras_h5(tmp_path):
    keras = pytest.importorskip("keras", reason="keras ships with tensorflow, a project dependency")
    reference = keras.applications.InceptionResNetV2(weights=None)
    rng = np.random.default_rng(0)
    for layer in reference.layers:  # make the biases and betas distinguishable from their zero init
        for w in layer.weights:
            if w.name in ("beta", "bias"):
                w.assign(rng.standard_normal(tuple(w.shape)).astype(np.float32))
    weights = tmp_path / "irv2.h5"
    reference.save(weights)  # legacy HDF5, the format of the released Keras weights
    assert keras_file_classes(weights) == 1000
    reference.save(tmp_path / "irv2.keras")  # Keras 3 formats: the class count is read without building a model
    reference.save_weights(tmp_path / "irv2.weights.h5")
    assert keras_file_classes(tmp_path / "irv2.keras") == keras_file_classes(tmp_path / "irv2.weights.h5") == 1000
    with_gamma = import_keras(reference, bn_scale=True)  # Keras has no gamma: the timm convention gets ones
    assert sum(a.size for a in jax.tree.leaves(with_gamma.variables["params"])) == 55_843_464  # §7.1
    np.testing.assert_array_equal(with_gamma.variables["params"]["final_conv"]["bn"]["scale"], np.ones(1536))

    out = tmp_path / "exported"
    result = run_convert("--source=keras", f"--input={weights}", "--model=inception_resnet_v2", f"--output={out}",
                         "--scan_blocks=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"read 898 tensors from keras {weights}: used 898 exactly once" in result.stdout
    assert "parameters: 55,813,192 (matches docs/architecture.md §7.1: 55,813,192)" in result.stdout
    assert f"wrote {out}" in result.stdout

    opts, variables = model_io.load_variables(out)
    assert opts.name == "inception_resnet_v2" and not opts.scan_blocks and not opts.bn_scale
    assert model_io.read_meta(out)["source"] == f"keras {weights}"
    params, layer = variables["params"], reference.get_layer
    first_conv = min((lr for lr in reference.layers if re.fullmatch(r"conv2d(_\d+)?", lr.name)),
                     key=lambda lr: int(lr.name.rpartition("_")[2]) if "_" in lr.name else 0)
    np.testing.assert_array_equal(params["stem"]["conv1a"]["conv"]["kernel"], first_conv.kernel.numpy())
    np.testing.assert_array_equal(params["blocks_c_9"]["up"]["bias"], layer("block8_10_conv").bias.numpy())
    np.testing.assert_array_equal(params["final_conv"]["bn"]["bias"], layer("conv_7b_bn").beta.numpy())
    np.testing.assert_array_equal(variables["batch_stats"]["final_conv"]["bn"]["var"],
                                  layer("conv_7b_bn").moving_variance.numpy())
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], layer("predictions").kernel.numpy())


def test_a_corrupt_safetensors_file_is_one_line_naming_it(tmp_path):
    """safetensors is a base dependency (README's own convert example reads a .safetensors), and a file cut short
    or of another format is named in one line, not a SafetensorError traceback."""
    corrupt = tmp_path / "inception_v4.safetensors"
    corrupt.write_bytes(b"\xff" * 8 + b"<html>not found</html>")
    result = run_convert("--source=timm", f"--input={corrupt}", "--model=inception_v4", f"--output={tmp_path / 'o'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"convert: ValueError: timm weights file '{corrupt}' is not a readable .safetensors file (Error while "
        "deserializing header: header too large); download it again, or check that it is the model's .safetensors")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_convert_command_refuses_bad_input(tmp_path):
    result = run_convert("--source=timm", f"--input={tmp_path / 'missing.safetensors'}", "--model=inception_v4",
                         f"--output={tmp_path / 'out'}")
    assert result.returncode == 1
    assert f"timm weights file '{tmp_path / 'missing.safetensors'}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ValueError, match="provides InceptionResNetV2 only; --model=inception_v4"):
        convert("keras", "weights.h5", "inception_v4", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown timm weights format"):
        convert("timm", __file__, "inception_v4", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown Keras file type"):
        keras_file_classes(__file__)


def test_safetensors_is_a_base_dependency():
    """README's import command reads a .safetensors file: a default install must have the reader (no torch needed)."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert any(dep.split("==")[0].strip() == "safetensors" for dep in project["dependencies"])
