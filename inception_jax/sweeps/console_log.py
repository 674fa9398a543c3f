"""Where the log goes: every record (ours, absl's, TFDS's, JAX's, Orbax's warnings) into a file in the workdir, and
to the console only what a user can act on: warnings and errors, less the library notes listed below. With
`--log_to_console` the console shows the whole log as well.

main.py calls `install` once, before anything logs; the command calls `to_file` once the workdir is known (a
sweep's <workdir>/sweep.log, a run's <workdir>/train.log); records logged before then are kept and written first.
A command that writes no workdir (--print_commands) writes no log. Library modules never add handlers: they log,
and this module alone decides where it goes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

SWEEP_LOG = "sweep.log"  # <workdir>/sweep.log: the sweep command's own log
RUN_LOG = "train.log"  # <run_dir>/train.log: one run's log
LOG_TO_CONSOLE_FLAG = "--log_to_console"
# Warnings nobody can act on, left to the file: (logger name prefix, message start).
QUIET_ON_CONSOLE = (
    ("py.warnings", ""),  # libraries' deprecation and future warnings
    ("absl", "Variant folder"),  # TFDS listing a data dir that holds an unfinished or foreign folder
    ("absl", "Waiting for previous save"),  # Orbax: a checkpoint save still writing when the next one starts
)
_BUFFER_LIMIT = 20_000  # records kept until the log file opens


def absl_formatter() -> logging.Formatter:
    """The file's format: absl's (`I1207 08:16:19.447344 140303770626944 runtime.py:62] message`)."""
    from absl import logging as absl_logging

    return absl_logging.PythonFormatter()


class _Buffer(logging.Handler):
    """Records logged before the log file is known, written into it when it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < _BUFFER_LIMIT:
            self.records.append(record)


class ConsoleHandler(logging.Handler):
    """Writes records between the lines of a live progress display (tqdm.write clears and redraws its bars)."""

    def __init__(self, stream: TextIO | None = None, *, everything: bool = False):
        super().__init__(logging.NOTSET if everything else logging.WARNING)
        self.stream = stream
        self.everything = everything
        self.setFormatter(absl_formatter() if everything else logging.Formatter("%(levelname)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if self.everything:
            return True
        message = record.getMessage()
        return not any(record.name.startswith(name) and message.startswith(start) for name, start in QUIET_ON_CONSOLE)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:  # logging's rule: a handler never raises
            self.handleError(record)


class _Routing:
    buffer: _Buffer | None = None
    console: ConsoleHandler | None = None
    file: logging.FileHandler | None = None
    to_console = False


def install(*, to_console: bool = False, stream: TextIO | None = None) -> None:
    """Route the process's logging: replace absl's stderr handler by the console's (warnings, or everything with
    `to_console`) and a buffer that `to_file` empties into the log file. The level stays absl's --verbosity."""
    from absl import logging as absl_logging

    root = logging.getLogger()
    for handler in (absl_logging.get_absl_handler(), _Routing.buffer, _Routing.console, _Routing.file):
        if handler is not None and handler in root.handlers:
            root.removeHandler(handler)
    if _Routing.file is not None:
        _Routing.file.close()
    _Routing.buffer, _Routing.console = _Buffer(), ConsoleHandler(stream, everything=to_console)
    _Routing.file, _Routing.to_console = None, to_console
    root.addHandler(_Routing.buffer)
    root.addHandler(_Routing.console)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger -> the file


def to_file(path: str) -> str:
    """Append every record from now on, and those logged since `install`, to `path`; the path, absolute. Without
    `install` (a test, a notebook) nothing is routed."""
    path = os.path.abspath(path)
    if _Routing.console is None or (_Routing.file is not None and _Routing.file.baseFilename == path):
        return path
    root = logging.getLogger()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(absl_formatter())
    if _Routing.buffer is not None:
        root.removeHandler(_Routing.buffer)
        for record in _Routing.buffer.records:
            handler.handle(record)
        _Routing.buffer = None
    if _Routing.file is not None:
        root.removeHandler(_Routing.file)
        _Routing.file.close()
    root.addHandler(handler)
    _Routing.file = handler
    return path


def log_path() -> str | None:
    """The log file, once `to_file` opened it."""
    return _Routing.file.baseFilename if _Routing.file is not None else None


def log_to_console() -> bool:
    return _Routing.to_console
