"""The data pipeline: config validation, determinism, exact resume, process shards, eval coverage, bad input,
mock_data datasets and a no-network run."""

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from inception_jax.data import input_pipeline as ip
from inception_jax.data import preprocessing as pp
from inception_jax.data.input_pipeline import DataConfig, DataError
from inception_jax.training.train_step import model_input

TINY = "shapes_textures/tiny"  # 480 train / 120 validation images (tests/conftest.py prepares it once)


@pytest.fixture(scope="module")
def cfg(shapes_tiny_dir) -> DataConfig:
    return DataConfig(name=TINY, data_dir=shapes_tiny_dir, image_size=75)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- configuration -------------------------------------------------------------------------------------------


def test_defaults_and_from_config():
    assert DataConfig().name == "shapes_textures" and DataConfig().image_size == 299
    data = ml_collections.ConfigDict({"name": "cifar10", "image_size": 128, "area_range": [0.25, 1.0]})
    cfg = DataConfig.from_config(data)
    assert cfg.name == "cifar10" and cfg.image_size == 128 and cfg.area_range == (0.25, 1.0)
    whole = ml_collections.ConfigDict({"data": {"eval_crops": "12"}, "seed": 0})
    assert DataConfig.from_config(whole).num_eval_crops == 12
    with pytest.raises(DataError, match=r"unknown config key\(s\) \['data.imagesize'\]"):
        DataConfig.from_config({"imagesize": 96})


@pytest.mark.parametrize("field,value,message", [
    ("eval_crops", "10", r"DataConfig.eval_crops='10' \(config key data.eval_crops\) is not one of "
                         r"\['single', '12', '144'\]"),
    ("image_size", 64, r"DataConfig.image_size=64 .* is below 75"),
    ("augment", "mixup", r"DataConfig.augment='mixup' .* not one of \['inception', 'flip', 'none'\]"),
    ("area_range", (0.5, 0.1), r"DataConfig.area_range=\(0.5, 0.1\) .* min <= max"),
    ("aspect_range", (0.0, 2.0), r"DataConfig.aspect_range"),
    ("central_fraction", 1.5, r"DataConfig.central_fraction=1.5 .* \(0, 1\]"),
    ("num_threads", 0, r"DataConfig.num_threads=0 .* >= 1"),
    ("cache_mb", -1, r"DataConfig.cache_mb=-1 .* >= 0"),
    ("name", "", r"DataConfig.name=''"),
])
def test_bad_config_values(field, value, message):
    with pytest.raises(DataError, match=message):
        DataConfig(**{field: value})


def test_dataset_info(cfg):
    info = ip.dataset_info(cfg)
    assert info.num_classes == 10 and info.split_sizes == {"train": 480, "validation": 120}
    with pytest.raises(DataError, match=r"DataConfig.eval_split='test' .* splits in .*\['train', 'validation'\]"):
        ip.dataset_info(DataConfig(name=TINY, data_dir=cfg.data_dir, eval_split="test"))


# --- train stream ----------------------------------------------------------------------------------------------


