"""The predict command: top-5 ImageNet names and probabilities for image files, from an exported model."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from inception_jax.models import model_options
from inception_jax.pretrained import model_io
from inception_jax.pretrained.predict import class_names, imagenet2012_class_names, load_images, predict

PREDICT = (sys.executable, "-m", "inception_jax.pretrained.predict")  # the command, as a user runs it

LINE = re.compile(r"^  ([1-5])\. +(\d+\.\d\d)%  (.+)$")


def random_model(seed=0, **knobs):
    opts = model_options("inception_resnet_v2", width_multiplier=0.1, block_counts=(1, 1, 1), **knobs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return model_io.model_from_variables(
        opts, jax.tree_util.tree_map_with_path(draw, model_io.abstract_variables(opts)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("predict") / "tiny"
    model_io.save_model(path, random_model(), source="test_predict")
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:120, 0:160]
    smooth = np.stack([x * 1.5, y * 2.0, (x + y) * 0.9], axis=-1) + rng.normal(0, 12, (120, 160, 3))
    Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).save(folder / "landscape.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (200, 90, 3), dtype=np.uint8)).save(folder / "portrait.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return [str(folder / "landscape.jpg"), str(folder / "portrait.png")], str(folder / "broken.jpg")


def test_imagenet_names_come_from_tfds_in_label_order():
    names = imagenet2012_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench, Tinca tinca (n01440764)"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue (n15075141)"
    assert class_names(1001)[:2] == ["background", names[0]]
    assert class_names(3) == ["class 0", "class 1", "class 2"]
    assert class_names(3, ["cat", "dog", "bird"]) == ["cat", "dog", "bird"]


def test_predict_command_prints_top5_names_and_probabilities(exported, image_files):
    good, broken = image_files
    missing = str(exported.parent / "missing.jpg")
    result = subprocess.run([*PREDICT, f"--checkpoint={exported}", *good, broken,
                             missing], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1  # some inputs were unreadable
    assert f"predict: {broken}: not an image PIL can decode" in result.stderr
    assert f"predict: {missing}: cannot read it (FileNotFoundError" in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 12 and lines[0] == good[0] and lines[6] == good[1]

    model = model_io.load_model(exported)
    _, images, errors = load_images(good, 299)
    assert errors == []
    indices, probs = predict(model, images, top_k=5)
    names = imagenet2012_class_names()
    for block, idx, p in zip((lines[1:6], lines[7:12]), indices, probs):
        parsed = [LINE.match(line) for line in block]
        assert all(parsed), block
        assert [m.group(3) for m in parsed] == [names[i] for i in idx]  # same preprocessing, same answer
        printed = np.array([float(m.group(2)) for m in parsed])
        np.testing.assert_allclose(printed, 100 * p, atol=0.006)
        assert np.all(np.diff(printed) <= 0)


def test_predict_function_checks_top_k_and_uses_the_model_size(exported, image_files):
    model = model_io.load_model(exported)
    _, images, _ = load_images(image_files[0][:1], 107)
    assert images.shape == (1, 107, 107, 3) and images.min() >= -1 and images.max() <= 1
    indices, probs = predict(model, images, top_k=1000)
    assert sorted(indices[0]) == list(range(1000)) and probs.sum() == pytest.approx(1, abs=1e-4)
    with pytest.raises(ValueError, match="top_k=1001 must be between 1 and the model's 1000 classes"):
        predict(model, images, top_k=1001)


def test_predict_command_prints_stored_labels(tmp_path, image_files):
    model_io.save_model(tmp_path / "three", random_model(seed=1, num_classes=3), labels=["cat", "dog", "bird"])
    result = subprocess.run([*PREDICT, f"--checkpoint={tmp_path / 'three'}",
                             "--top_k=3", "--image_size=107", image_files[0][0]],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = [LINE.match(line).group(3) for line in result.stdout.splitlines()[1:]]
    assert sorted(labels) == ["bird", "cat", "dog"]

    bad = subprocess.run([*PREDICT, f"--checkpoint={tmp_path / 'nowhere'}",
                          image_files[0][0]], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "is not a directory" in bad.stderr and "Traceback" not in bad.stderr
