"""Entry point: flags -> a run (or a sweep of runs) -> files in --workdir. Nothing else lives here.

    python -m inception_jax.main --config=configs/ablation_scale.py            # the main job (a sweep)
    python -m inception_jax.main --config=configs/default.py --workdir=/tmp/r  # one run
"""

import errno
import os
import sys
import time

from inception_jax import COMMAND_STARTED
from inception_jax.cpu import host_memory

# First of all, while no library or thread exists: glibc's malloc with transparent huge pages (cpu/host_memory.py).
# Only as a command: a process that imports this module (a test, a notebook) is never replaced.
if __name__ == "__main__":
    os.environ.setdefault(COMMAND_STARTED, repr(time.time()))
    host_memory.reexec_with_huge_pages()

# Before TensorFlow or JAX load: TF (used by TFDS and clu) must not grab GPUs, and must stay quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:arg], e.g. configs/default.py:tiny",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs are written (default: ./workdir/<config name>).")
_ROW = flags.DEFINE_string("row", None, "Run only this row (run_id) of the sweep.")
_ROWS_CSV = flags.DEFINE_string("rows_csv", None, "Take the sweep's rows from this CSV instead of the config.")
_EXPORT_CSV = flags.DEFINE_string("export_csv", None, "Write the sweep's rows to this CSV and exit.")
_PRINT_COMMANDS = flags.DEFINE_bool("print_commands", False, "Print each row's exact command line and exit.")
_RERUN_CHANGED = flags.DEFINE_bool("rerun_changed", False, "A run folder holding a run of another config (finished "
                                   "or not, another length included): move it aside and run again (a sweep's rows "
                                   "to <workdir>/replaced/<run_id>-<UTC>/, a single run to <workdir>/replaced/<UTC>/); "
                                   "without it such a run is refused.")
_PARALLEL_ROWS = flags.DEFINE_integer("parallel_rows", 0, "Rows trained side by side, each in its own process on "
                                      "config.cpu_threads cores (0: as many as the cores allow; only on CPU with "
                                      "cpu_threads > 0, else one row at a time).")
_LOG_TO_CONSOLE = flags.DEFINE_bool("log_to_console", False, "Show the whole log on the console too (libraries' "
                                    "notes, each run's detail); it is always written to <workdir>/sweep.log (a sweep) "
                                    "or <workdir>/train.log (a run).")
flags.mark_flag_as_required("config")
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def main(argv) -> int:
    del argv
    from inception_jax.sweeps import console_log

    console_log.install(to_console=_LOG_TO_CONSOLE.value)  # before anything logs: the console shows warnings only
    from inception_jax.cpu import runtime
    from inception_jax.data.input_pipeline import DataError
    from inception_jax.sweeps import main_job
    from inception_jax.sweeps.lanes import LaneCrashed
    from inception_jax.training.checkpointing import CheckpointError
    from inception_jax.validation import ConfigError

    runtime.setup(_CONFIG.value)
    logging.info("%s", host_memory.describe())
    logging.info("process %d of %d, %d local / %d global devices", *runtime.device_summary())
    try:
        return _run(main_job)
    except (ConfigError, DataError) as e:  # bad input: the message says what and where; no traceback needed
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, LaneCrashed) as e:  # no checkpoint restores, a save failed, a row's process died
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        # The machine, not the code: a full disk, a read-only or foreign file system (the workdir was checked
        # before the run started; this is what changed since).
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(main_job) -> int:
    return main_job.run_from_flags(_CONFIG.value, config_arg=config_flags.get_config_filename(flags.FLAGS["config"]),
                                   workdir=_WORKDIR.value, row=_ROW.value, rows_csv=_ROWS_CSV.value,
                                   export_csv=_EXPORT_CSV.value, print_commands=_PRINT_COMMANDS.value,
                                   rerun_changed=_RERUN_CHANGED.value, parallel_rows=_PARALLEL_ROWS.value)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that a config mistake is one line and exit status 2, not a traceback: a
    `--config` file that is missing or does not parse, a bad `:arg` (absl would load the file itself and print
    the error inside its own traceback, or defer a missing file's to the first use), and an override of a key the
    config lacks (`--config.train.nonexistent=1`: ml_collections' uncaught KeyError)."""
    from inception_jax.config_files import check_override_flags, config_spec, load_config
    from inception_jax.validation import ConfigError

    try:
        spec = config_spec(argv)
        if spec:
            load_config(spec)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError):
        try:
            check_override_flags(argv)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