def test_batch_shapes_ranges_and_labels(cfg):
    stream = ip.create_train_stream(cfg, global_batch_size=32, seed=0)
    assert stream.steps_per_epoch == 480 // 32
    batch = stream.batch(0)
    # uint8 pixels travel to the devices; the step maps them to [-1, 1] with the host's own table
    assert batch["image"].shape == (32, 75, 75, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert batch["image"].min() < 64 and batch["image"].max() > 192
    assert set(batch["label"]) <= set(range(10))
    on_device = np.asarray(model_input(jnp.asarray(batch["image"])))
    np.testing.assert_array_equal(on_device, pp.to_model_range(batch["image"]))  # bit for bit
    distorted = ip.create_train_stream(dataclasses.replace(cfg, color_distort=True), global_batch_size=32, seed=0)
    colours = distorted.batch(0)["image"]  # off the uint8 grid: float32 in [-1, 1], passed through as it is
    assert colours.dtype == np.float32 and -1.0 <= colours.min() < 0 < colours.max() <= 1.0
    assert model_input(jnp.asarray(colours)).dtype == jnp.float32


def test_same_seed_same_batches_different_seed_differs(cfg):
    a = ip.create_train_stream(cfg, global_batch_size=16, seed=3)
    b = ip.create_train_stream(cfg, global_batch_size=16, seed=3)
    c = ip.create_train_stream(cfg, global_batch_size=16, seed=4)
    for step in (0, 1, 31):
        assert _same(a.batch(step), b.batch(step))
        assert not np.array_equal(a.batch(step)["image"], c.batch(step)["image"])


def test_each_epoch_is_a_fresh_permutation(cfg):
    stream = ip.create_train_stream(cfg, global_batch_size=32, seed=0)
    per_epoch = []
    for epoch in range(2):
        steps = range(epoch * stream.steps_per_epoch, (epoch + 1) * stream.steps_per_epoch)
        indices = np.concatenate([stream.example_indices(s)[1] for s in steps])
        assert sorted(indices) == list(range(480))  # every example exactly once (480 divides by 32)
        per_epoch.append(indices)
    assert not np.array_equal(per_epoch[0], per_epoch[1])


def test_iterator_resumes_exactly(cfg):
    """iterator(start) == [batch(start), batch(start + 1), ...], also across an epoch boundary."""
    stream = ip.create_train_stream(cfg, global_batch_size=32, seed=1)
    start = stream.steps_per_epoch - 2
    it = stream.iterator(start)
    for step in range(start, start + 4):
        assert _same(next(it), stream.batch(step))
    fresh = ip.create_train_stream(cfg, global_batch_size=32, seed=1)  # a restarted process
    assert _same(next(fresh.iterator(start + 3)), stream.batch(start + 3))


def test_flip_mirrors_exactly_the_examples_its_draws_choose(cfg):
    flip = ip.create_train_stream(dataclasses.replace(cfg, augment="flip", cache_mb=0), global_batch_size=32, seed=2)
    plain = ip.create_train_stream(dataclasses.replace(cfg, augment="none", cache_mb=0), global_batch_size=32, seed=2)
    step = flip.steps_per_epoch + 3  # epoch 1
    epoch, indices = flip.example_indices(step)
    draws = ip.flip_draws(2, epoch, indices)
    assert 0 < draws.sum() < len(draws)
    mirrored, unchanged = flip.batch(step)["image"], plain.batch(step)["image"]
    for j, mirror in enumerate(draws):
        np.testing.assert_array_equal(mirrored[j], unchanged[j][:, ::-1] if mirror else unchanged[j])


def test_flip_draws_belong_to_the_example_not_the_batch():
    """A draw depends on (seed, epoch, dataset index) only, so any batch or process that holds the example
    flips it alike; about half are flipped and other seeds or epochs draw afresh."""
    indices = np.arange(100_000)
    draws = ip.flip_draws(7, 3, indices)
    assert abs(draws.mean() - 0.5) < 0.01
    for k in (0, 17, 99_999):
        assert ip.flip_draws(7, 3, indices[k:k + 1])[0] == draws[k]
    for other in (ip.flip_draws(8, 3, indices), ip.flip_draws(7, 4, indices)):
        assert abs((other == draws).mean() - 0.5) < 0.01
    assert abs((draws[1:] == draws[:-1]).mean() - 0.5) < 0.01  # neighbouring indices are not correlated


def test_mirrored_is_a_left_right_flip():
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ip.mirrored(images), images[:, :, ::-1])
    assert ip.mirrored(images[:0]).shape == (0, 5, 7, 3)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_are_disjoint_and_complete(cfg, process_count):
    single = ip.create_train_stream(cfg, global_batch_size=32, seed=5)
    shards = [ip.create_train_stream(cfg, global_batch_size=32, seed=5, process_index=p,
                                     process_count=process_count) for p in range(process_count)]
    for step in (0, 16):
        parts = [s.example_indices(step)[1] for s in shards]
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == 32  # disjoint
        np.testing.assert_array_equal(flat, single.example_indices(step)[1])  # complete, same global batch
    local = [s.batch(16) for s in shards]
    whole = single.batch(16)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in local]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in local]), whole["label"])


