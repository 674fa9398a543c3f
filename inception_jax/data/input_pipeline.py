"""Datasets -> per-process batches: grain over `tfds.data_source`, a pure function of the step.

Train: `TrainStream.batch(step)` depends only on (seed, step, process_index, process_count). epoch = step //
steps_per_epoch (the last partial global batch of an epoch is dropped); the epoch's order is a permutation drawn
from (seed, epoch); example k of it gets its augmentation draws from (seed, epoch, dataset index). The global batch
of a step is the same examples whatever the process count: process p takes the contiguous slice
[p * local, (p + 1) * local) of it. Resuming at step s therefore needs no iterator state: `iterator(s)` yields
batch(s), batch(s + 1), ... (grain prefetches them on threads). Each process reads only its own examples, by random
access, so every host needs the dataset files (a shared or copied data dir), not a per-host copy of a shard.

Eval: `create_eval_stream` walks the split in order, once; global batch b holds examples [b * G, (b + 1) * G),
process p its slice; the last batch is padded with `mask` False.

This module must not touch the network or start device work (the training code puts batches on devices).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from inception_jax.data import image_cache, preprocessing
from inception_jax.data.data_config import DataConfig, DataError
from inception_jax.data.sources import DatasetInfo, get_builder, open_split, resolve_data_dir
from inception_jax.data.sources import dataset_info as _source_info

__all__ = ["DataConfig", "DataError", "DatasetInfo", "EvalStream", "TrainStream", "check_batch_fits",
           "create_eval_stream", "create_train_stream", "dataset_info", "make_global_batch"]

# Leading words of the seed sequences, so that permutations and augmentations never share a random stream.
_PERMUTATION_STREAM, _AUGMENT_STREAM, _FLIP_STREAM = 1, 2, 3
_EVAL_PREFETCH_BYTES = 2**30


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Classes, split sizes and native image shape; prepares the embedded dataset if missing; checks both splits."""
    info = _source_info(cfg.name, cfg.data_dir)
    for field in ("train_split", "eval_split"):
        split = getattr(cfg, field)
        base = split.split("[")[0].strip()
        if info.split_sizes and base not in info.split_sizes:
            raise DataError(f"DataConfig.{field}={split!r} (config key data.{field}): dataset {cfg.name!r} has no "
                            f"such split; splits in {info.data_dir}: {sorted(info.split_sizes)}")
    return info


def _check_processes(global_batch_size: int, process_index: int, process_count: int) -> int:
    for name, value, low in (("global_batch_size", global_batch_size, 1), ("process_count", process_count, 1)):
        if not isinstance(value, int | np.integer) or value < low:
            raise DataError(f"{name}={value!r} must be an int >= {low}")
    if not isinstance(process_index, int | np.integer) or not 0 <= process_index < process_count:
        raise DataError(f"process_index={process_index!r} must be in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise DataError(f"global_batch_size={global_batch_size} does not divide by process_count={process_count}: "
                        f"every process takes an equal contiguous slice of each global batch")
    return global_batch_size // process_count


