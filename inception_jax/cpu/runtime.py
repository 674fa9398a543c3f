"""Process-level setup before a run: how XLA:CPU runs single-device steps (cpu/host_memory.py), TensorFlow kept off
accelerators, jax.distributed, the compilation cache."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from inception_jax.cpu import host_memory

log = logging.getLogger(__name__)
_DONE = False


def hide_accelerators_from_tensorflow() -> None:
    """TFDS and clu import TensorFlow; it must not reserve GPU/TPU memory that JAX needs."""
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
    except (ImportError, RuntimeError, ValueError):  # no TF, or its devices already initialised: nothing to hide
        pass


def initialize_distributed(cfg: Any) -> None:
    """jax.distributed for multi-host runs: an explicit coordinator, or auto-detection on SLURM / TPU / cloud."""
    if not cfg.enabled:
        return
    kwargs = {}
    if cfg.coordinator_address:
        kwargs = {"coordinator_address": cfg.coordinator_address, "num_processes": cfg.num_processes,
                  "process_id": cfg.process_id}
    jax.distributed.initialize(**kwargs)


def enable_compilation_cache(directory: str) -> None:
    if not directory:
        return
    path = os.path.expanduser(directory)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _QuietLibraries(logging.Filter):
    """Orbax logs every save and restore step at INFO through absl; keep its warnings, drop the chatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def setup(config: Any) -> None:
    """Idempotent: the main job calls it once, tests may call it again."""
    global _DONE
    if _DONE:
        return
    log.info("%s", host_memory.run_cpu_steps_inline())  # first: before anything creates JAX's backends
    logging.getLogger("absl").addFilter(_QuietLibraries())
    hide_accelerators_from_tensorflow()
    initialize_distributed(config.distributed)
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        enable_compilation_cache(config.compilation_cache_dir)
    _DONE = True


def device_summary() -> tuple[int, int, int, int]:
    return jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
