"""A sweep as a spreadsheet: one row per run, `run_id` plus dotted config overrides (`model.residual_scale`,
`train.learning_rate`, ...). Rows are read from / written to CSV and validated, all of them, before any runs.

A cell holds a Python literal (`0.1`, `(1, 2, 2)`, `{'reduction_b.b0_1': 300}`, `True`) or a bare string
(`sgd`); an empty cell means "not overridden in this row".
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import re
import shlex
from collections.abc import Sequence
from typing import Any

import ml_collections

from inception_jax.configuration import flatten, model_knobs, validate_static
from inception_jax.data.input_pipeline import DataConfig
from inception_jax.models import model_options
from inception_jax.validation import ConfigError, closest_keys_hint

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=-]*")


@dataclasses.dataclass(frozen=True)
class SweepRow:
    run_id: str
    overrides: dict[str, Any]
    # Where the row was read ("rows.csv line 4"), for error messages; not part of the row's identity.
    origin: str = dataclasses.field(default="", compare=False)


def parse_cell(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def format_cell(value: Any) -> str:
    """The inverse of parse_cell: strings stay bare unless they would read back as something else."""
    if isinstance(value, str):
        return value if parse_cell(value) == value else repr(value)
    return repr(value)


def read_csv(path: str) -> list[SweepRow]:
    """The rows of a spreadsheet as people save it: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted and
    rows of empty cells (Excel's empty lines, ",,,") are skipped. Every error names the file and its line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return _read_rows(path, csv.reader(f))
    except UnicodeDecodeError as e:
        line = _line_of_byte(path, e.start)
        raise ConfigError(f"{path} line {line}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}); save the "
                          "spreadsheet as 'CSV UTF-8'") from None


def _read_rows(path: str, reader: Any) -> list[SweepRow]:
    header = [cell.strip() for cell in next(reader, [])]
    if not header or header[0] != "run_id":
        raise ConfigError(f"{path} line 1: the first column must be 'run_id', found {header}")
    repeated = sorted({c for c in header if c and header.count(c) > 1})
    if repeated:
        raise ConfigError(f"{path} line 1: columns {repeated} appear more than once; each config key once")
    rows = []
    for cells in reader:
        where = f"{path} line {reader.line_num}"
        if not any(cell.strip() for cell in cells):
            continue  # an empty row
        run_id = cells[0].strip()
        if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header):]):
            raise ConfigError(f"{where} (run_id {run_id!r}): {len(cells)} cells but {len(header)} columns "
                              f"({header}); a cell holding a comma needs quotes")
        named = zip(header[1:], cells[1:], strict=False)
        rows.append(SweepRow(run_id, {k: parse_cell(v) for k, v in named if v.strip()}, origin=where))
    return rows


def _line_of_byte(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def write_csv(path: str, rows: Sequence[SweepRow]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row.overrides if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run_id", *columns])
        for row in rows:
            cells = (format_cell(row.overrides[c]) if c in row.overrides else "" for c in columns)
            writer.writerow([row.run_id, *cells])


def describe_row(row: SweepRow, column: str | None = None) -> str:
    """How every message names a row: its run_id, where it was read, and the column at fault."""
    origin = f" ({row.origin})" if row.origin else ""
    return f"sweep row {row.run_id!r}{origin}" + (f", column {column!r}" if column else "")


def apply_row(base: ml_collections.ConfigDict, row: SweepRow) -> ml_collections.ConfigDict:
    """The base config with one row's overrides, each checked against the config's keys and types."""
    config = ml_collections.ConfigDict(base.to_dict(), type_safe=True)
    valid = list(flatten(base.to_dict()))
    for column, value in row.overrides.items():
        if column not in valid:
            raise ConfigError(f"{describe_row(row)}: unknown column {column!r}{closest_keys_hint(column, valid)}")
        try:
            config.update_from_flattened_dict({column: value})
        except (TypeError, ValueError, KeyError) as e:
            current = flatten(base.to_dict())[column]
            raise ConfigError(f"{describe_row(row, column)}: value {value!r} does not fit (the config holds "
                              f"{type(current).__name__} {current!r}): {e}") from None
    return config


def validate_rows(base: ml_collections.ConfigDict, rows: Sequence[SweepRow]) -> list[ml_collections.ConfigDict]:
    """Every row's config, or the first error naming its row, column and what is allowed. Nothing runs here."""
    if not rows:
        raise ConfigError("the sweep has no rows")
    seen: dict[str, str] = {}
    configs = []
    for row in rows:
        if not RUN_ID.fullmatch(row.run_id):
            raise ConfigError(f"{describe_row(row, 'run_id')}: {row.run_id!r} is not a valid run_id: use letters, "
                              "digits and _ . = - (it names the run's folder)")
        if row.run_id in seen:
            first = seen[row.run_id]
            raise ConfigError(f"{describe_row(row, 'run_id')}: run_id {row.run_id!r} appears twice"
                              f"{f' (first at {first})' if first else ''}; run ids must be unique")
        seen[row.run_id] = row.origin
        config = apply_row(base, row)
        try:
            validate_static(config)
            DataConfig.from_config(config.data)
            model_options(config.model.name, num_classes=config.model.num_classes or 1000,
                          **model_knobs(config.model))
        except (TypeError, ValueError) as e:
            column = next((c for c in row.overrides if c.split(".")[-1] in str(e)), None)
            raise ConfigError(f"{describe_row(row, column)}: {e}") from None
        configs.append(config)
    return configs


def row_command(config_arg: str, run_id: str, workdir: str, rows_csv: str | None = None,
                overrides: Sequence[str] = ()) -> str:
    """The exact command line that reruns one row: the sweep's `--config.*` overrides included, every argument
    shell-quoted (a workdir with a space, pasted, must write to the same folder)."""
    parts = [f"--config={config_arg}", f"--workdir={workdir}", *overrides]
    if rows_csv:
        parts.append(f"--rows_csv={rows_csv}")
    parts.append(f"--row={run_id}")
    return " ".join(["python -m inception_jax.main", *(shlex.quote(p) for p in parts)])


def override_args(argv: Sequence[str]) -> list[str]:
    """The `--config.key=value` (and `--noconfig.key`) arguments of a command line, as typed; a value given as the
    next argument (`--config.key value`) is joined to its flag."""
    out: list[str] = []
    args = list(argv)
    for i, arg in enumerate(args):
        if not arg.startswith(("--config.", "--noconfig.")):
            continue
        if "=" not in arg and arg.startswith("--config.") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            arg = f"{arg}={args[i + 1]}"
        out.append(arg)
    return out
