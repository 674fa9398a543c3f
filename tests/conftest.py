"""Test session setup: 8 simulated CPU devices (before jax is imported), quiet TF, a persistent compile cache, and
programs compiled without LLVM's optimisations."""

import os

# XLA:CPU's LLVM optimisations cost most of a test's compile time and buy speed the tests do not need: the same
# programs (same HLO, same fusions and buffers) run slower. Two of the slowest tests took 86 s instead of 161 s.
# Subprocesses the tests start inherit it.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                                ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# --- data pipeline fixtures (tests/test_input_pipeline.py, tests/test_datasets.py) ---
import pytest


@pytest.fixture(scope="session")
def shapes_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data dir holding the embedded dataset's 'tiny' config (480 train / 120 validation), prepared once.

    Under pytest-xdist the dir sits in the session root the workers share, and the builder's file lock makes them
    prepare it once; without xdist it is this session's own temp dir.
    """
    import inception_jax.data.sources  # noqa: F401  (registers the builder)
    from inception_jax.data.sources import get_builder

    root = tmp_path_factory.getbasetemp()
    data_dir = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "shapes_textures_tiny"
    get_builder("shapes_textures/tiny", str(data_dir))
    return str(data_dir)


@pytest.fixture(scope="session")
def tiny_sweep(shapes_tiny_dir, tmp_path_factory):
    """The main job's tiny sweep (6 runs, about 2 minutes on 2 cores) run once per test session, as
    (workdir, the command's CompletedProcess); treat it as read-only (copy it to change it). Under pytest-xdist
    the workers share it: the first one to take the lock runs it, the others read its saved output."""
    import fcntl
    import json
    import subprocess

    from tests.training_helpers import main_job

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    workdir, saved = shared / "tiny_sweep", shared / "tiny_sweep.command.json"
    with open(shared / "tiny_sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not saved.exists():
            proc = main_job("--parallel_rows=2", workdir=str(workdir), data_dir=shapes_tiny_dir)  # 2 lanes
            saved.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
                                         "stderr": proc.stderr}))
    return str(workdir), subprocess.CompletedProcess(**json.loads(saved.read_text()))


# --- training fixtures (tests/test_train.py, test_checkpointing.py, test_warm_start.py, test_distributed.py, ...) ---
@pytest.fixture(scope="session")
def one_device_run(shapes_tiny_dir, tmp_path_factory) -> str:
    """The reference run: the tiny config on one device, 6 steps, uninterrupted."""
    from inception_jax.training.loop import train_and_evaluate
    from tests.training_helpers import tiny_config

    workdir = str(tmp_path_factory.mktemp("one_device"))
    train_and_evaluate(tiny_config(shapes_tiny_dir, **{"mesh.num_devices": 1}), workdir)
    return workdir
