"""`Store`: open or create a store directory, take snapshots, open the writer, collect garbage.

Readers read the manifest once (`Store.snapshot()`) and see a consistent state however long
they run. A writer holds the lock, writes new files, then swaps the manifest; a crash leaves at
most orphan files, which the next writer removes once they are older than a grace period.
`gc` removes the files of old snapshots as soon as no reader holds a lease on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ClaraError, StoreBusyError
from .durable import is_temp_name, write_json_atomic
from .lock import create_lease_file, exclusive_lock, leased_versions, take_lease, writer_lock
from .protocol import (
    DATA_DIR,
    DEFAULT_GRACE_SECONDS,
    HISTORY_DIR,
    HISTORY_KEEP,
    LOCK,
    MANIFEST,
    READERS_DIR,
    empty_manifest,
    history_path,
    read_manifest,
)
from .snapshot import Snapshot
from .transaction import Transaction


class Store:
    """A store directory. Cheap to construct; all state lives in the files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        # Data files never change once written, so anything read from them can be cached by name.
        self._cache: dict[tuple[str, str], Any] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @classmethod
    def open(cls, root: str | Path, create: bool = False) -> Store:
        """Open the store at root; with create, make an empty one if there is none yet."""
        root = Path(root)
        if (root / MANIFEST).is_file():
            store = cls(root)
            store.read_manifest()  # fail now on an unreadable or newer-format manifest
            return store
        if not create:
            raise ClaraError(f"no store at {root} (run `clara ingest` first)")
        if root.exists() and not root.is_dir():
            raise ClaraError(f"cannot create a store at {root}: it exists and is not a directory")
        if root.is_dir():
            foreign = [p.name for p in root.iterdir()
                       if p.name not in (LOCK, DATA_DIR, HISTORY_DIR, READERS_DIR) and not is_temp_name(p.name)]
            if foreign:
                raise ClaraError(f"cannot create a store at {root}: the directory is not empty "
                                 f"and holds no {MANIFEST}")
        (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        (root / HISTORY_DIR).mkdir(exist_ok=True)
        (root / READERS_DIR).mkdir(exist_ok=True)
        store = cls(root)
        with exclusive_lock(root, wait=True):
            if not (root / MANIFEST).is_file():  # another process may have won the race
                manifest = empty_manifest()
                write_json_atomic(history_path(root, 0), manifest)
                create_lease_file(root, 0)
                write_json_atomic(root / MANIFEST, manifest)
        return store

    # -- reading -------------------------------------------------------------------------------

    def read_manifest(self) -> dict:
        """The current manifest as it is on disk now (not leased: use `snapshot` to read data)."""
        return read_manifest(self.root)

    def snapshot(self) -> Snapshot:
        """The last committed state, read once: later commits do not change it.

        The snapshot holds a lease on its version (a shared flock on readers/vN, released by
        Snapshot.close() or when it is garbage-collected) so that gc keeps its files.
        """
        for _ in range(1000):
            manifest = self.read_manifest()
            version = int(manifest["version"])
            lease = take_lease(self.root, version)
            if lease is None:  # a read-only store we cannot lease in: the grace period protects us
                return Snapshot(self, manifest)
            # Leased after reading: if the version is still current, no gc can have judged it unused.
            try:
                current = int(json.loads((self.root / MANIFEST).read_text())["version"])
            except (OSError, ValueError, KeyError, TypeError):
                current = -1
            if current == version:
                return Snapshot(self, manifest, lease)
            lease.close()
        raise StoreBusyError(f"store {self.root}: the manifest keeps changing; cannot take a snapshot")

    def cached(self, name: str, what: str, load: Callable[[], Any]) -> Any:
        """What `load` returns for a data file, computed once per Store object: data files are
        immutable, so their checksums, key columns and headers never go stale."""
        key = (name, what)
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, wait: bool = True) -> Iterator[Store]:
        """Hold the writer lock across several writers (update: ingest, compress, index) so no
        other writer slips in between; writers inside borrow it, one at a time."""
        with exclusive_lock(self.root, wait):
            yield self

    @contextlib.contextmanager
    def writer(self, wait: bool = True) -> Iterator[Transaction]:
        """Take the writer lock, clear old orphans, yield a Transaction.

        A clean exit commits pending changes; an exception commits nothing more (files written
        since the last commit are removed) and the lock is released either way.
        """
        with writer_lock(self.root, wait):
            self._collect_garbage(DEFAULT_GRACE_SECONDS)
            self.prune_history(DEFAULT_GRACE_SECONDS, HISTORY_KEEP)
            txn = Transaction(self, Snapshot(self, self.read_manifest()))
            try:
                yield txn
            except BaseException:
                txn.abort()
                raise
            else:
                if txn.dirty:
                    txn.commit()
            finally:
                txn.close()

    def gc(self, grace_seconds: float = DEFAULT_GRACE_SECONDS, wait: bool = True,
           keep_manifests: int | None = HISTORY_KEEP) -> list[str]:
        """Remove data files no snapshot needs any more; returns their names.

        Kept: the current snapshot's files, those of every snapshot a reader holds a lease on,
        those of snapshots superseded within the grace period (readers that could not take a
        lease), and any file younger than it. History copies beyond the newest keep_manifests
        go too once out of the grace period (None keeps all); a leased version's copy stays.
        """
        with writer_lock(self.root, wait):
            removed = self._collect_garbage(grace_seconds)
            if keep_manifests is not None:
                removed += self.prune_history(grace_seconds, keep_manifests)
            return removed

    def housekeep(self, version: int) -> None:
        """A long writer's clean-up between commits: drop unused lease files and old history
        copies (data files wait for the next writer or gc)."""
        leased_versions(self.root, version)
        self.prune_history(DEFAULT_GRACE_SECONDS, HISTORY_KEEP)

    def _history(self, version: int) -> dict | None:
        try:
            return json.loads(history_path(self.root, version).read_text())
        except (OSError, ValueError):
            return None

    def _collect_garbage(self, grace_seconds: float) -> list[str]:
        cutoff = time.time() - grace_seconds
        current = self.read_manifest()
        version = int(current["version"])
        keep = {e["name"] for e in current["files"]}
        # Manifests superseded within the grace period may still have readers without a lease.
        superseded_at = float(current.get("committed_at", 0))
        older = version - 1
        while older >= 0 and superseded_at >= cutoff:
            old = self._history(older)
            if old is None:
                break
            keep.update(e["name"] for e in old.get("files", []))
            superseded_at = float(old.get("committed_at", 0))
            older -= 1
        leased_unknown = False
        for leased in leased_versions(self.root, version):
            old = self._history(leased)
            if old is None:
                leased_unknown = True  # a reader's files we cannot name: remove no committed file
            else:
                keep.update(e["name"] for e in old.get("files", []))

        removed: list[str] = []

        def remove_if_old(path: Path, label: str) -> None:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(label)
            except FileNotFoundError:
                pass

        data = self.root / DATA_DIR
        if data.is_dir() and not leased_unknown:
            for entry in sorted(os.scandir(data), key=lambda e: e.name):
                if entry.name not in keep and entry.is_file(follow_symlinks=False):
                    remove_if_old(Path(entry.path), entry.name)
        for folder in (self.root, self.root / HISTORY_DIR):
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if is_temp_name(entry.name):
                        remove_if_old(Path(entry.path), str(Path(entry.path).relative_to(self.root)))
        if removed:
            gone = set(removed)
            for key in [k for k in self._cache if k[0] in gone]:
                del self._cache[key]
        return removed

    def prune_history(self, grace_seconds: float, keep: int) -> list[str]:
        """Drop history copies beyond the newest `keep`, never one that gc still needs
        (superseded within grace, or leased by a reader); returns what it removed."""
        cutoff = time.time() - grace_seconds
        folder = self.root / HISTORY_DIR
        names = sorted(p.name for p in folder.glob("v*.json"))
        removed = []
        candidates = list(zip(names[:max(0, len(names) - max(1, keep))], names[1:], strict=False))
        leased = leased_versions(self.root, int(self.read_manifest()["version"])) if candidates else set()
        for name, newer in candidates:
            if name[1:-5].isdigit() and int(name[1:-5]) in leased:
                continue
            with contextlib.suppress(FileNotFoundError):
                if (folder / newer).stat().st_mtime < cutoff:
                    (folder / name).unlink()
                    removed.append(f"{HISTORY_DIR}/{name}")
        return removed


__all__ = ["Store"]
