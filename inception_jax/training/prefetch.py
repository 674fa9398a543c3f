"""DevicePrefetch: host batches become global device arrays a few steps ahead, on a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from inception_jax.training import sharding


class DevicePrefetch:
    """Host batches -> global device arrays, `size` steps ahead, on a background thread."""

    def __init__(self, host_batches: Iterator[dict], mesh: Any, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._peeked: dict | None = None
        self._thread = threading.Thread(target=self._fill, args=(host_batches, mesh), daemon=True)
        self._thread.start()

    def _fill(self, host_batches: Iterator[dict], mesh: Any) -> None:
        try:
            for batch in host_batches:
                if self._stop.is_set():
                    return
                self._queue.put(sharding.global_batch(batch, mesh))
        except Exception as e:  # surfaced in the training thread, not lost in this one
            self._queue.put(e)

    def __next__(self) -> dict:
        if self._peeked is not None:
            item, self._peeked = self._peeked, None
            return item
        item = self._queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def peek(self) -> dict:
        """The next batch, which `__next__` then returns again."""
        if self._peeked is None:
            self._peeked = next(self)
        return self._peeked

    def close(self) -> None:
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()