def test_bad_batch_and_process_arguments(cfg):
    with pytest.raises(DataError, match=r"global_batch_size=512 is larger than split 'train' .*480 examples"):
        ip.create_train_stream(cfg, global_batch_size=512, seed=0)
    with pytest.raises(DataError, match=r"global_batch_size=130 is larger than split 'validation'"):
        ip.create_eval_stream(cfg, global_batch_size=130)
    with pytest.raises(DataError, match="does not divide by process_count=3"):
        ip.create_train_stream(cfg, global_batch_size=32, seed=0, process_count=3)
    with pytest.raises(DataError, match=r"process_index=2 must be in \[0, process_count=2\)"):
        ip.create_train_stream(cfg, global_batch_size=32, seed=0, process_index=2, process_count=2)
    with pytest.raises(DataError, match="seed=-3 must be an int >= 0"):
        ip.create_train_stream(cfg, global_batch_size=32, seed=-3)
    with pytest.raises(DataError, match="step=-1"):
        ip.create_train_stream(cfg, global_batch_size=32, seed=0).batch(-1)


def test_unknown_dataset_and_split(cfg):
    with pytest.raises(DataError, match=r"DataConfig.name='shapes_texture'.*Did you mean 'shapes_textures'"):
        ip.dataset_info(DataConfig(name="shapes_texture", data_dir=cfg.data_dir))
    with pytest.raises(DataError, match=r"DataConfig.train_split='training'.*\['train', 'validation'\]"):
        ip.create_train_stream(DataConfig(name=TINY, data_dir=cfg.data_dir, train_split="training"),
                               global_batch_size=8, seed=0)


