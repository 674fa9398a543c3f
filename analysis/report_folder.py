"""A report folder written whole: into a fresh folder beside it, then swapped in by two renames, so the folder holds
the previous report or the new one, never a mix of both (an interrupted report leaves the old one as it was).

The folder's manifest.json lists the files the report wrote; anything else in it (a user's notes) is carried into
the new folder. A non-empty folder without a manifest is not a report's and is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MANIFEST = "manifest.json"


def unusable_reason(out_dir: Path) -> str | None:
    """Why `out_dir` cannot be replaced by a report (None: it is new, empty, or a previous report)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file())):
        return (f"--out={out_dir}: holds files no report wrote (no {MANIFEST}); the report replaces its folder "
                "whole, so give a new or empty folder, or a previous report's")
    return None


def write_manifest(folder: Path) -> None:
    """List every file in `folder` as the report's own."""
    (folder / MANIFEST).write_text(json.dumps({"files": sorted(p.name for p in folder.iterdir())}, indent=1))


def _carry_foreign_files(old: Path, new: Path) -> None:
    """Copy into `new` what a user put in the old report folder: entries its manifest does not list."""
    try:
        ours = set(json.loads((old / MANIFEST).read_text()).get("files", [])) | {MANIFEST}
    except (OSError, json.JSONDecodeError, AttributeError):
        return
    for entry in old.iterdir():
        if entry.name not in ours and not (new / entry.name).exists():
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, new / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, new / entry.name, follow_symlinks=False)


@contextlib.contextmanager
def replaced_whole(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir` to write the report into; on leaving the block it replaces `out_dir`. If the
    block raises (Ctrl-C included), the fresh folder is deleted and `out_dir` is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        yield work
        if out_dir.exists():
            _carry_foreign_files(out_dir, work)
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            try:
                os.replace(work, out_dir)
            except BaseException:
                os.replace(old / out_dir.name, out_dir)  # the previous report back where it was
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