def check_batch_fits(batch: str, batch_size: int, split: str, cfg: DataConfig, num_examples: int, *,
                     error: type[Exception] = DataError) -> None:
    """The one check that a global batch fits its split, for the streams here and for the run's checks before
    anything starts (training/run_checks.py). `batch` and `split` are how the caller names them: the config keys
    ("train.batch_size=64", "data.eval_split='validation'") or this module's arguments."""
    if batch_size > num_examples:
        raise error(f"{batch} is larger than {split} of {cfg.name!r} ({num_examples} examples in "
                    f"{resolve_data_dir(cfg.data_dir)}); use at most {num_examples}")


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    order = np.random.default_rng([_PERMUTATION_STREAM, seed, epoch]).permutation(num_examples)
    return order.astype(np.int32 if num_examples < 2**31 else np.int64)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose every output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def flip_draws(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """Whether the "flip" augmentation mirrors each example: a counter-based hash of (seed, epoch, dataset index),
    drawn for a whole batch at once. Like every draw of this module it depends on the example, not on the batch
    it lands in or the process that reads it; one seeded generator per image was a large share of a cached
    batch's host time at the main job's size (docs/performance.md §6.3)."""
    key = np.full(1, _FLIP_STREAM, np.uint64)
    for word in (seed, epoch):
        key = _mix64(key ^ np.uint64(word))
    bits = _mix64(key ^ np.asarray(indices, np.uint64))
    return (bits >> np.uint64(63)).astype(bool)


def mirrored(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) images mirrored left-right, as one gather of whole pixels per row: numpy's reversed view
    copies a uint8 RGB image byte by byte, which is slower (docs/performance.md §6.3)."""
    n, h, w, c = images.shape
    columns = (np.arange(w - 1, -1, -1)[:, None] * c + np.arange(c)).ravel()
    return np.take(images.reshape(n, h, w * c), columns, axis=2).reshape(n, h, w, c)


class _Reader:
    """Reads raw examples by index and turns failures into errors that name the record and the dataset."""

    def __init__(self, source: Sequence, cfg: DataConfig, split: str):
        self.source, self.cfg, self.split = source, cfg, split

    def where(self, index: int) -> str:
        return f"example {index} of split {self.split!r} of {self.cfg.name!r} in {resolve_data_dir(self.cfg.data_dir)}"

    def read(self, indices: Sequence[int]) -> list[dict]:
        indices = [int(i) for i in indices]
        try:
            getitems = getattr(self.source, "__getitems__", None)
            return list(getitems(indices)) if getitems else [self.source[i] for i in indices]
        except Exception:  # read one by one: names the failing record, and serves sources whose batch read
            records = []   # is broken (tfds.testing.mock_data's __getitems__)
            for i in indices:
                try:
                    records.append(self.source[i])
                except Exception as e:
                    raise DataError(f"cannot read {self.where(i)}: the record is corrupt or truncated "
                                    f"({type(e).__name__}: {e}); re-prepare the dataset") from e
            return records

    def transform(self, index: int, record: Mapping, fn: Any, **kwargs: Any) -> np.ndarray:
        try:
            return fn(record["image"], **kwargs)
        except preprocessing.ImageDecodeError as e:
            raise DataError(f"cannot decode the image of {self.where(index)}: {e}; the record is corrupt or "
                            f"truncated, re-prepare the dataset") from e


class _SplitStream:
    """What both streams are: one split read in global batches, of which this process takes its slice (checked
    here: the processes divide the batch, and the batch fits the split)."""

    def __init__(self, cfg: DataConfig, source: Sequence, split: str, *, global_batch_size: int, process_index: int,
                 process_count: int):
        self.cfg = cfg
        self.local_batch_size = _check_processes(global_batch_size, process_index, process_count)
        self.global_batch_size = global_batch_size
        self.process_index, self.process_count = process_index, process_count
        self.num_examples = len(source)
        check_batch_fits(f"global_batch_size={global_batch_size}", global_batch_size, f"split {split!r}", cfg,
                         self.num_examples)
        self._reader = _Reader(source, cfg, split)


class TrainStream(_SplitStream):
    """This process's slice of each global training batch, by step; see the module docstring."""

    def __init__(self, cfg: DataConfig, source: Sequence, *, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1, cache_key: Hashable | None = None):
        super().__init__(cfg, source, cfg.train_split, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise DataError(f"seed={seed!r} must be an int >= 0 (it seeds the epoch permutations and augmentations)")
        self.seed = int(seed)
        self.steps_per_epoch = self.num_examples // global_batch_size
        self._cache = image_cache.store_for((cache_key, cfg.train_split, cfg.image_size), cfg.cache_mb) \
            if cache_key is not None and cfg.augment != "inception" else None
        self._steps = grain.MapDataset.range(0, 2**62).map(self.batch)

    def example_indices(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, dataset indices of this process's slice of global batch `step`)."""
        if not isinstance(step, int | np.integer) or step < 0:
            raise DataError(f"step={step!r} must be an int >= 0")
        epoch, position = divmod(int(step), self.steps_per_epoch)
        start = position * self.global_batch_size + self.process_index * self.local_batch_size
        return epoch, _permutation(self.seed, epoch, self.num_examples)[start:start + self.local_batch_size]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        epoch, indices = self.example_indices(step)
        if self.cfg.augment == "inception":
            return self._distorted_batch(epoch, indices)
        # "flip" / "none": the whole image resized (what image_cache keeps), then the random part.
        items = image_cache.fetch(self._cache, indices, self._reader.read, self._whole_image)
        labels = np.asarray([item[1] for item in items], np.int32)
        if self.cfg.color_distort:
            images = np.stack([preprocessing.augment_pixels(item[0], self._rng(epoch, index), augment=self.cfg.augment,
                                                            color_distort=True)
                               for index, item in zip(indices, items)])
        else:
            images = np.stack([item[0] for item in items])
            if self.cfg.augment == "flip":
                flip = flip_draws(self.seed, epoch, indices)
                images[flip] = mirrored(images[flip])
        return {"image": images, "label": labels}

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([_AUGMENT_STREAM, self.seed, epoch, int(index)])

    def _distorted_batch(self, epoch: int, indices: np.ndarray) -> dict[str, np.ndarray]:
        """"inception": the box is drawn before anything is decoded, so nothing is cached."""
        records = self._reader.read(indices)
        size = self.cfg.image_size
        images = np.empty((len(indices), size, size, 3), np.float32 if self.cfg.color_distort else np.uint8)
        for j, (index, record) in enumerate(zip(indices, records)):
            images[j] = self._reader.transform(
                int(index), record, preprocessing.train_pixels, rng=self._rng(epoch, index), image_size=size,
                augment="inception", color_distort=self.cfg.color_distort, area_range=self.cfg.area_range,
                aspect_range=self.cfg.aspect_range)
        return {"image": images, "label": np.asarray([int(r["label"]) for r in records], np.int32)}

    def _whole_image(self, index: int, record: Mapping) -> np.ndarray:
        return self._reader.transform(index, record, preprocessing.whole_image_pixels, image_size=self.cfg.image_size)

    def iterator(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """batch(start_step), batch(start_step + 1), ... prepared ahead on `cfg.num_threads` threads."""
        if not isinstance(start_step, int | np.integer) or start_step < 0:
            raise DataError(f"start_step={start_step!r} must be an int >= 0")
        options = grain.ReadOptions(num_threads=self.cfg.num_threads, prefetch_buffer_size=self.cfg.prefetch_batches)
        return iter(self._steps[int(start_step):].to_iter_dataset(options))


class EvalStream(_SplitStream):
    """The whole eval split once, in order, as (local_batch, n_crops, S, S, 3) images with a padding mask."""

    def __init__(self, cfg: DataConfig, source: Sequence, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, cache_key: Hashable | None = None):
        super().__init__(cfg, source, cfg.eval_split, global_batch_size=global_batch_size,
                         process_index=process_index, process_count=process_count)
        self.num_batches = -(-self.num_examples // global_batch_size)
        self.num_crops = cfg.num_eval_crops
        identity = (cache_key, cfg.eval_split, cfg.image_size, cfg.eval_crops, cfg.central_fraction)
        self._cache = image_cache.store_for(identity, cfg.cache_mb) if cache_key is not None else None

    def example_indices(self, batch_index: int) -> np.ndarray:
        """Dataset indices of this process's slice of global eval batch `batch_index`; >= num_examples = padding."""
        start = batch_index * self.global_batch_size + self.process_index * self.local_batch_size
        return np.arange(start, start + self.local_batch_size)

    def batch(self, batch_index: int) -> dict[str, np.ndarray]:
        if not 0 <= batch_index < self.num_batches:
            raise DataError(f"eval batch {batch_index} is outside [0, {self.num_batches})")
        indices = self.example_indices(batch_index)
        mask = indices < self.num_examples
        size = self.cfg.image_size
        images = np.zeros((len(indices), self.num_crops, size, size, 3), np.uint8)
        labels = np.zeros((len(indices),), np.int32)
        valid = indices[mask]
        crops = functools.partial(self._reader.transform, fn=preprocessing.eval_pixels, image_size=size,
                                  protocol=self.cfg.eval_crops, central_fraction=self.cfg.central_fraction)
        for j, (pixels, label) in enumerate(image_cache.fetch(self._cache, valid, self._reader.read, crops)):
            images[j] = pixels
            labels[j] = label
        return {"image": images, "label": labels, "mask": mask}

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        # 144 crops make batches large (64 images at 96 px = 250 MB): hold at most ~1 GB of batches in flight.
        size = self.cfg.image_size
        batch_bytes = self.local_batch_size * self.num_crops * size * size * 3
        prefetch = max(1, min(self.cfg.prefetch_batches, _EVAL_PREFETCH_BYTES // batch_bytes))
        options = grain.ReadOptions(num_threads=min(self.cfg.num_threads, prefetch), prefetch_buffer_size=prefetch)
        return iter(grain.MapDataset.range(0, self.num_batches).map(self.batch).to_iter_dataset(options))


def create_train_stream(cfg: DataConfig, *, global_batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1) -> TrainStream:
    _check_processes(global_batch_size, process_index, process_count)
    source = open_split(cfg.name, cfg.data_dir, cfg.train_split, origin="DataConfig.train_split")
    return TrainStream(cfg, source, global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                       process_count=process_count, cache_key=_cache_key(cfg))


def create_eval_stream(cfg: DataConfig, *, global_batch_size: int, process_index: int = 0,
                       process_count: int = 1) -> EvalStream:
    _check_processes(global_batch_size, process_index, process_count)
    source = open_split(cfg.name, cfg.data_dir, cfg.eval_split, origin="DataConfig.eval_split")
    return EvalStream(cfg, source, global_batch_size=global_batch_size, process_index=process_index,
                      process_count=process_count, cache_key=_cache_key(cfg))


def _cache_key(cfg: DataConfig) -> Hashable | None:
    """The prepared files behind `cfg.name` (image_cache: a re-prepared dataset is a new identity); None when
    caching is off or the source is not a prepared folder (tfds.testing.mock_data)."""
    if cfg.cache_mb <= 0:
        return None
    path = str(get_builder(cfg.name, cfg.data_dir).data_path)
    return (path, image_cache.files_signature(path)) if os.path.isdir(path) else None


def make_global_batch(local_batch: Mapping[str, np.ndarray], sharding: Any) -> dict[str, Any]:
    """Process-local numpy batch -> global jax.Arrays laid out by `sharding` (leading axis = batch)."""
    import jax  # only the caller that puts data on devices pays for jax here

    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