class _CorruptImages:
    """A source whose record 3 holds a truncated JPEG, as a damaged shard would."""

    def __init__(self, source):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        record = dict(self.source[i])
        if i == 3:
            record["image"] = record["image"][: len(record["image"]) // 2]
        return record


def test_corrupt_image_names_the_record(cfg):
    source = _CorruptImages(ip.open_split(TINY, cfg.data_dir, "validation"))
    stream = ip.EvalStream(cfg, source, global_batch_size=8)
    with pytest.raises(DataError, match=r"cannot decode the image of example 3 of split 'validation' of "
                                        r"'shapes_textures/tiny' in .*truncated"):
        stream.batch(0)
    with pytest.raises(DataError, match="example 3"):  # through the prefetching iterator too: no hang, no skip
        list(stream)


def test_truncated_shard_names_the_record(cfg, tmp_path):
    shutil.copytree(cfg.data_dir, tmp_path / "d")
    shard = next((tmp_path / "d" / "shapes_textures" / "tiny" / "1.0.0").glob("*-validation.array_record*"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    broken = DataConfig(name=TINY, data_dir=str(tmp_path / "d"), image_size=75)
    stream = ip.create_eval_stream(broken, global_batch_size=8)
    with pytest.raises(DataError, match=r"cannot read example \d+ of split 'validation' .*corrupt or truncated"):
        list(stream)


# --- eval stream -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_covers_the_split_exactly_once(cfg, process_count):
    streams = [ip.create_eval_stream(cfg, global_batch_size=32, process_index=p, process_count=process_count)
               for p in range(process_count)]
    assert all(s.num_batches == 4 and s.num_examples == 120 for s in streams)  # ceil(120 / 32)
    seen = []
    for s in streams:
        for b in range(s.num_batches):
            indices = s.example_indices(b)
            seen.extend(indices[indices < 120].tolist())
    assert sorted(seen) == list(range(120))
    if process_count == 2:  # full pass through the iterator: masks, padding, labels
        batches = [list(s) for s in streams]
        masks = np.concatenate([b["mask"] for per in batches for b in per])
        assert masks.sum() == 120 and len(masks) == 128
        last = batches[1][-1]
        assert last["mask"].tolist() == [True] * 8 + [False] * 8
        assert np.all(last["image"][~last["mask"]] == 0)


def test_eval_matches_single_process_batches(cfg):
    whole = ip.create_eval_stream(cfg, global_batch_size=16).batch(2)
    parts = [ip.create_eval_stream(cfg, global_batch_size=16, process_index=p, process_count=2).batch(2)
             for p in range(2)]
    for key in ("image", "label", "mask"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


@pytest.mark.parametrize("crops,n", [("single", 1), ("12", 12), ("144", 144)])
def test_eval_crop_protocols(cfg, crops, n):
    c = DataConfig(name=TINY, data_dir=cfg.data_dir, image_size=75, eval_crops=crops)
    batch = ip.create_eval_stream(c, global_batch_size=2).batch(0)
    assert batch["image"].shape == (2, n, 75, 75, 3) and batch["image"].dtype == np.uint8


# --- mock_data datasets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("imagenet2012", 1000)])
def test_mock_data_datasets(tmp_path, name, num_classes):
    c = DataConfig(name=name, data_dir=str(tmp_path), image_size=75, eval_crops="12")
    with tfds.testing.mock_data(num_examples=8):
        info = ip.dataset_info(c)
        assert info.num_classes == num_classes
        train = ip.create_train_stream(c, global_batch_size=4, seed=0, process_index=1, process_count=2)
        batch = train.batch(1)
        assert batch["image"].shape == (2, 75, 75, 3) and batch["image"].dtype == np.uint8
        assert np.all((batch["label"] >= 0) & (batch["label"] < num_classes))
        evaluation = ip.create_eval_stream(c, global_batch_size=8)
        (only,) = list(evaluation)
        assert only["image"].shape == (8, 12, 75, 75, 3) and only["mask"].all()


# --- no network ------------------------------------------------------------------------------------------------


def test_data_path_runs_without_network(shapes_tiny_dir, tmp_path):
    """dataset_info, preparing the embedded dataset from scratch, train and eval batches, in a netns with no link."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs `unshare` and `ip` (util-linux, iproute2)")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here (needs root or user namespaces): {probe.stderr.decode()}")
    script = textwrap.dedent(f"""
        import socket
        from inception_jax.data import input_pipeline as ip
        try:
            socket.create_connection(("8.8.8.8", 53), timeout=2)
            raise SystemExit("network reachable: the test is not isolated")
        except OSError:
            pass
        fresh = ip.DataConfig(name="{TINY}", data_dir="{tmp_path / 'fresh'}", image_size=75)
        info = ip.dataset_info(fresh)  # prepares the embedded dataset with no network
        assert info.split_sizes == {{"train": 480, "validation": 120}}
        cfg = ip.DataConfig(name="{TINY}", data_dir="{shapes_tiny_dir}", image_size=75, eval_crops="12")
        train = ip.create_train_stream(cfg, global_batch_size=16, seed=0)
        assert next(train.iterator(0))["image"].shape == (16, 75, 75, 3)
        assert next(iter(ip.create_eval_stream(cfg, global_batch_size=8)))["image"].shape == (8, 12, 75, 75, 3)
        print("OK")
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "NO_GCE_CHECK": "true"}
    cmd = f"ip link set lo up && {sys.executable} -c '{script}'"
    result = subprocess.run(["unshare", "-n", "sh", "-c", cmd], capture_output=True, text=True, env=env,
                            timeout=240)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_make_global_batch_shards_the_batch_axis():
    import jax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    n = 2 * jax.device_count()
    local = {"image": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "label": np.arange(n, dtype=np.int32)}
    batch = ip.make_global_batch(local, sharding)
    assert batch["image"].shape == (n, 3) and batch["image"].sharding == sharding
    assert len(batch["label"].addressable_shards) == jax.device_count()
    np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])
