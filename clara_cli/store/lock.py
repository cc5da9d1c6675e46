"""The one-writer lock and the readers' leases.

The writer holds an exclusive flock on ``<root>/LOCK``: the kernel drops it when the holder
dies, so a killed writer leaves no stale lock. A reader of version N holds a shared flock on
``<root>/readers/vN`` (its lease) and never waits for the writer; gc keeps the files of every
leased version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreBusyError
from .faults import fault_point
from .protocol import LOCK, READERS_DIR


class _LockState:
    """This process's hold on one store's writer lock."""

    def __init__(self, pid: int):
        self.pid = pid
        self.in_transaction = False  # a writer() is open (a session may hold the lock without one)


_HELD_LOCKS: dict[str, _LockState] = {}  # lock path -> this process's hold on it


def _held(root: Path) -> tuple[str, _LockState | None]:
    key = str((root / LOCK).resolve())
    state = _HELD_LOCKS.get(key)
    return key, state if state is not None and state.pid == os.getpid() else None  # not a fork's parent's


@contextlib.contextmanager
def exclusive_lock(root: Path, wait: bool) -> Iterator[None]:
    """flock on <root>/LOCK for as long as the block runs. Waiting writers say once on stderr
    whom they wait for; with wait=False a held lock raises StoreBusyError at once."""
    path = root / LOCK
    key, state = _held(root)
    if state is not None:
        raise StoreBusyError(f"store {root} is busy: this process already holds its writer")
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            f.seek(0)
            holder = _describe_holder(f.read())
            if not wait:
                raise StoreBusyError(f"store {root} is busy: {holder}; try again when it finishes "
                                     "(or leave out --no-wait to wait)") from None
            print(f"clara: waiting for the store {root}: {holder}", file=sys.stderr, flush=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        state = _LockState(os.getpid())
        _HELD_LOCKS[key] = state
        try:
            with contextlib.suppress(OSError):  # informational only: a full disk must not stop us
                f.seek(0)
                f.truncate()
                f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
                f.flush()
            fault_point("locked")
            yield
        finally:
            _HELD_LOCKS.pop(key, None)
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
                f.flush()
    finally:
        f.close()  # closing the descriptor releases the flock


@contextlib.contextmanager
def writer_lock(root: Path, wait: bool) -> Iterator[None]:
    """The lock for one transaction: taken here, or borrowed from this process's session
    (`Store.session`), one transaction at a time."""
    _, state = _held(root)
    if state is None:
        with exclusive_lock(root, wait):
            _, state = _held(root)
            assert state is not None
            state.in_transaction = True
            yield
        return
    if state.in_transaction:
        raise StoreBusyError(f"store {root} is busy: this process already holds its writer")
    state.in_transaction = True
    try:
        yield
    finally:
        state.in_transaction = False


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"another writer (pid {info['pid']} on {info['host']}, since {since}) holds the lock"
    except (ValueError, KeyError, TypeError):
        return "another writer holds the lock"


# -- leases ------------------------------------------------------------------------------------


def lease_path(root: Path, version: int) -> Path:
    """The file a reader of `version` holds a shared flock on."""
    return root / READERS_DIR / f"v{version:08d}"


def create_lease_file(root: Path, version: int) -> None:
    """Writers create the lease file of each version so read-only readers can lock it."""
    with contextlib.suppress(OSError):
        (root / READERS_DIR).mkdir(exist_ok=True)
        os.close(os.open(lease_path(root, version), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def take_lease(root: Path, version: int):
    """An open file holding a shared flock on the version's lease file, or None where the store
    is read-only to us (then the grace period protects the reader)."""
    path = lease_path(root, version)
    for flags in (os.O_RDONLY, os.O_RDWR | os.O_CREAT):
        try:
            if flags & os.O_CREAT:  # a store made before leases existed has no readers/ yet
                path.parent.mkdir(exist_ok=True)
            fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # never blocks: only gc takes it exclusively, with NB
        except OSError:
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    return None


def leased_versions(root: Path, current: int) -> set[int]:
    """Versions some reader holds a lease on; lease files of unused old versions are removed."""
    folder = root / READERS_DIR
    leased: set[int] = set()
    if not folder.is_dir():
        return leased
    for entry in os.scandir(folder):
        name = entry.name
        if not (name.startswith("v") and name[1:].isdigit()):
            continue
        version = int(name[1:])
        if version == current:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            leased.add(version)
        else:  # unlinked while we hold it: a reader opening it now re-checks the manifest
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        finally:
            os.close(fd)
    return leased


__all__ = ["create_lease_file", "exclusive_lock", "lease_path", "leased_versions", "take_lease",
           "writer_lock"]
