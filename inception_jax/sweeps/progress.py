"""What a sweep tells whoever watches it: the plan, each row as it starts, is skipped or finishes, and the end.
The runner calls these; a console (or nothing, in tests) shows them. A row's per-step progress is not sent: a
watcher reads the running rows' metrics.jsonl, the file the run writes anyway (docs/run_folder.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class SweepProgress(Protocol):
    def planned(self, *, name: str, rows: Sequence[str], pending: Sequence[str], lanes: int,
                steps: Mapping[str, int]) -> None:
        """Before the first row: every selected row, those still to train (in order), how many train at once, and
        each pending row's training length in steps."""

    def row_started(self, run_id: str, run_dir: str, lane: int) -> None:
        """A row begins (or resumes) training in `run_dir` on lane `lane` (0-based)."""

    def row_skipped(self, run_id: str, why: str) -> None:
        """A row that will not train now (finished earlier, ...)."""

    def row_finished(self, run_id: str, result: Mapping[str, Any], seconds: float) -> None:
        """A row ended: its result.json (status, verdict, eval_top1, ...) and the wall time it took in this
        command."""

    def close(self) -> None:
        """The sweep ended (finished, failed or interrupted): stop any display."""


class NullProgress:
    """Shows nothing: tests, and callers that watch the log instead."""

    def planned(self, *, name: str, rows: Sequence[str], pending: Sequence[str], lanes: int,
                steps: Mapping[str, int]) -> None:
        pass

    def row_started(self, run_id: str, run_dir: str, lane: int) -> None:
        pass

    def row_skipped(self, run_id: str, why: str) -> None:
        pass

    def row_finished(self, run_id: str, result: Mapping[str, Any], seconds: float) -> None:
        pass

    def close(self) -> None:
        pass
