"""Finding inputs for readers.read_inputs: folders walked (hidden entries skipped, links out of the
folder skipped unless followed, link cycles ended), globs expanded, every bad path named."""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Iterator

from .readers import KNOWN_SUFFIXES, RejectedInput, SkippedInput


def _walk(top: str, follow_symlinks: bool) -> Iterator[str | RejectedInput | SkippedInput]:
    """Regular files under a folder (unsupported formats too: the reader names them), depth
    first in name order, hidden entries
    skipped. Links leading outside the folder are skipped unless follow_symlinks; every folder
    is visited once (link cycles end); unreadable folders and broken links are named. Iterative:
    any nesting depth works."""
    top_real = os.path.realpath(top)
    visited: set[tuple[int, int]] = set()

    def inside(path: str) -> bool:
        return path == top_real or path.startswith(top_real.rstrip(os.sep) + os.sep)

    def listing(folder: str) -> list[os.DirEntry] | RejectedInput | None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                return None
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as err:
            return RejectedInput(folder, f"{folder}: cannot read folder ({err.strerror or err})")

    first = listing(top)
    if isinstance(first, RejectedInput):
        yield first
        return
    stack: list[Iterator[os.DirEntry]] = [iter(first or [])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        known = os.path.splitext(entry.name)[1].lower() in KNOWN_SUFFIXES
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    try:
                        os.stat(entry.path)
                        why = "broken symbolic link"
                    except OSError as err:
                        why = "symbolic link loop" if err.errno == errno.ELOOP else "broken symbolic link"
                    yield (RejectedInput if known else SkippedInput)(entry.path, f"{entry.path}: {why}")
                    continue
                if not follow_symlinks and not inside(target):
                    yield SkippedInput(entry.path, f"{entry.path}: symbolic link leaves the folder "
                                                   "(--follow-symlinks reads it)")
                    continue
            if entry.is_dir():
                sub = listing(entry.path)
                if sub is None:
                    yield SkippedInput(entry.path, f"{entry.path}: folder already read (a link cycle)")
                elif isinstance(sub, RejectedInput):
                    yield sub
                else:
                    stack.append(iter(sub))
            elif entry.is_file():
                yield entry.path
        except OSError as err:
            yield RejectedInput(entry.path, f"{entry.path}: cannot read ({err.strerror or err})")


def _expand(arg: str, follow_symlinks: bool) -> Iterator[str | RejectedInput | SkippedInput]:
    """One command-line input -> file paths (folders walked, globs expanded), or a rejection.
    Unsupported formats come out too: reading them names them as skipped."""
    if os.path.isdir(arg):
        yield from _walk(arg, follow_symlinks)
    elif os.path.isfile(arg):
        yield arg
    elif os.path.lexists(arg) and not os.path.exists(arg):
        yield RejectedInput(arg, f"{arg}: broken symbolic link")
    elif os.path.exists(arg):
        yield RejectedInput(arg, f"{arg}: not a regular file or directory")
    elif glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            yield RejectedInput(arg, f"{arg}: no files match")
        for match in matches:
            if os.path.isdir(match):
                yield from _walk(match, follow_symlinks)
            elif os.path.isfile(match):
                yield match
    else:
        yield RejectedInput(arg, f"{arg}: no such file or directory")
