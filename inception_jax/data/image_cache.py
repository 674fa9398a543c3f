"""Decoded, resized images kept in memory across the runs of one process (a sweep's rows, later epochs).

Decoding and resizing is most of the input pipeline's CPU time (docs/performance.md §6.3).
On a 2-core machine that time is taken from the model step (benchmarks/train_loop.py). Every run of a sweep reads
the same examples (same seed, same permutation), and evaluation reads the same split at every interval, so from
the second read on an image costs only its random draws (flip, colour).

Only deterministic work is cached: the whole-image resize of the `flip` / `none` augmentations and the evaluation
crops. The `inception` augmentation's random box is drawn before decoding (JPEG decoding at a reduced DCT scale
depends on it), so it has nothing deterministic worth keeping. Whether an image came from the cache never changes
its pixels: a hit returns the array the miss computed.

A store belongs to one dataset identity: the prepared files (path, size, modification time) plus what the
cached arrays depend on (split, image size, crop protocol). Re-preparing a dataset therefore starts a new store.
Stores are capped by `data.cache_mb` each (full: new images are simply not kept), and only the two most recent
identities are kept, so a process that opens many datasets (a test session) does not accumulate them.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

_MAX_STORES = 2
_stores: collections.OrderedDict[Hashable, ImageStore] = collections.OrderedDict()
_stores_lock = threading.Lock()


class ImageStore:
    """index -> (uint8 pixels, label), thread-safe, at most `budget_bytes` of pixels."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._items: dict[int, tuple[np.ndarray, int]] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> tuple[np.ndarray, int] | None:
        return self._items.get(index)

    def put(self, index: int, pixels: np.ndarray, label: int) -> None:
        pixels.setflags(write=False)  # shared by every later reader: nobody may change it in place
        with self._lock:
            if index in self._items or self.used_bytes + pixels.nbytes > self.budget_bytes:
                return
            self._items[index] = (pixels, int(label))
            self.used_bytes += pixels.nbytes

    def __len__(self) -> int:
        return len(self._items)


def files_signature(directory: str) -> tuple:
    """(name, size, mtime_ns) of the files of a prepared dataset version: changes when it is prepared again."""
    entries = sorted(os.scandir(directory), key=lambda e: e.name)
    return tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file())


def store_for(identity: Hashable, cache_mb: int) -> ImageStore | None:
    """The process-wide store of `identity` (created on first use); None when caching is off (cache_mb == 0)."""
    if cache_mb <= 0:
        return None
    with _stores_lock:
        store = _stores.get(identity)
        if store is None:
            store = _stores[identity] = ImageStore(cache_mb * 2**20)
            while len(_stores) > _MAX_STORES:
                _stores.popitem(last=False)
        else:
            store.budget_bytes = max(store.budget_bytes, cache_mb * 2**20)
            _stores.move_to_end(identity)
        return store


def fetch(store: ImageStore | None, indices: np.ndarray, read: Callable[[np.ndarray], Sequence[Mapping]],
          compute: Callable[[int, Mapping], Any]) -> list[tuple[Any, int]]:
    """(value, label) per index: from `store` where it holds one, else `compute(index, record)` on the records
    `read` returns for the misses (one batched read), kept in `store` for later reads. No store: all computed."""
    items = [store.get(int(i)) for i in indices] if store is not None else [None] * len(indices)
    misses = [j for j, item in enumerate(items) if item is None]
    for j, record in zip(misses, read(indices[misses]) if misses else []):
        index, label = int(indices[j]), int(record["label"])
        items[j] = (compute(index, record), label)
        if store is not None:
            store.put(index, items[j][0], label)
    return items


def clear() -> None:
    """Drop every store (tests; a process that wants its memory back)."""
    with _stores_lock:
        _stores.clear()
