"""Durable writes: fsync, an atomic JSON file, a hashing sink, and one atomic folder swap.

Every writer of the project that must survive `kill -9` goes through these: the store's
manifest (`write_json_atomic`), its data files (`HashingFile` + fsync), saved models and
training checkpoints (`staged_folder`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any, compact: bool = False, sync_dir: bool = True) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: all or nothing."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1, sort_keys=True)
    data = (text + "\n").encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_path(path.parent)


def is_temp_name(name: str) -> bool:
    """Whether a file name is one `write_json_atomic` uses for its temp file."""
    return name.startswith(".") and name.endswith(".tmp")


class HashingFile:
    """A write-only file object that hashes and counts bytes as they go (pyarrow writes to it)."""

    def __init__(self, f):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.bytes += view.nbytes
        return self._f.write(view)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_folder(staged: Path, dst: Path, aside: Path | None = None) -> None:
    """Swap a fully written folder in for dst, durably.

    The staged files and folder are fsynced and given the mode of a folder made under the
    umask (mkdtemp makes 0700); dst is moved aside (default ``.NAME.old-PID``) so there is never
    a moment without one, staged is renamed to dst, the parent fsynced, the old one removed. A
    crash between the two renames leaves only `aside`: callers that resume put it back.
    """
    staged, dst = Path(staged), Path(dst)
    aside = Path(aside) if aside is not None else dst.with_name(f".{dst.name}.old-{os.getpid()}")
    for f in staged.iterdir():
        if f.is_file():
            fsync_path(f)
    umask = os.umask(0)
    os.umask(umask)
    staged.chmod(0o777 & ~umask)
    fsync_path(staged)
    if aside.exists():
        shutil.rmtree(aside)
    moved = False
    if dst.exists():
        os.replace(dst, aside)
        moved = True
    os.replace(staged, dst)
    fsync_path(dst.parent)
    if moved:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(dst: str | os.PathLike, aside: Path | None = None, prefix: str | None = None
                  ) -> Iterator[Path]:
    """A fresh folder beside dst to fill: on a clean exit it replaces dst (`replace_folder`),
    on an error it is removed and dst is untouched."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        replace_folder(tmp, dst, aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["HashingFile", "fsync_path", "is_temp_name", "replace_folder", "sha256_file", "staged_folder",
           "write_json_atomic"]
