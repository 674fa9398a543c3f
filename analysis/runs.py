"""Load run folders into typed records, tolerating runs that are partial, broken or still being written.

A run folder is any directory holding one of the files of docs/run_folder.md, or any directory directly under a
`runs/` directory. A run is used when its config is usable and it has finished: it has result.json, or its
verdict.json says it diverged (training stops on a non-finite loss and may write no result.json). Every other
folder becomes a `SkippedRun` with the reason; nothing here raises on a bad run. This module must not import the
training code or compute verdicts from histories: it reads what the runs wrote, with one exception kept in training's
rules (analysis.verdicts.current_verdict): a stored verdict is brought under the final-evaluation rule of
docs/dying.md §3, with a warning, so a run written before that rule reads like one written after it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.verdicts import current_verdict

RUN_FILES = ("config.json", "metrics.jsonl", "verdict.json", "result.json")
# Folders that live inside a sweep or run folder but are never run folders themselves.
# replaced/ holds run folders of another config that --rerun_changed moved aside (docs/run_folder.md: never read).
_NOT_RUN_DIRS = frozenset({"checkpoints", "report", "replaced", "__pycache__"})
# Config keys every analysed run needs; without them a run cannot be placed on any figure.
REQUIRED_CONFIG_KEYS = ("model.name", "data.name", "derived.deepest_width", "derived.variant")


def config_value(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """`config_value(cfg, "derived.variant")`: the nested value, or `default` when any level is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def as_float(value: Any) -> float:
    """A logged value as a float; missing, null, non-numeric and non-finite values become NaN."""
    if isinstance(value, list):
        # learnable_channel scales may be logged per channel: summarise by the mean.
        numbers = [as_float(v) for v in value]
        return float(np.mean(numbers)) if numbers else math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


@dataclasses.dataclass(frozen=True)
class MetricLog:
    """One split of metrics.jsonl: log lines sorted by step, one per step (the last one wins after a resume)."""

    split: str
    records: tuple[dict[str, Any], ...]

    @property
    def steps(self) -> np.ndarray:
        return np.array([int(r["step"]) for r in self.records], dtype=np.int64)

    @property
    def times(self) -> np.ndarray:
        return np.array([as_float(r.get("time")) for r in self.records], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.records)

    def has(self, key: str) -> bool:
        return any(key in r for r in self.records)

    def scalar(self, key: str) -> np.ndarray:
        """The key's values, one per line; NaN where the line lacks it or it is not a finite number."""
        return np.array([as_float(r.get(key)) for r in self.records], dtype=np.float64)

    def blocks(self, key: str) -> np.ndarray:
        """A per-block list key (e.g. `block_ratio/c`) as a (lines, blocks) array padded with NaN."""
        rows = [r.get(key) if isinstance(r.get(key), list) else [] for r in self.records]
        width = max((len(row) for row in rows), default=0)
        out = np.full((len(rows), width), np.nan)
        for i, row in enumerate(rows):
            out[i, : len(row)] = [as_float(v) for v in row]
        return out

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return sorted({k for r in self.records for k in r if k.startswith(prefix)})

    def last_step(self) -> int | None:
        return int(self.records[-1]["step"]) if self.records else None


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A finished run: its config, its metrics per split, and what it wrote at the end."""

    label: str  # unique within a RunSet: the run_id, or the relative path when run_ids collide
    run_id: str
    path: Path
    config: dict[str, Any]
    train: MetricLog
    eval: MetricLog
    probe: MetricLog
    verdict: dict[str, Any] | None
    result: dict[str, Any] | None
    warnings: tuple[str, ...] = ()

    def get(self, dotted: str, default: Any = None) -> Any:
        return config_value(self.config, dotted, default)

    @property
    def model(self) -> str:
        return str(self.get("model.name"))

    @property
    def dataset(self) -> str:
        return str(self.get("data.name"))

    @property
    def deepest_width(self) -> int:
        return int(self.get("derived.deepest_width"))

    @property
    def variant(self) -> str:
        return str(self.get("derived.variant"))

    @property
    def seed(self) -> int | None:
        return self.get("seed")

    @property
    def num_classes(self) -> int | None:
        return self.get("derived.num_classes")

    @property
    def is_residual(self) -> bool:
        """Plain means no shortcut: `model.use_residual` when the config has it, else the variant's name."""
        use_residual = self.get("model.use_residual")
        if isinstance(use_residual, bool):
            return use_residual
        return self.variant not in ("plain", "inception_v4")

    @property
    def verdict_name(self) -> str | None:
        """verdict.json's verdict, else result.json's copy of it, else None."""
        for source in (self.verdict, self.result):
            if source and isinstance(source.get("verdict"), str):
                return source["verdict"]
        return None

    @property
    def last_step(self) -> int:
        steps = [s for s in (self.train.last_step(), self.eval.last_step()) if s is not None]
        return max(steps, default=0)


