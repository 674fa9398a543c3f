"""The repository documents itself: every doc that code, tests, configs, README and docs cite is in `docs/`, and
every section they cite is in that doc.

A citation is a path `docs/<name>.md`, optionally followed by section marks: `docs/architecture.md §1.6`,
`... §8.1-§8.3`, `... §2.8, §4.2.8`, `... §§1.2-1.4`, `docs/libraries.md T2`. A mark written without a path
(`# §2.4`, `(T2)`) names a section of a doc the same file cites by path (a doc also cites itself), or else of
the one doc that has it. A doc has a mark when one of its headings starts with it (`### §1.6 The residual
connection and its scale`) or it defines an anchor `<a id="§1.6">`. Nothing may cite the reference notes that
used to live outside the repository.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCANNED_SUFFIXES = {".py", ".md", ".toml", ".sh", ".cfg", ".ini", ".txt", ".yaml", ".yml"}
SCANNED_NAMES = {"Makefile"}
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", ".jax_cache", ".pytest_cache", ".ruff_cache", "node_modules"}
SKIPPED_TOP_DIRS = {"workdir", "runs", "build", "tensorflow_datasets", "data"}  # run outputs and datasets (.gitignore)

MARK = r"(?:§\d+(?:\.\d+)*|T\d+)"
DOC_PATH = re.compile(r"(?<![\w./-])(docs/[\w-]+(?:/[\w-]+)*\.md)(?![\w-])")
# The first mark right after a path: on the same line, or at the start of the next (in a comment, a list item).
FIRST_MARK = re.compile(r"(?:'s)?[ \t]*(?:\n[ \t]*(?:#|\*|-)?[ \t]*)?(?:(§§?)(\d+(?:\.\d+)*)|(T\d+))")
# Further marks: `, §4.2.8`, ` / §8.3`, `-§8.3`; after `§§` also bare numbers (`§§1.2-1.4`).
NEXT_MARK = re.compile(rf"\s*(?:,|/|-|–|and|or)\s*({MARK}|\d+(?:\.\d+)*)")
BARE_SECTION = re.compile(r"(?<![\w§])§§?(\d+(?:\.\d+)*)")
BARE_TRAP = re.compile(r"(?<=\()T\d+(?=\))")
HEADING_MARK = re.compile(rf"^#{{1,6}}[ \t]+({MARK})(?![\d.]*\d)", re.MULTILINE)
ANCHOR = re.compile(r'<a\s+id="([^"]+)"')
# The notes' old names, in the forms the code used to cite them (written so that this file does not match).
OUTSIDE_NOTES = re.compile(r"shared[/]reference|(?<![\w/.-])(?:ARCHITECTURE|DYING|ECOSYSTEM)\.md")


def _scanned_files() -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")
                         and not (top and d in SKIPPED_TOP_DIRS))
        in_ci = Path(folder).relative_to(ROOT).parts[:1] == (".ci",)
        for name in sorted(files):
            path = Path(folder, name)
            if not path.is_symlink() and (path.suffix in SCANNED_SUFFIXES or name in SCANNED_NAMES or in_ci):
                found.append(path)
    return found


@functools.cache
def texts() -> dict[str, str]:
    """Repository-relative path -> text of every file that may cite a doc."""
    out = {}
    for path in _scanned_files():
        try:
            out[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return out


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


@functools.cache
def citations() -> tuple[tuple[str, int, str, tuple[str, ...]], ...]:
    """(file, line, doc path, marks cited with it) for every citation by path."""
    found = []
    for rel, text in texts().items():
        for m in DOC_PATH.finditer(text):
            marks: list[str] = []
            first = FIRST_MARK.match(text, m.end())
            if first:
                plural = first.group(1) == "§§"
                marks.append(first.group(3) or "§" + first.group(2))
                pos = first.end()
                while nxt := NEXT_MARK.match(text, pos):
                    token = nxt.group(1)
                    if token[0].isdigit():
                        if not plural:
                            break
                        token = "§" + token
                    marks.append(token)
                    pos = nxt.end()
            found.append((rel, _line(text, m.start()), m.group(1), tuple(marks)))
    return tuple(found)


@functools.cache
def marks_of(doc: str) -> frozenset[str]:
    """The section marks a doc defines (its headings' leading marks and its anchors)."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    return frozenset(HEADING_MARK.findall(text)) | frozenset(ANCHOR.findall(text))


def _docs() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md"))


def test_the_specification_docs_exist():
    for doc in ("docs/architecture.md", "docs/dying.md", "docs/libraries.md"):
        assert (ROOT / doc).is_file(), doc
        assert marks_of(doc), f"{doc} has no section marks in its headings"


def test_every_cited_doc_exists():
    missing = [f"{rel}:{line}: {doc}" for rel, line, doc, _ in citations() if not (ROOT / doc).is_file()]
    assert not missing, "cited docs that are not in the repository:\n" + "\n".join(missing)


def test_every_mark_cited_with_its_doc_is_a_section_of_that_doc():
    bad = [f"{rel}:{line}: {doc} {mark}" for rel, line, doc, marks in citations() if (ROOT / doc).is_file()
           for mark in marks if mark not in marks_of(doc)]
    assert not bad, "cited sections that the doc does not have:\n" + "\n".join(bad)


def test_every_mark_without_a_path_is_a_section_of_a_doc_the_file_cites():
    all_docs = _docs()
    bad = []
    for rel, text in texts().items():
        cited = {doc for r, _, doc, _ in citations() if r == rel and (ROOT / doc).is_file()}
        if rel.startswith("docs/") and rel.endswith(".md"):
            cited.add(rel)
        attached = {(line, mark) for r, line, _, marks in citations() if r == rel for mark in marks}
        bare = [(m.start(), "§" + m.group(1)) for m in BARE_SECTION.finditer(text)]
        bare += [(m.start(), m.group(0)) for m in BARE_TRAP.finditer(text)]
        for offset, mark in bare:
            line = _line(text, offset)
            if (line, mark) in attached or (line - 1, mark) in attached:
                continue
            if any(mark in marks_of(doc) for doc in cited):
                continue
            having = [doc for doc in all_docs if mark in marks_of(doc)]
            if len(having) != 1:
                where = f"it is in {having}" if having else "no doc has it"
                bad.append(f"{rel}:{line}: {mark} ({where}; cite the doc by path, e.g. `docs/<name>.md {mark}`)")
    assert not bad, "section marks without a doc to resolve them:\n" + "\n".join(bad)


def test_each_doc_defines_each_mark_once():
    for doc in _docs():
        text = (ROOT / doc).read_text(encoding="utf-8")
        twice = [m for m, n in Counter(HEADING_MARK.findall(text) + ANCHOR.findall(text)).items() if n > 1]
        assert not twice, f"{doc} defines {twice} more than once"


def test_nothing_cites_the_reference_notes_outside_the_repository():
    bad = [f"{rel}:{_line(text, m.start())}: {m.group(0)}" for rel, text in texts().items()
           for m in OUTSIDE_NOTES.finditer(text)]
    assert not bad, ("citations of notes outside the repository; cite docs/architecture.md, docs/dying.md or "
                     "docs/libraries.md instead:\n" + "\n".join(bad))
