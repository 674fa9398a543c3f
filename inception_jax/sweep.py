"""Runs and sweeps of runs, as the main job drives them. (Sweep rows: inception_jax/sweep_rows.py.)"""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections

from inception_jax.train import train_and_evaluate

log = logging.getLogger(__name__)


def default_workdir(config_arg: str) -> str:
    base = os.path.splitext(os.path.basename(config_arg.split(":")[0]))[0]
    suffix = config_arg.split(":", 1)[1].replace(",", "_").replace("=", "-") if ":" in config_arg else ""
    return os.path.join("workdir", base + (f"-{suffix}" if suffix else ""))


def run_from_flags(config: ml_collections.ConfigDict, *, config_arg: str, workdir: str | None, row: str | None,
                   rows_csv: str | None, export_csv: str | None, print_commands: bool) -> int:
    workdir = workdir or default_workdir(config_arg)
    result = train_and_evaluate(config, workdir)
    log.info("run %s: %s", workdir, result.status)
    return 0


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.update_from_flattened_dict(overrides)
    return c