@dataclasses.dataclass(frozen=True)
class SkippedRun:
    """A folder that is not analysed. status: 'missing' (listed by sweep.json, no folder), 'partial' (no
    result.json yet: unfinished or still running) or 'invalid' (a file is missing or unreadable)."""

    label: str
    path: Path
    status: str
    reason: str
    config: dict[str, Any] | None = None  # config.json when it could be read


@dataclasses.dataclass(frozen=True)
class RunSet:
    root: Path
    runs: tuple[RunRecord, ...]
    skipped: tuple[SkippedRun, ...]
    sweeps: tuple[dict[str, Any], ...]  # every sweep.json found, with "path" added


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, why not)."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        value = json.loads(path.read_text(errors="replace"))
    except (OSError, json.JSONDecodeError) as error:
        return None, f"{path.name} unreadable ({error})"
    if not isinstance(value, dict):
        return None, f"{path.name} holds a {type(value).__name__}, not a JSON object"
    return value, None


def read_metrics(path: Path) -> tuple[dict[str, MetricLog], list[str]]:
    """metrics.jsonl as one MetricLog per split, plus warnings about lines that were ignored.

    A broken last line is what a run being written looks like, so it is dropped quietly (with a warning); a
    broken line elsewhere is dropped and counted. A step logged twice (a resume from an earlier checkpoint)
    keeps its last line.
    """
    lines = path.read_text(errors="replace").split("\n")
    last_index = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    warnings: list[str] = []
    bad_lines = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
            split = str(record["split"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if index == last_index:
                warnings.append(f"{path.name}: ignored a truncated last line (line {index + 1})")
            else:
                bad_lines += 1
            continue
        by_key[(split, step)] = record
    if bad_lines:
        warnings.append(f"{path.name}: ignored {bad_lines} malformed line(s)")
    logs: dict[str, list[dict[str, Any]]] = {}
    for (split, _), record in sorted(by_key.items(), key=lambda item: item[0][1]):
        logs.setdefault(split, []).append(record)
    return {split: MetricLog(split, tuple(records)) for split, records in logs.items()}, warnings


def _judged_with_evaluation(verdict: dict[str, Any], result: dict[str, Any], eval_log: MetricLog,
                            config: dict[str, Any]) -> dict[str, Any]:
    """verdict.json under the final-evaluation rule: the final eval top-1 from result.json (else the last eval
    line), the eval set's size from the last eval line; unchanged when either is missing."""
    last = eval_log.records[-1] if eval_log.records else {}
    top1 = as_float(result.get("eval_top1"))
    if math.isnan(top1):
        top1 = as_float(last.get("top1"))
    num_examples = last.get("num_examples")
    if not isinstance(num_examples, int):
        num_examples = None
    return current_verdict(verdict, top1, num_examples, config_value(config, "derived.num_classes"))


def load_run(path: Path, label: str) -> RunRecord | SkippedRun:
    """One run folder as a RunRecord, or a SkippedRun saying why it cannot be used."""
    config, problem = _read_json(path / "config.json")
    if config is None:
        return SkippedRun(label, path, "invalid", problem or "no config.json")
    missing = [key for key in REQUIRED_CONFIG_KEYS if config_value(config, key) is None]
    if missing:
        return SkippedRun(label, path, "invalid", f"config.json lacks {', '.join(missing)} (docs/run_folder.md)",
                          config)
    try:
        int(config_value(config, "derived.deepest_width"))
    except (TypeError, ValueError):
        width = config_value(config, "derived.deepest_width")
        return SkippedRun(label, path, "invalid", f"config.json derived.deepest_width={width!r} is not an integer",
                          config)
    # Before the first log line a run that has not finished is just starting: partial, not broken.
    not_started = "invalid" if (path / "result.json").is_file() else "partial"
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        return SkippedRun(label, path, not_started, "no metrics.jsonl", config)
    try:
        logs, warnings = read_metrics(metrics_path)
    except OSError as error:
        return SkippedRun(label, path, "invalid", f"metrics.jsonl unreadable ({error})", config)
    if not logs:
        return SkippedRun(label, path, not_started, "metrics.jsonl has no complete log line", config)
    verdict, verdict_problem = _read_json(path / "verdict.json")
    result, result_problem = _read_json(path / "result.json")
    diverged = verdict is not None and verdict.get("verdict") == "diverged"
    last_step = max(log.last_step() or 0 for log in logs.values())
    if result is None and not diverged:
        planned = config_value(config, "train.num_steps")
        of_planned = f" of {planned}" if planned is not None else ""
        why = "unfinished or still running" if result_problem == "no result.json" else result_problem
        return SkippedRun(label, path, "partial", f"{why}: last logged step {last_step}{of_planned}", config)
    empty = MetricLog("", ())
    if verdict is None:
        warnings.append(verdict_problem or "no verdict.json")
    else:
        verdict = _judged_with_evaluation(verdict, result or {}, logs.get("eval", empty), config)
        if "stored_verdict" in verdict:
            warnings.append(f"verdict.json says {verdict['stored_verdict']}; read as {verdict['verdict']} under "
                            f"docs/dying.md §3 (final eval top-1 {verdict['final_eval_top1']:.3f})")
    return RunRecord(label=label, run_id=str(config.get("run_id") or path.name), path=path, config=config,
               train=logs.get("train", empty), eval=logs.get("eval", empty), probe=logs.get("probe", empty),
               verdict=verdict, result=result, warnings=tuple(warnings))


def find_run_dirs(root: Path) -> list[Path]:
    """Run folders under `root` (or `root` itself), sorted; never descends into a run folder."""
    found: list[Path] = []

    def visit(directory: Path) -> None:
        # A folder inside a sweep's runs/ is a run even before it has files (listed as partial), unless it is
        # itself a sweep (sweeps kept under a folder that happens to be named runs/, e.g. runs/ablation/).
        is_sweep = (directory / "sweep.json").is_file() or (directory / "runs").is_dir()
        if any((directory / name).is_file() for name in RUN_FILES) or (directory.parent.name == "runs"
                                                                        and not is_sweep):
            found.append(directory)
            return
        for child in sorted(p for p in directory.iterdir() if p.is_dir()):
            if child.name not in _NOT_RUN_DIRS and not child.name.startswith("."):
                visit(child)

    visit(root)
    return found


def load_runs(root: str | Path) -> RunSet:
    """Every run folder under `root`: a sweep folder, its `runs/` folder, a folder of sweeps, or one run."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--runs={root}: not a directory (expected a sweep folder or a folder of runs)")
    run_dirs = find_run_dirs(root)

    def relative(path: Path) -> str:
        return str(path.relative_to(root)) if path != root else path.name

    loaded = [load_run(path, relative(path)) for path in run_dirs]
    skipped = [item for item in loaded if isinstance(item, SkippedRun)]
    runs = [item for item in loaded if isinstance(item, RunRecord)]
    # Short labels (run ids) unless two runs share one, as when several sweeps reuse row names.
    id_counts = Counter(run.run_id for run in runs)
    runs = [dataclasses.replace(run, label=run.run_id) if id_counts[run.run_id] == 1 else run for run in runs]

    sweeps = []
    candidates = {root} | {p.parent.parent for p in run_dirs if p.parent.name == "runs"}
    for sweep_dir in sorted(candidates):
        # A sweep counts only when its runs/ folder is inside what was asked for, so pointing at one run
        # does not list the sweep's other runs as missing.
        inside = sweep_dir == root or sweep_dir / "runs" == root or root in sweep_dir.parents
        sweep, _ = _read_json(sweep_dir / "sweep.json")
        if sweep is None or not inside:
            continue
        sweeps.append({**sweep, "path": str(sweep_dir)})
        for run_id in sweep.get("run_ids") or []:
            missing_path = sweep_dir / "runs" / str(run_id)
            if not missing_path.is_dir():
                skipped.append(SkippedRun(relative(missing_path), missing_path, "missing",
                                          "listed in sweep.json but has no run folder"))
    return RunSet(root=root, runs=tuple(runs), skipped=tuple(skipped), sweeps=tuple(sweeps))
