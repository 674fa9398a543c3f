"""The embedded `shapes_textures` builder and the TFDS source layer: registration, content, errors."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inception_jax.data.shapes_textures import CLASS_NAMES, render
from inception_jax.data.shapes_textures.shapes_textures_dataset_builder import Builder
from inception_jax.data.sources import EMBEDDED_DATASETS, DataError, dataset_info, get_builder, open_split

TINY = "shapes_textures/tiny"


def test_registered_by_name():
    assert "shapes_textures" in EMBEDDED_DATASETS
    assert tfds.builder_cls("shapes_textures") is Builder
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10


def test_render_is_deterministic_and_varied():
    a = render.render_image(render.example_rng(0, 0, 5), 3, 96)
    b = render.render_image(render.example_rng(0, 0, 5), 3, 96)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    others = [render.render_image(render.example_rng(0, split, 5), 3, 96) for split in (1,)]
    others += [render.render_image(render.example_rng(1, 0, 5), 3, 96)]
    assert all(not np.array_equal(a, o) for o in others)  # split and seed are part of the stream
    # every image has structure: far from constant, and the class object makes it differ from its background
    assert a.std() > 10


def test_tiny_split_sizes_balance_and_features(shapes_tiny_dir):
    info = dataset_info(TINY, shapes_tiny_dir)
    assert info.split_sizes == {"train": 480, "validation": 120}
    assert info.num_classes == 10 and info.class_names == CLASS_NAMES
    assert info.image_shape == (96, 96, 3) and info.file_format == "array_record"
    source = tfds.data_source(TINY, split="train", data_dir=shapes_tiny_dir, download=False)
    labels = Counter(int(source[i]["label"]) for i in range(len(source)))
    assert labels == Counter({k: 48 for k in range(10)})
    assert source[0]["image"].shape == (96, 96, 3)


_PREPARE_IN_FRESH_PROCESS = """
import hashlib, json, sys
from inception_jax.data.shapes_textures import shapes_textures_dataset_builder as module
from inception_jax.data.sources import open_split
source = open_split("shapes_textures/tiny", sys.argv[1], "validation")
hashes = [hashlib.sha1(source[i]["image"]).hexdigest() for i in range(len(source))]
print(json.dumps({"workers": module._worker_pool_size(), "hashes": hashes}))
"""


def _rendered_validation_hashes() -> Counter:
    from inception_jax.data.shapes_textures.shapes_textures_dataset_builder import _render_chunk

    cfg = Builder.builder_configs["tiny"]
    chunk = _render_chunk((cfg.seed, 1, 0, cfg.validation_examples, cfg.image_size, cfg.jpeg_quality,
                           cfg.difficulty))
    return Counter(hashlib.sha1(jpeg).hexdigest() for _, _, jpeg in chunk)


def test_generation_in_process_gives_the_rendered_images(tmp_path, monkeypatch):
    """The version pins the content: the stored JPEGs are exactly the rendered images of (seed, split, index)."""
    from inception_jax.data.shapes_textures import shapes_textures_dataset_builder as module

    monkeypatch.setattr(module, "_worker_pool_size", lambda: 0)
    source = open_split(TINY, str(tmp_path), "validation")
    assert Counter(hashlib.sha1(source[i]["image"]).hexdigest() for i in range(len(source))) == \
        _rendered_validation_hashes()


def test_generation_in_worker_processes_gives_the_same_images(tmp_path):
    # a fresh process: JAX is not running there, so the builder forks its workers (this one may have started JAX)
    result = subprocess.run([sys.executable, "-c", _PREPARE_IN_FRESH_PROCESS, str(tmp_path)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if sys.platform == "linux" and (os.cpu_count() or 1) > 1:
        assert out["workers"] == 2
    assert Counter(out["hashes"]) == _rendered_validation_hashes()


def test_prepare_is_once_per_data_dir(shapes_tiny_dir):
    builder = get_builder(TINY, shapes_tiny_dir)  # already prepared by the fixture: reused, not regenerated
    stamp = os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json"))
    get_builder(TINY, shapes_tiny_dir)
    assert os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json")) == stamp


def test_a_data_dir_that_cannot_be_written_names_both_remedies(monkeypatch):
    """The default data dir under a read-only HOME said only "[Errno 30] Read-only file system: ..." (exit 1).
    /sys refuses new folders even to root (EPERM; EACCES or EROFS elsewhere: the same line)."""
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", "/sys/inception_jax_home")
    with pytest.raises(DataError) as refused:
        get_builder(TINY, None)
    message = str(refused.value)
    assert message.startswith(f"cannot prepare the embedded dataset {TINY} in /sys/inception_jax_home/"
                              "tensorflow_datasets ([Errno ")
    assert message.endswith("): point data.data_dir (--config.data.data_dir=DIR) or $TFDS_DATA_DIR (used when "
                            "data.data_dir is unset) at a writable folder")


def test_unknown_dataset_names_suggestions(tmp_path):
    with pytest.raises(DataError, match=r"DataConfig.name='cifar100x'.*unknown dataset.*Did you mean 'cifar100'"):
        get_builder("cifar100x", str(tmp_path))
    with pytest.raises(DataError, match=r"'shapes_textures/huge'"):
        get_builder("shapes_textures/huge", str(tmp_path))


def test_unprepared_imagenet_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match=r"not prepared in .*downloads/manual.*tfds build imagenet2012 "
                                        r"--data_dir=.* --file_format=array_record"):
        open_split("imagenet2012", str(tmp_path), "train")
    with pytest.raises(DataError, match=r"not prepared.*tfds build cifar10"):
        dataset_info("cifar10", str(tmp_path))


def test_unknown_split_lists_the_prepared_ones(shapes_tiny_dir):
    expected = r"DataConfig.train_split='test'.*splits prepared in .*\['train', 'validation'\]"
    with pytest.raises(DataError, match=expected):
        open_split(TINY, shapes_tiny_dir, "test")


def test_tfrecord_dataset_says_how_to_convert(shapes_tiny_dir, tmp_path):
    # a copy whose metadata says tfrecord, as `tfds build --file_format=tfrecord` (the TFDS default) would write
    shutil.copytree(shapes_tiny_dir, tmp_path / "d")
    version_dir = tmp_path / "d" / "shapes_textures" / "tiny" / "1.0.0"
    meta = json.loads((version_dir / "dataset_info.json").read_text())
    meta["fileFormat"] = "tfrecord"
    (version_dir / "dataset_info.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"prepared in .* as tfrecord.*tfds convert_format "
                                        r"--dataset_version_dir=.*1.0.0 --out_file_format=array_record"):
        open_split(TINY, str(tmp_path / "d"), "train")
