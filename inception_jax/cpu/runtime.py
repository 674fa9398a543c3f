"""Process-level setup before a run: the cores XLA:CPU computes on (`cpu_threads`), how it runs single-device steps
(cpu/host_memory.py), TensorFlow kept off accelerators, jax.distributed, the compilation cache."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from inception_jax.cpu import host_memory

log = logging.getLogger(__name__)
_DONE = False
# The cores this process could use before pin_cpu_threads narrowed them: a sweep spreads its lanes over these.
_USABLE_CORES: tuple[int, ...] | None = None
CACHE_SUBDIR = "cpu_threads-{}"  # a pinned process's programs: <compilation cache>/cpu_threads-<N>/


def usable_cores() -> tuple[int, ...]:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation or `taskset`), as they were
    before pin_cpu_threads."""
    return _USABLE_CORES if _USABLE_CORES is not None else tuple(sorted(os.sched_getaffinity(0)))


def pin_cpu_threads(threads: int, cores: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Pin this process to `threads` cores (`cores`, else the first of usable_cores()), before JAX creates its CPU
    client: XLA:CPU sizes its thread pool from the process's affinity, so the run computes with exactly that many
    threads (and the same sums) wherever it runs. Returns the cores. Refused once JAX's backends exist (their
    thread pool is already sized) unless the process is already pinned to `threads` cores."""
    global _USABLE_CORES
    from inception_jax.validation import ConfigError

    available = usable_cores()
    chosen = tuple(cores) if cores is not None else available[:threads]
    if len(chosen) != threads or not set(chosen) <= set(available):
        raise ConfigError(f"cpu_threads={threads}: this process may use {len(available)} core(s) "
                          f"({list(available)}); use at most {len(available)}, or 0 for all of them")
    if set(chosen) == os.sched_getaffinity(0):
        _USABLE_CORES = available
        return chosen
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise ConfigError(f"cpu_threads={threads}: JAX's CPU client already runs on "
                          f"{len(os.sched_getaffinity(0))} core(s); call inception_jax.cpu.runtime.setup(config) (or "
                          "pin_cpu_threads) before the first JAX computation")
    _USABLE_CORES = available
    os.sched_setaffinity(0, chosen)
    return chosen


def check_cpu_threads(config: Any) -> None:
    """A run whose config says `cpu_threads` = N computes on N cores, or does not run (its record would lie)."""
    from inception_jax.validation import ConfigError

    threads = int(config.cpu_threads)
    if threads and jax.default_backend() == "cpu" and len(os.sched_getaffinity(0)) != threads:
        raise ConfigError(f"cpu_threads={threads}, but this process runs on {len(os.sched_getaffinity(0))} core(s): "
                          "call inception_jax.cpu.runtime.setup(config) before the first JAX computation (the main "
                          "command does), or set cpu_threads=0")


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


def enable_compilation_cache(directory: str, cpu_threads: int = 0) -> None:
    """Programs compiled in a process pinned to N cores are kept in their own subfolder: XLA:CPU may plan a
    program's parallel work for the thread count it was compiled with, so a 1-thread run never loads a program a
    2-core process compiled (nor the other way round)."""
    if not directory:
        return
    path = os.path.expanduser(directory)
    if cpu_threads:
        path = os.path.join(path, CACHE_SUBDIR.format(cpu_threads))
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
    threads = int(config.get("cpu_threads", 0) or 0)
    if threads:  # first: before anything creates JAX's backends (and before TensorFlow sizes its pools)
        cores = pin_cpu_threads(threads)
        log.info("pinned to core(s) %s of %s: XLA:CPU computes with %d thread(s) (cpu_threads)", list(cores),
                 list(usable_cores()), threads)
    log.info("%s", host_memory.run_cpu_steps_inline())  # before anything creates JAX's backends
    logging.getLogger("absl").addFilter(_QuietLibraries())
    hide_accelerators_from_tensorflow()
    initialize_distributed(config.distributed)
    # JAX_COMPILATION_CACHE_DIR (the Makefile's, the tests') wins over the config's folder, keyed alike.
    enable_compilation_cache(os.environ.get("JAX_COMPILATION_CACHE_DIR") or config.compilation_cache_dir, threads)
    _DONE = True


def compilation_cache_dir() -> str:
    """Where this process keeps compiled programs ('' when it does not)."""
    return jax.config.values.get("jax_compilation_cache_dir") or ""


def device_summary() -> tuple[int, int, int, int]:
    return jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
