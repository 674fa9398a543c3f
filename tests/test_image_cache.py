"""The in-memory image cache: later reads of an image skip decoding, and never change a pixel."""

import os

import numpy as np
import pytest

from inception_jax.data import image_cache
from inception_jax.data import input_pipeline as ip
from inception_jax.data.input_pipeline import DataConfig

TINY = "shapes_textures/tiny"


class CountingSource:
    """The prepared split, counting the records read from it."""

    def __init__(self, source):
        self.source, self.reads = source, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.reads += 1
        return self.source[i]


@pytest.fixture(autouse=True)
def empty_cache():
    image_cache.clear()
    yield
    image_cache.clear()


def streams(data_dir, *, cache_mb=1024, augment="flip", **overrides):
    cfg = DataConfig(name=TINY, data_dir=data_dir, image_size=75, augment=augment, cache_mb=cache_mb, **overrides)
    key = ip._cache_key(cfg)
    train = CountingSource(ip.open_split(TINY, data_dir, "train"))
    evals = CountingSource(ip.open_split(TINY, data_dir, "validation"))
    return (ip.TrainStream(cfg, train, global_batch_size=16, seed=3, cache_key=key), train,
            ip.EvalStream(cfg, evals, global_batch_size=16, cache_key=key), evals)


def test_a_second_run_reads_nothing_and_gets_the_same_pixels(shapes_tiny_dir):
    uncached, _, uncached_eval, _ = streams(shapes_tiny_dir, cache_mb=0)
    first, first_reads, first_eval, _ = streams(shapes_tiny_dir)
    second, second_reads, second_eval, second_eval_reads = streams(shapes_tiny_dir)
    steps = (0, 1, 29, 30, 31)  # 30 steps per epoch: steps 30 and 31 meet some images of steps 0, 1 and 29 again
    for step in steps:
        expected = uncached.batch(step)
        for stream in (first, second):
            got = stream.batch(step)
            assert np.array_equal(got["image"], expected["image"]) and np.array_equal(got["label"], expected["label"])
    distinct = {int(i) for step in steps for i in uncached.example_indices(step)[1]}
    assert len(distinct) < 5 * 16 and first_reads.reads == len(distinct) and second_reads.reads == 0
    for b in range(len(uncached_eval)):
        for stream in (first_eval, second_eval):
            got, expected = stream.batch(b), uncached_eval.batch(b)
            assert all(np.array_equal(got[k], expected[k]) for k in ("image", "label", "mask"))
    assert second_eval_reads.reads == 0


def test_inception_crops_are_drawn_fresh_and_never_cached(shapes_tiny_dir):
    stream, reads, _, _ = streams(shapes_tiny_dir, augment="inception")
    stream.batch(0)
    stream.batch(0)
    assert reads.reads == 32


def test_the_budget_caps_the_store_and_new_files_start_a_new_one(shapes_tiny_dir, tmp_path):
    stream, _, _, _ = streams(shapes_tiny_dir, cache_mb=1)  # 1 MiB: 62 images of 75 x 75 x 3
    for step in range(8):
        stream.batch(step)
    store = image_cache.store_for((ip._cache_key(stream.cfg), "train", 75), 1)  # the stream's own store
    assert store is stream._cache
    assert len(store) == 1 * 2**20 // (75 * 75 * 3) and store.used_bytes <= store.budget_bytes
    folder = tmp_path / "prepared"
    folder.mkdir()
    (folder / "split.array_record").write_bytes(b"one")
    before = image_cache.files_signature(str(folder))
    (folder / "split.array_record").write_bytes(b"two, prepared again")
    assert image_cache.files_signature(str(folder)) != before
    assert os.path.isdir(ip._cache_key(stream.cfg)[0])
