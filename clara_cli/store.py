"""The store: one directory of immutable data files plus a manifest that is swapped atomically.

Layout (DESIGN.md §3)::

    <root>/manifest.json          the current state; replaced with os.replace, never edited
    <root>/manifests/v00000007.json   a copy of every committed manifest (cheap history)
    <root>/data/                  immutable Parquet tables, safetensors shards, index files
    <root>/LOCK                   flock'ed by the one writer; holds pid/host/time for messages
    <root>/readers/v00000007      a reader of version 7 holds a shared flock on it (its lease)

Readers read the manifest once (`Store.snapshot()`) and see a consistent state however
long they run. A writer holds the lock, writes new files, then swaps the manifest; a crash
leaves at most orphan files, which the next writer removes once they are older than a grace
period. Removing documents never rewrites a file: a small deletion table is added instead
(Delta-Lake style), and every data file carries a sequence number so that a deletion only
hides rows written *before* it (a changed document is removed and re-added with the same id).

Readers take a lease on their version (a shared flock, so they never wait for the writer):
`gc` removes the files of old snapshots as soon as no reader holds them. Data files carry
checksums in the manifest (and memory rows their own CRC), checked when they are read.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from safetensors import safe_open

from .errors import (
    ClaraError,
    CorruptDataError,
    MissingMemoryError,
    ModelMismatchError,
    StoreBusyError,
)

FORMAT = "clara-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "LOCK"
DATA_DIR = "data"
HISTORY_DIR = "manifests"
READERS_DIR = "readers"
DEFAULT_GRACE_SECONDS = 600.0
HISTORY_KEEP = 100  # history copies kept beyond the grace period (a compress run commits per batch)

DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("content_hash", pa.string()),
    ("n_chars", pa.int64()),
    ("metadata", pa.string()),
    ("ingested_at", pa.float64()),
])
CHUNK_SCHEMA = pa.schema([
    ("chunk_id", pa.string()),
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("chunk_index", pa.int32()),
    ("start", pa.int64()),
    ("end", pa.int64()),
    ("text", pa.string()),
    ("content_hash", pa.string()),
    ("n_tokens", pa.int32()),
])
# One row per removed id; `kind` is "document" or "chunk". A deletion file hides matching rows
# of every file with a smaller sequence number (see module docstring).
DELETION_SCHEMA = pa.schema([("kind", pa.string()), ("id", pa.string())])


class _LazyTorch:
    """torch, imported at first use: commands that read no memory rows (info, bm25 search, gc)
    start without it."""

    def __getattr__(self, name: str):
        import torch as real

        globals()["torch"] = real
        return getattr(real, name)


torch = _LazyTorch()
# str(torch dtype) -> shard dtype name; int8 shards also hold "scales" [rows, n_mem] fp32 (per token)
MEMORY_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16",
                 "torch.int8": "int8"}
_TABLE_KINDS = ("documents", "chunks", "deletions")
_COMPACT_SHARD_BYTES = 256 << 20  # compaction writes memory shards of at most this size
# Every commit rewrites the manifest; a compress run adds one shard per batch. Merging MERGE_FANOUT
# small shards of one tier into one of the next keeps the manifest O(log rows) long during a run.
MERGE_FANOUT = 8
HOUSEKEEP_EVERY = 64  # commits between clean-ups of lease files and history copies inside one writer


# ---------------------------------------------------------------------------------------------
# fault injection: CLARA_FAULT="point:n[:action],..." kills this process (SIGKILL, or raises
# ENOSPC with action "enospc") the n-th time it passes `point`. Points are named "write",
# "commit", "swap", "committed", "locked", "doc", qualified by the stage update() is in
# ("compress/commit:3"). CLARA_FAULT_TRACE=FILE appends every point passed to FILE. When neither
# is set, fault_point() is one global test: nothing to pay in production.


def _parse_faults(spec: str | None) -> dict[str, tuple[int, str]] | None:
    if not spec:
        return None
    faults = {}
    for part in spec.split(","):
        bits = part.strip().split(":")
        if len(bits) not in (2, 3) or not bits[1].isdigit():
            raise ValueError(f"bad CLARA_FAULT entry {part!r} (expected point:n[:kill|enospc])")
        faults[bits[0]] = (int(bits[1]), bits[2] if len(bits) == 3 else "kill")
    return faults


_FAULTS = _parse_faults(os.environ.get("CLARA_FAULT"))
_FAULT_TRACE = os.environ.get("CLARA_FAULT_TRACE") or None
_FAULT_ON = _FAULTS is not None or _FAULT_TRACE is not None
_fault_stage = ""
_fault_counts: dict[str, int] = {}


def configure_faults(spec: str | None, trace: str | None = None) -> None:
    """Set (or clear, with None) the fault plan in-process, e.g. in a forked test child."""
    global _FAULTS, _FAULT_TRACE, _FAULT_ON
    _FAULTS, _FAULT_TRACE = _parse_faults(spec), trace
    _FAULT_ON = _FAULTS is not None or _FAULT_TRACE is not None
    _fault_counts.clear()


def set_fault_stage(stage: str) -> None:
    """Name the pipeline stage (ingest/compress/index) that qualifies fault point names."""
    global _fault_stage
    _fault_stage = stage


def fault_point(name: str) -> None:
    """A place where tests may kill this process; free unless CLARA_FAULT(_TRACE) is set."""
    if _FAULT_ON:
        _fault_hit(name)


def _fault_hit(name: str) -> None:
    full = f"{_fault_stage}/{name}" if _fault_stage else name
    for key in {name, full}:
        _fault_counts[key] = _fault_counts.get(key, 0) + 1
    if _FAULT_TRACE:
        with open(_FAULT_TRACE, "a") as f:
            f.write(full + "\n")
    for key in (full, name):
        plan = (_FAULTS or {}).get(key)
        if plan and _fault_counts[key] == plan[0]:
            if plan[1] == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {full}>")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# chunk ids <-> int64 keys


def chunk_key(chunk_id: str) -> int:
    """The int64 key FAISS and the shards use for a chunk id (16 lowercase hex, 63 bits)."""
    return int(chunk_ids_to_keys([chunk_id])[0])


def chunk_id_from_key(key: int) -> str:
    return f"{int(key):016x}"


def chunk_ids_to_keys(chunk_ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Vectorised hex -> int64; rejects ids that are not 16 lowercase hex digits below 2**63."""
    if isinstance(chunk_ids, pa.ChunkedArray):
        chunk_ids = chunk_ids.combine_chunks()
    arr = chunk_ids if isinstance(chunk_ids, pa.Array) else pa.array(list(chunk_ids), pa.string())
    if len(arr) == 0:
        return np.zeros(0, np.int64)
    ok = pc.match_substring_regex(arr, r"^[0-7][0-9a-f]{15}$")
    if arr.null_count or not pc.all(ok).as_py():
        bad = next(v for v, good in zip(arr.to_pylist(), ok.to_pylist(), strict=True) if not good)
        raise ClaraError(f"invalid chunk_id {bad!r}: expected 16 lowercase hex digits of a 63-bit number")
    raw = bytes.fromhex("".join(arr.to_pylist()))
    return np.frombuffer(raw, dtype=">u8").astype(np.int64)


def keys_to_chunk_ids(keys: np.ndarray | Iterable[int]) -> list[str]:
    return [f"{int(k):016x}" for k in np.asarray(keys, dtype=np.int64)]


# ---------------------------------------------------------------------------------------------
# durable file helpers


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so the renames in it are durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, obj: Any, compact: bool = False, sync_dir: bool = True) -> None:
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


class _HashingFile:
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


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quantize_int8(memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, n_mem, hidden] -> (int8 values, fp32 scales [n, n_mem]): symmetric absmax per memory
    token (each token is one input embedding of the generator; their norms differ)."""
    m = memory.detach().float()
    scales = (m.abs().amax(dim=-1) / 127.0).clamp_min(1e-12)
    return (m / scales[..., None]).round().clamp(-127, 127).to(torch.int8), scales


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return values.float() * scales.float()[..., None]


def _row_crcs(keys: np.ndarray, memory: torch.Tensor, scales: torch.Tensor | None = None) -> np.ndarray:
    """CRC32 of each (key, memory row[, its scales]): lets a reader check just the rows it reads."""
    ks = np.ascontiguousarray(np.asarray(keys, dtype="<i8"))
    if len(ks) == 0:
        return np.zeros(0, np.int64)
    raw = memory.detach().to("cpu").contiguous().reshape(len(ks), -1).view(torch.uint8).numpy()
    if scales is not None:
        raw = np.concatenate([raw, scales.detach().float().contiguous().reshape(len(ks), -1)
                              .view(torch.uint8).numpy()], axis=1)
    return np.array([zlib.crc32(raw[i], zlib.crc32(ks[i].tobytes())) for i in range(len(ks))], dtype=np.int64)


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _empty_manifest() -> dict:
    now = time.time()
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": 0, "created_at": now,
            "committed_at": now, "next_seq": 1, "model": None, "index": None, "files": []}


def _mismatch(root: Path, bound: dict, info: dict) -> ModelMismatchError:
    return ModelMismatchError(
        f"store {root} is bound to model {bound.get('fingerprint')} ({bound.get('spec', '?')}), "
        f"not {info.get('fingerprint')} ({info.get('spec', '?')})")


# ---------------------------------------------------------------------------------------------
# the lock


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
def _exclusive_lock(root: Path, wait: bool) -> Iterator[_LockState]:
    """flock on <root>/LOCK: the kernel drops it when the holder dies, so a killed writer leaves
    no stale lock. Waiting writers say once on stderr whom they wait for."""
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
            yield state
        finally:
            _HELD_LOCKS.pop(key, None)
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
                f.flush()
    finally:
        f.close()  # closing the descriptor releases the flock


@contextlib.contextmanager
def _writer_lock(root: Path, wait: bool) -> Iterator[None]:
    """The lock for one transaction: taken here, or borrowed from this process's session."""
    _, state = _held(root)
    if state is not None:
        if state.in_transaction:
            raise StoreBusyError(f"store {root} is busy: this process already holds its writer")
        state.in_transaction = True
        try:
            yield
        finally:
            state.in_transaction = False
        return
    with _exclusive_lock(root, wait) as state:
        state.in_transaction = True
        yield


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"another writer (pid {info['pid']} on {info['host']}, since {since}) holds the lock"
    except (ValueError, KeyError, TypeError):
        return "another writer holds the lock"


# ---------------------------------------------------------------------------------------------
# Store


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
            store._read_manifest()  # fail now on an unreadable or newer-format manifest
            return store
        if not create:
            raise ClaraError(f"no store at {root} (run `clara ingest` first)")
        if root.exists() and not root.is_dir():
            raise ClaraError(f"cannot create a store at {root}: it exists and is not a directory")
        if root.is_dir():
            foreign = [p.name for p in root.iterdir()
                       if p.name not in (LOCK, DATA_DIR, HISTORY_DIR, READERS_DIR) and not _is_tmp(p.name)]
            if foreign:
                raise ClaraError(f"cannot create a store at {root}: the directory is not empty "
                                 f"and holds no {MANIFEST}")
        (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
        (root / HISTORY_DIR).mkdir(exist_ok=True)
        (root / READERS_DIR).mkdir(exist_ok=True)
        store = cls(root)
        with _exclusive_lock(root, wait=True):
            if not (root / MANIFEST).is_file():  # another process may have won the race
                manifest = _empty_manifest()
                _write_json_atomic(root / HISTORY_DIR / "v00000000.json", manifest)
                store._create_lease_file(0)
                _write_json_atomic(root / MANIFEST, manifest)
        return store

    # -- reading -------------------------------------------------------------------------------

    def _read_manifest(self, path: Path | None = None) -> dict:
        path = path or self.root / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise ClaraError(f"no store at {self.root} (run `clara ingest` first)") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise CorruptDataError(f"{path}: manifest does not parse ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CorruptDataError(f"{path}: not a clara store manifest")
        if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise ClaraError(f"store {self.root} has format version {manifest['format_version']}; "
                             f"this clara reads up to {FORMAT_VERSION} (upgrade clara)")
        return manifest

    def snapshot(self) -> Snapshot:
        """The last committed state, read once: later commits do not change it.

        The snapshot holds a lease on its version (a shared flock on readers/vN, released by
        Snapshot.close() or when it is garbage-collected) so that gc keeps its files.
        """
        for _ in range(1000):
            manifest = self._read_manifest()
            version = int(manifest["version"])
            lease = self._take_lease(version)
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

    def _lease_path(self, version: int) -> Path:
        return self.root / READERS_DIR / f"v{version:08d}"

    def _create_lease_file(self, version: int) -> None:
        """Writers create the lease file of each version so read-only readers can lock it."""
        with contextlib.suppress(OSError):
            (self.root / READERS_DIR).mkdir(exist_ok=True)
            os.close(os.open(self._lease_path(version), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))

    def _take_lease(self, version: int):
        path = self._lease_path(version)
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

    def _leased_versions(self, current: int) -> set[int]:
        """Versions some reader holds a lease on; lease files of unused old versions are removed."""
        folder = self.root / READERS_DIR
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

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, wait: bool = True) -> Iterator[Store]:
        """Hold the writer lock across several writers (update: ingest, compress, index) so no
        other writer slips in between; writers inside borrow it, one at a time."""
        with _exclusive_lock(self.root, wait):
            yield self

    @contextlib.contextmanager
    def writer(self, wait: bool = True) -> Iterator[Transaction]:
        """Take the writer lock, clear old orphans, yield a Transaction.

        A clean exit commits pending changes; an exception commits nothing more (files written
        since the last commit are removed) and the lock is released either way.
        """
        with _writer_lock(self.root, wait):
            self._collect_garbage(DEFAULT_GRACE_SECONDS)
            self._prune_history(DEFAULT_GRACE_SECONDS, HISTORY_KEEP)
            txn = Transaction(self, Snapshot(self, self._read_manifest()))
            try:
                yield txn
            except BaseException:
                txn._abort()
                raise
            else:
                if txn.dirty:
                    txn.commit()
            finally:
                txn._closed = True

    def gc(self, grace_seconds: float = DEFAULT_GRACE_SECONDS, wait: bool = True,
           keep_manifests: int | None = HISTORY_KEEP) -> list[str]:
        """Remove data files no snapshot needs any more; returns their names.

        Kept: the current snapshot's files, those of every snapshot a reader holds a lease on,
        those of snapshots superseded within the grace period (readers that could not take a
        lease), and any file younger than it. History copies beyond the newest keep_manifests
        go too once out of the grace period (None keeps all); a leased version's copy stays.
        """
        with _writer_lock(self.root, wait):
            removed = self._collect_garbage(grace_seconds)
            if keep_manifests is not None:
                removed += self._prune_history(grace_seconds, keep_manifests)
            return removed

    def _history(self, version: int) -> dict | None:
        try:
            return json.loads((self.root / HISTORY_DIR / f"v{version:08d}.json").read_text())
        except (OSError, ValueError):
            return None

    def _collect_garbage(self, grace_seconds: float) -> list[str]:
        cutoff = time.time() - grace_seconds
        current = self._read_manifest()
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
        for leased in self._leased_versions(version):
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
                    if _is_tmp(entry.name):
                        remove_if_old(Path(entry.path), str(Path(entry.path).relative_to(self.root)))
        if removed:
            gone = set(removed)
            for key in [k for k in self._cache if k[0] in gone]:
                del self._cache[key]
        return removed

    def _prune_history(self, grace_seconds: float, keep: int) -> list[str]:
        """Drop old history copies, never one that gc still needs (superseded within grace, or
        leased by a reader)."""
        cutoff = time.time() - grace_seconds
        folder = self.root / HISTORY_DIR
        names = sorted(p.name for p in folder.glob("v*.json"))
        removed = []
        candidates = list(zip(names[:max(0, len(names) - max(1, keep))], names[1:], strict=False))
        leased = self._leased_versions(int(self._read_manifest()["version"])) if candidates else set()
        for name, newer in candidates:
            if name[1:-5].isdigit() and int(name[1:-5]) in leased:
                continue
            with contextlib.suppress(FileNotFoundError):
                if (folder / newer).stat().st_mtime < cutoff:
                    (folder / name).unlink()
                    removed.append(f"{HISTORY_DIR}/{name}")
        return removed

    # -- cached reads of immutable files ---------------------------------------------------------

    def _cached(self, name: str, what: str, load):
        key = (name, what)
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]


# ---------------------------------------------------------------------------------------------
# Snapshot


class Snapshot:
    """One committed (or, for Transaction.view, pending) state of the store; immutable."""

    def __init__(self, store: Store, manifest: dict, lease=None):
        self._store = store
        self.root: Path = store.root
        self.manifest: dict = manifest
        self.version: int = int(manifest["version"])
        self._entries = {e["name"]: e for e in manifest["files"]}
        self._memo: dict[str, Any] = {}
        self._lease = lease  # an open file holding a shared flock on readers/vN (see Store.snapshot)

    def __repr__(self) -> str:
        return f"Snapshot({str(self.root)!r}, version={self.version})"

    def close(self) -> None:
        """Give up the lease: gc may remove this snapshot's files once it is not current."""
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self) -> dict | None:
        return self.manifest.get("model")

    @property
    def index(self) -> dict | None:
        return self.manifest.get("index")

    def files(self, kind: str | None = None) -> list[dict]:
        """Manifest entries (name, kind, bytes, sha256, seq, ...), oldest first."""
        return [e for e in self.manifest["files"] if kind is None or e["kind"] == kind]

    def data_path(self, name: str) -> Path:
        return self.root / DATA_DIR / name

    def check_model(self, fingerprint: str) -> None:
        """ModelMismatchError when the store is bound to a different model (unbound is fine)."""
        bound = self.model
        if bound and bound.get("fingerprint") != fingerprint:
            raise _mismatch(self.root, bound, {"fingerprint": fingerprint})

    # -- low-level, size-checked file access -------------------------------------------------------

    def _checked_path(self, entry: dict) -> Path:
        path = self.data_path(entry["name"])
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptDataError(f"{path}: data file is missing (removed or store damaged)") from None
        if size != entry["bytes"]:
            raise CorruptDataError(f"{path}: size {size} bytes, manifest says {entry['bytes']} (truncated "
                                   "or overwritten)")
        return path

    def _verified_path(self, entry: dict) -> Path:
        """Size and sha256 checked against the manifest, once per file and Store object (the
        files are immutable): a flipped byte is refused instead of read as data."""
        path = self._checked_path(entry)

        def check() -> bool:
            if _sha256_file(path) != entry["sha256"]:
                raise CorruptDataError(f"{path}: sha256 differs from the manifest (content changed; "
                                       "run `clara verify`)")
            return True
        self._store._cached(entry["name"], "sha256-ok", check)
        return path

    def check_file(self, name: str) -> Path:
        """The path of a data file of this snapshot after checking its size and sha256 (for
        files other modules read themselves, like FAISS indexes)."""
        entry = self._entries.get(name)
        if entry is None:
            raise ClaraError(f"{name} is not a file of store {self.root} (version {self.version})")
        return self._verified_path(entry)

    def _read_table(self, entry: dict, columns: list[str] | None = None) -> pa.Table:
        path = self._verified_path(entry)
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as err:
            raise CorruptDataError(f"{path}: cannot read Parquet table ({str(err).splitlines()[0]})") from None

    def _ids(self, entry: dict, column: str) -> pa.Array:
        """One id column of a table file (cached store-wide: files are immutable)."""
        def load():
            return self._read_table(entry, [column]).column(column).combine_chunks()
        return self._store._cached(entry["name"], column, load)

    def _chunk_keys_of(self, entry: dict) -> np.ndarray:
        return self._store._cached(entry["name"], "keys",
                                   lambda: chunk_ids_to_keys(self._ids(entry, "chunk_id")))

    def _open_shard(self, entry: dict, framework: str = "pt"):
        """safe_open a memory shard after checking its size and header against the manifest."""
        path = self._checked_path(entry)
        try:
            handle = safe_open(str(path), framework=framework)
            meta = handle.metadata() or {}
            shape = handle.get_slice("memory").get_shape()
            keys_shape = handle.get_slice("chunk_keys").get_shape()
        except Exception as err:  # safetensors raises its own error types
            raise CorruptDataError(f"{path}: memory shard header does not parse ({err})") from None
        expect = [entry["rows"], entry["n_mem"], entry["hidden"]]
        if list(shape) != expect or list(keys_shape) != [entry["rows"]] \
                or meta.get("model_fingerprint") != entry["fingerprint"]:
            raise CorruptDataError(f"{path}: memory shard header disagrees with the manifest "
                                   f"(shape {list(shape)}, expected {expect})")
        return handle

    def _shard_keys(self, entry: dict) -> np.ndarray:
        def load():
            handle = self._open_shard(entry, "numpy")  # keys need no torch
            keys = handle.get_tensor("chunk_keys").astype(np.int64)
            expect = (handle.metadata() or {}).get("keys_crc")
            if expect is not None and str(zlib.crc32(keys.astype("<i8").tobytes())) != expect:
                raise CorruptDataError(f"{self.data_path(entry['name'])}: chunk keys fail their CRC "
                                       "(content changed; run `clara verify`)")
            return keys
        return self._store._cached(entry["name"], "keys", load)

    def _check_rows(self, entry: dict, rows: np.ndarray, keys: np.ndarray, block: torch.Tensor,
                    scales: torch.Tensor | None = None) -> None:
        """Compare rows read from a shard with their stored CRCs (shards written before CRCs
        existed have none)."""
        crcs = self._store._cached(entry["name"], "row_crc", lambda: self._row_crcs(entry))
        if crcs is None or len(rows) == 0:
            return
        bad = np.nonzero(_row_crcs(keys, block, scales) != crcs[rows])[0]
        if len(bad):
            raise CorruptDataError(f"{self.data_path(entry['name'])}: memory row {int(rows[bad[0]])} fails its "
                                   "CRC (content changed; run `clara verify`)")

    def _row_crcs(self, entry: dict) -> np.ndarray | None:
        handle = self._open_shard(entry)
        if "row_crc" not in handle.keys():
            return None
        return handle.get_tensor("row_crc").numpy().astype(np.int64)

    # -- deletions ---------------------------------------------------------------------------------

    def _deletions(self, kind: str) -> tuple[pa.Array, np.ndarray]:
        """Unique deleted ids of one kind and, per id, the newest deletion's sequence number."""
        memo = f"deletions:{kind}"
        if memo not in self._memo:
            ids, seqs = [], []
            for entry in self.files("deletions"):
                table = self._store._cached(entry["name"], "table", lambda e=entry: self._read_table(e))
                selected = table.filter(pc.equal(table.column("kind"), kind)).column("id")
                ids.append(selected)
                seqs.append(np.full(len(selected), entry["seq"], np.int64))
            if ids:
                grouped = pa.table({"id": pa.chunked_array([c for a in ids for c in a.chunks], pa.string()),
                                    "seq": np.concatenate(seqs)}).group_by("id").aggregate([("seq", "max")])
                self._memo[memo] = (grouped.column("id").combine_chunks(),
                                    grouped.column("seq_max").to_numpy())
            else:
                self._memo[memo] = (pa.array([], pa.string()), np.zeros(0, np.int64))
        return self._memo[memo]

    def _live_mask(self, ids: pa.Array, seq: int, kind: str) -> np.ndarray:
        """True for rows whose id was not deleted after the file (sequence number seq) was written."""
        del_ids, del_seq = self._deletions(kind)
        if len(del_ids) == 0 or len(ids) == 0:
            return np.ones(len(ids), bool)
        pos = pc.fill_null(pc.index_in(ids, value_set=del_ids), -1).to_numpy(zero_copy_only=False)
        found = pos >= 0
        mask = np.ones(len(ids), bool)
        mask[found] = del_seq[pos[found]] < seq
        return mask

    def _chunk_masks(self) -> list[tuple[dict, np.ndarray]]:
        if "chunk_masks" not in self._memo:
            self._memo["chunk_masks"] = [(e, self._live_mask(self._ids(e, "chunk_id"), e["seq"], "chunk"))
                                         for e in self.files("chunks")]
        return self._memo["chunk_masks"]

    # -- tables ------------------------------------------------------------------------------------

    def documents(self) -> pa.Table:
        """Live document rows, in insertion order."""
        if "documents" not in self._memo:
            parts = []
            for entry in self.files("documents"):
                mask = self._live_mask(self._ids(entry, "doc_id"), entry["seq"], "document")
                if mask.any():
                    table = self._read_table(entry)
                    parts.append(table if mask.all() else table.filter(pa.array(mask)))
            self._memo["documents"] = (pa.concat_tables(parts) if parts
                                       else DOCUMENT_SCHEMA.empty_table())
        return self._memo["documents"]

    def chunks(self, columns: list[str] | None = None) -> pa.Table:
        """Live chunk rows in insertion order; columns selects (and orders) the columns."""
        columns = list(columns) if columns is not None else CHUNK_SCHEMA.names
        unknown = [c for c in columns if c not in CHUNK_SCHEMA.names]
        if unknown:
            raise ClaraError(f"unknown chunk column(s): {', '.join(unknown)}")
        memo = "chunks:" + ",".join(columns)
        if memo not in self._memo:
            parts = []
            for entry, mask in self._chunk_masks():
                if mask.any():
                    table = self._read_table(entry, columns)
                    parts.append(table if mask.all() else table.filter(pa.array(mask)))
            schema = pa.schema([CHUNK_SCHEMA.field(c) for c in columns])
            self._memo[memo] = pa.concat_tables(parts) if parts else schema.empty_table()
        return self._memo[memo]

    def chunk_keys(self) -> np.ndarray:
        """int64 keys of the live chunks, in insertion order."""
        if "chunk_keys" not in self._memo:
            parts = [self._chunk_keys_of(e)[m] for e, m in self._chunk_masks()]
            self._memo["chunk_keys"] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._memo["chunk_keys"]

    def lookup_chunks(self, chunk_keys: np.ndarray | list[int], columns: list[str] | None = None) -> pa.Table:
        """Live chunk rows for the given keys, in the order asked (ClaraError names a key that
        is not a live chunk)."""
        keys = np.asarray(chunk_keys, dtype=np.int64).reshape(-1)
        all_keys = self.chunk_keys()
        order = np.argsort(all_keys, kind="stable")
        pos, found = _find(all_keys[order], keys)
        if not found.all():
            raise ClaraError(f"chunk {chunk_id_from_key(keys[np.argmin(found)])} is not in store "
                             f"{self.root} (version {self.version})")
        return self.chunks(columns).take(pa.array(order[pos] if len(keys) else pos))

    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content_hash of the live documents (what ingest diffs against)."""
        docs = self.documents()
        return dict(zip(docs.column("doc_id").to_pylist(), docs.column("content_hash").to_pylist(), strict=True))

    # -- memory ------------------------------------------------------------------------------------

    def _memory_rows(self) -> list[tuple[dict, np.ndarray, np.ndarray]]:
        """Per shard: (entry, live row numbers, their keys). Rows of deleted chunks and
        (defensively) repeated keys are dropped; the first live row of a key wins."""
        if "memory_rows" not in self._memo:
            shards = self.files("memory")
            if not shards:
                self._memo["memory_rows"] = []
                return []
            keys, shard, rows, live = self._memory_live()
            first = np.zeros(len(keys), bool)
            idx = np.nonzero(live)[0]
            first[idx[np.unique(keys[idx], return_index=True)[1]]] = True
            keep = np.nonzero(first)[0]  # in shard order, since the keys were concatenated so
            bounds = np.searchsorted(shard[keep], np.arange(len(shards) + 1))
            out = []
            for i, entry in enumerate(shards):
                sel = keep[bounds[i]:bounds[i + 1]]
                if len(sel):
                    out.append((entry, rows[sel], keys[sel]))
            self._memo["memory_rows"] = out
        return self._memo["memory_rows"]

    def _memory_live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every row of every shard: (key, shard number, row, live?) before duplicates are dropped."""
        shards = self.files("memory")
        per_shard = [self._shard_keys(e) for e in shards]
        if not per_shard:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty, np.zeros(0, bool)
        keys = np.concatenate(per_shard)
        shard = np.repeat(np.arange(len(shards)), [len(k) for k in per_shard])
        rows = np.concatenate([np.arange(len(k)) for k in per_shard])
        live = np.isin(keys, self.chunk_keys())
        del_ids, del_seq = self._deletions("chunk")
        if len(del_ids):
            del_keys = chunk_ids_to_keys(del_ids)
            order = np.argsort(del_keys)
            pos, found = _find(del_keys[order], keys)
            seq = np.array([e["seq"] for e in shards], np.int64)[shard]
            live &= ~(found & (del_seq[order][pos] > seq))
        return keys, shard, rows, live

    def consistency(self) -> list[str]:
        """Logical problems of a snapshot whose files are sound: a document or chunk id live
        twice, a chunk of a document that is not live, a chunk with more than one memory row."""
        problems = []
        doc_ids = self.documents().column("doc_id")
        counts = pc.value_counts(doc_ids)
        twice = [v["values"] for v in counts.to_pylist() if v["counts"] > 1]
        if twice:
            problems.append(f"{len(twice)} document id(s) are live more than once, e.g. {twice[0]!r}")
        keys = self.chunk_keys()
        uniq, n = np.unique(keys, return_counts=True)
        if (n > 1).any():
            problems.append(f"{int((n > 1).sum())} chunk id(s) are live more than once, e.g. "
                            f"{chunk_id_from_key(uniq[np.argmax(n > 1)])}")
        chunk_docs = self.chunks(["doc_id"]).column("doc_id")
        orphans = pc.filter(chunk_docs, pc.invert(pc.is_in(chunk_docs, value_set=doc_ids.unique())))
        if len(orphans):
            problems.append(f"{len(orphans)} chunk(s) belong to no live document, e.g. of {orphans[0].as_py()!r}")
        mem_keys, _, _, live = self._memory_live()
        uniq, n = np.unique(mem_keys[live], return_counts=True)
        if (n > 1).any():
            problems.append(f"{int((n > 1).sum())} chunk(s) have more than one memory row, e.g. "
                            f"{chunk_id_from_key(uniq[np.argmax(n > 1)])}")
        return problems

    def _memory_lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted live memory keys with, per key, its shard number and row (built once)."""
        if "memory_lookup" not in self._memo:
            parts = self._memory_rows()
            if parts:
                keys = np.concatenate([k for _, _, k in parts])
                shard = np.concatenate([np.full(len(r), i, np.int64) for i, (_, r, _) in enumerate(parts)])
                rows = np.concatenate([r for _, r, _ in parts])
                order = np.argsort(keys)
                self._memo["memory_lookup"] = (keys[order], shard[order], rows[order])
            else:
                empty = np.zeros(0, np.int64)
                self._memo["memory_lookup"] = (empty, empty, empty)
        return self._memo["memory_lookup"]

    def memory_keys(self) -> np.ndarray:
        """int64 keys of the live chunks that have memory, in shard order."""
        parts = [k for _, _, k in self._memory_rows()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def read_memory(self, chunk_keys: np.ndarray | list[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Memory rows [n, n_mem, hidden] for the keys, in the order asked (fp32 by default)."""
        dtype = dtype or torch.float32
        keys = np.asarray(chunk_keys, dtype=np.int64).reshape(-1)
        sorted_keys, shard_of, row_of = self._memory_lookup()
        pos, found = _find(sorted_keys, keys)
        missing = ~found
        if missing.any():
            raise MissingMemoryError(
                f"{int(missing.sum())} chunk(s) have no memory in store {self.root} (version {self.version}), "
                f"e.g. {chunk_id_from_key(keys[np.argmax(missing)])}; run `clara compress`")
        model = self.model or {}
        if len(keys) == 0:
            return torch.zeros(0, int(model.get("n_mem", 0)), int(model.get("hidden", 0)), dtype=dtype)
        shards = self._memory_rows()
        out: torch.Tensor | None = None
        shard_idx, rows = shard_of[pos], row_of[pos]
        for s in np.unique(shard_idx):
            where = np.nonzero(shard_idx == s)[0]
            block = self._read_rows(shards[s][0], rows[where], keys[where])
            if out is None:
                out = torch.empty((len(keys), *block.shape[1:]), dtype=dtype)
            out[torch.from_numpy(where)] = block.to(dtype)
        assert out is not None
        return out

    def _read_rows(self, entry: dict, rows: np.ndarray, keys: np.ndarray, with_scales: bool = False):
        """Rows of one shard in the order given, through safetensors' memory map, CRC-checked.
        int8 rows come back dequantised to fp32, or as (int8 rows, scales) with_scales (which
        also returns (rows, None) for float shards)."""
        handle = self._open_shard(entry)
        block = self._gather(handle.get_slice("memory"), rows)
        scales = self._gather(handle.get_slice("scales"), rows) if entry.get("dtype") == "int8" else None
        self._check_rows(entry, rows, keys, block, scales)
        if with_scales:
            return block, scales
        return block if scales is None else dequantize_int8(block, scales)

    @staticmethod
    def _gather(sl, rows: np.ndarray) -> torch.Tensor:
        lo, hi = int(rows.min()), int(rows.max()) + 1
        if hi - lo <= 4 * len(rows):  # dense enough: one read of the span
            return sl[lo:hi][torch.from_numpy(rows - lo)]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        breaks = np.nonzero(np.diff(sorted_rows) != 1)[0] + 1
        block = torch.cat([sl[int(run[0]):int(run[-1]) + 1] for run in np.split(sorted_rows, breaks)])
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return block[torch.from_numpy(inverse)]

    def iter_memory(self, batch_rows: int = 4096, dtype: torch.dtype | None = None, with_scales: bool = False
                    ) -> Iterator[tuple]:
        """(keys, memory) over all live rows, shard by shard, at most batch_rows at a time;
        dtype None keeps each shard's stored dtype (int8 shards: dequantised fp32). with_scales
        yields (keys, stored rows, int8 scales or None) instead, for rewriting shards as they are."""
        for entry, rows, keys in self._memory_rows():
            handle = self._open_shard(entry)
            sl = handle.get_slice("memory")
            ssl = handle.get_slice("scales") if entry.get("dtype") == "int8" else None
            for lo in range(0, len(rows), batch_rows):
                part = rows[lo:lo + batch_rows]
                start, stop = int(part[0]), int(part[-1]) + 1
                block = sl[start:stop]
                scales = ssl[start:stop] if ssl is not None else None
                if stop - start != len(part):
                    block = block[torch.from_numpy(part - start)]
                    scales = scales[torch.from_numpy(part - start)] if scales is not None else None
                self._check_rows(entry, part, keys[lo:lo + batch_rows], block, scales)
                if with_scales:
                    yield keys[lo:lo + batch_rows], block, scales
                    continue
                if scales is not None:
                    block = dequantize_int8(block, scales)
                yield keys[lo:lo + batch_rows], block if dtype is None else block.to(dtype)

    # -- bookkeeping -------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts, bytes per kind of file, number of files: what `clara status` shows."""
        bytes_by_kind: dict[str, int] = {}
        for e in self.manifest["files"]:
            bytes_by_kind[e["kind"]] = bytes_by_kind.get(e["kind"], 0) + int(e["bytes"])
        return {
            "version": self.version,
            "documents": self.documents().num_rows,
            "chunks": len(self.chunk_keys()),
            "compressed": len(self.memory_keys()),
            "files": len(self.manifest["files"]),
            "bytes": bytes_by_kind,
            "total_bytes": sum(bytes_by_kind.values()),
            "model": (self.model or {}).get("fingerprint"),
            "indexed": bool(self.index),
        }

    def verify(self) -> list[str]:
        """Check every data file's presence, size and sha256 (and shard headers); one line per
        problem, empty when the store is sound."""
        problems = []
        for entry in self.manifest["files"]:
            path = self.data_path(entry["name"])
            try:
                self._checked_path(entry)
                if _sha256_file(path) != entry["sha256"]:
                    problems.append(f"{path}: sha256 differs from the manifest (content changed)")
                    continue
                if entry["kind"] == "memory":
                    self._shard_keys(entry)
                elif entry["kind"] in _TABLE_KINDS:
                    pq.read_metadata(path)
            except CorruptDataError as err:
                problems.append(str(err))
            except (pa.ArrowException, OSError) as err:
                problems.append(f"{path}: {str(err).splitlines()[0]}")
        return problems


# ---------------------------------------------------------------------------------------------
# Transaction


def _conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ClaraError(f"{what} table lacks column(s): {', '.join(missing)}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ClaraError(f"{what} table has wrong column types ({err})") from None


class Transaction:
    """The writer's pending changes. Every method writes new files right away; commit() makes
    them visible with one manifest swap. Use through `Store.writer()` only."""

    def __init__(self, store: Store, base: Snapshot):
        self._store = store
        self.base = base
        self._manifest = copy.deepcopy(base.manifest)
        self._committed_version = base.version
        self._pending: list[str] = []  # files written since the last commit
        self._dirty = False
        self._closed = False
        self._view: Snapshot | None = None
        self._keysets: tuple[set[int], set[int]] | None = None  # live chunk keys, keys with memory
        self._new_docs: set[str] = set()  # documents added since the last commit (may get more chunks)

    @property
    def dirty(self) -> bool:
        return self._dirty

    @property
    def version(self) -> int:
        """The last committed version (the base's, until this transaction commits)."""
        return self._committed_version

    @property
    def view(self) -> Snapshot:
        """The state including uncommitted changes (its version is the one commit() would make)."""
        if self._view is None:
            manifest = copy.deepcopy(self._manifest)
            manifest["version"] = self._committed_version + (1 if self._dirty else 0)
            self._view = Snapshot(self._store, manifest)
        return self._view

    # -- helpers -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClaraError("this store transaction is closed")

    def _changed(self, keysets_too: bool = True) -> None:
        self._dirty = True
        self._view = None
        if keysets_too:
            self._keysets = None

    def _next_seq(self) -> int:
        seq = int(self._manifest["next_seq"])
        self._manifest["next_seq"] = seq + 1
        return seq

    def _add_entry(self, entry: dict) -> dict:
        entry["seq"] = self._next_seq()
        self._manifest["files"].append(entry)
        return entry

    def _write_table(self, kind: str, table: pa.Table) -> dict:
        path = self.new_data_path(kind, ".parquet")
        with open(path, "wb") as f:
            sink = _HashingFile(f)
            pq.write_table(table, sink, compression="zstd")
            f.flush()
            fault_point("write")
            os.fsync(f.fileno())
        return self._add_entry({"name": path.name, "kind": kind, "bytes": sink.bytes,
                                "sha256": sink.sha256.hexdigest(), "rows": table.num_rows})

    def _write_shard(self, keys: np.ndarray, memory: torch.Tensor, tier: int = 0,
                     scales: torch.Tensor | None = None) -> dict:
        model = self._manifest["model"]
        dtype = MEMORY_DTYPES[str(memory.dtype)]
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        memory = memory.detach().to("cpu").contiguous()
        extra = {}
        if memory.dtype == torch.int8:
            if scales is None or tuple(scales.shape) != tuple(memory.shape[:2]):
                raise ClaraError("int8 memory needs scales [rows, n_mem]")
            scales = scales.detach().to("cpu", torch.float32).contiguous()
            extra["scales"] = scales
        else:
            scales = None
        from safetensors.torch import save as safetensors_save

        data = safetensors_save(
            {"memory": memory, "chunk_keys": torch.from_numpy(keys.copy()),
             "row_crc": torch.from_numpy(_row_crcs(keys, memory, scales)), **extra},
            metadata={"model_fingerprint": str(model["fingerprint"]), "n_mem": str(memory.shape[1]),
                      "hidden": str(memory.shape[2]), "dtype": dtype,
                      "keys_crc": str(zlib.crc32(keys.astype("<i8").tobytes()))})
        path = self.new_data_path("memory", ".safetensors")
        with open(path, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            fault_point("write")  # a kill here leaves half a file: an orphan for gc
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        entry = {"name": path.name, "kind": "memory", "bytes": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(), "rows": int(memory.shape[0]),
                 "n_mem": int(memory.shape[1]), "hidden": int(memory.shape[2]),
                 "dtype": dtype, "fingerprint": str(model["fingerprint"])}
        if tier:
            entry["tier"] = tier
        return self._add_entry(entry)

    def _get_keysets(self) -> tuple[set[int], set[int]]:
        if self._keysets is None:
            view = self.view
            self._keysets = (set(view.chunk_keys().tolist()), set(view.memory_keys().tolist()))
        return self._keysets

    # -- the API -----------------------------------------------------------------------------------

    def bind_model(self, info: dict) -> None:
        """Bind the store to a model once; a different fingerprint is refused."""
        self._check_open()
        for key in ("fingerprint", "spec", "n_mem", "hidden", "doc_max_length"):
            if key not in info:
                raise ClaraError(f"model info lacks {key!r}")
        bound = self._manifest.get("model")
        if bound:
            if bound.get("fingerprint") != info["fingerprint"]:
                raise _mismatch(self._store.root, bound, info)
            return
        self._manifest["model"] = json.loads(json.dumps(info))  # a plain-JSON copy
        self._changed(keysets_too=False)

    def add_documents(self, documents: pa.Table, chunks: pa.Table) -> None:
        """Add new documents and their chunks (remove an old version of a document first).

        Chunks may also belong to documents added earlier in this transaction since its last
        commit: a long document's chunks are written in several tables, never all in memory."""
        self._check_open()
        documents = _conform(documents, DOCUMENT_SCHEMA, "documents")
        chunks = _conform(chunks, CHUNK_SCHEMA, "chunks")
        if documents.num_rows == 0 and chunks.num_rows == 0:
            return
        doc_ids = documents.column("doc_id").to_pylist()
        new_docs = set(doc_ids)
        if len(new_docs) != len(doc_ids) or None in new_docs:
            raise ClaraError("documents table repeats a doc_id (or has a null one)")
        live_docs = set(self.view.documents().column("doc_id").to_pylist())
        clash = new_docs & live_docs
        if clash:
            raise ClaraError(f"document {sorted(clash)[0]!r} is already in the store (remove it first)")
        orphans = set(chunks.column("doc_id").to_pylist()) - new_docs - self._new_docs
        if orphans:
            raise ClaraError(f"chunk of document {sorted(orphans)[0]!r}, which is not in this documents table")
        keys = chunk_ids_to_keys(chunks.column("chunk_id"))
        if len(np.unique(keys)) != len(keys):
            raise ClaraError("chunks table repeats a chunk_id")
        live_keys = self._get_keysets()[0]
        dup = [k for k in keys.tolist() if k in live_keys]
        if dup:
            raise ClaraError(f"chunk {chunk_id_from_key(dup[0])} is already in the store")
        if documents.num_rows:
            self._write_table("documents", documents)
        if chunks.num_rows:
            self._write_table("chunks", chunks)
        self._new_docs.update(new_docs)
        self._changed()

    def remove_documents(self, doc_ids: Iterable[str]) -> None:
        """Hide documents, their chunks and memory rows from readers (no file is rewritten)."""
        self._check_open()
        wanted = set(doc_ids)
        if not wanted:
            return
        view = self.view
        live_docs = view.documents().column("doc_id")
        gone = pc.filter(live_docs, pc.is_in(live_docs, value_set=pa.array(sorted(wanted), pa.string())))
        if len(gone) == 0:
            return
        chunks = view.chunks(["chunk_id", "doc_id"])
        gone_chunks = chunks.filter(pc.is_in(chunks.column("doc_id"), value_set=gone)).column("chunk_id")
        ids = pa.chunked_array([gone, *gone_chunks.chunks], pa.string())
        kinds = ["document"] * len(gone) + ["chunk"] * len(gone_chunks)
        self._write_table("deletions", pa.table({"kind": pa.array(kinds, pa.string()), "id": ids},
                                                schema=DELETION_SCHEMA))
        self._new_docs.difference_update(gone.to_pylist())
        self._changed()

    def add_memory(self, chunk_keys: np.ndarray, memory: torch.Tensor, scales: torch.Tensor | None = None) -> str:
        """Write one shard of memory rows for live chunks that have none; returns its file name.
        int8 memory comes with its per-token scales (quantize_int8)."""
        self._check_open()
        model = self._manifest.get("model")
        if not model:
            raise ClaraError("bind the store to a model before adding memory")
        keys = np.asarray(chunk_keys, dtype=np.int64).reshape(-1)
        if str(memory.dtype) not in MEMORY_DTYPES:
            raise ClaraError(f"memory dtype {memory.dtype} is not one of float32, bfloat16, float16, int8")
        expect = (len(keys), int(model["n_mem"]), int(model["hidden"]))
        if tuple(memory.shape) != expect:
            raise ClaraError(f"memory has shape {list(memory.shape)}, expected {list(expect)} "
                             f"(rows, n_mem, hidden of model {model['fingerprint']})")
        if len(keys) == 0:
            raise ClaraError("add_memory needs at least one row")
        if len(np.unique(keys)) != len(keys):
            raise ClaraError("add_memory got the same chunk key twice")
        live, with_memory = self._get_keysets()
        key_list = keys.tolist()
        for k in key_list:
            if k not in live:
                raise ClaraError(f"chunk {chunk_id_from_key(k)} is not a live chunk of the store")
            if k in with_memory:
                raise ClaraError(f"chunk {chunk_id_from_key(k)} already has memory")
        entry = self._write_shard(keys, memory, scales=scales)
        with_memory.update(key_list)
        self._changed(keysets_too=False)
        return entry["name"]

    def set_index(self, info: dict | None) -> None:
        """Record the index module's description; files it names are tracked, the old one is
        dropped from the manifest (removed by a later gc)."""
        self._check_open()
        old = self._manifest.get("index") or {}
        new = json.loads(json.dumps(info)) if info is not None else None
        new_files = set(_index_files(new or {}))
        for name in _index_files(old):
            if name not in new_files:
                self.untrack_file(name)
        tracked = {e["name"] for e in self._manifest["files"]}
        for name in new_files - tracked:
            self.track_file(name)
        self._manifest["index"] = new
        self._changed(keysets_too=False)

    def new_data_path(self, prefix: str, suffix: str) -> Path:
        """A fresh file name in data/ (unique; removed again if the transaction fails)."""
        self._check_open()
        if "/" in prefix + suffix or os.sep in prefix + suffix:
            raise ClaraError(f"bad data file prefix/suffix {prefix!r}/{suffix!r}")
        name = f"{prefix}-{uuid.uuid4().hex[:16]}{suffix}"
        self._pending.append(name)
        return self._store.root / DATA_DIR / name

    def track_file(self, name: str) -> None:
        """Record a file a caller wrote under new_data_path (size and sha256 read now)."""
        self._check_open()
        path = self._store.root / DATA_DIR / name
        if not path.is_file():
            raise ClaraError(f"cannot track {path}: no such file")
        fault_point("write")
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        self._manifest["files"] = [e for e in self._manifest["files"] if e["name"] != name]
        self._add_entry({"name": name, "kind": "file", "bytes": path.stat().st_size,
                         "sha256": _sha256_file(path)})
        self._changed(keysets_too=False)

    def untrack_file(self, name: str) -> None:
        """Drop a tracked (kind "file") entry; the file itself goes at a later gc."""
        self._check_open()
        before = len(self._manifest["files"])
        self._manifest["files"] = [e for e in self._manifest["files"]
                                   if not (e["name"] == name and e["kind"] == "file")]
        if len(self._manifest["files"]) != before:
            self._changed(keysets_too=False)

    def compact(self) -> None:
        """Rewrite the live rows into fresh files and drop the deletion files (housekeeping).
        Tracked files (the index) are kept; keys and order do not change."""
        self._check_open()
        files = self._manifest["files"]
        count = {k: sum(e["kind"] == k for e in files) for k in ("documents", "chunks", "deletions", "memory")}
        if count["deletions"] == 0 and max(count["documents"], count["chunks"], count["memory"]) <= 1:
            return
        view = self.view
        documents, chunks = view.documents(), view.chunks()
        shards = view.iter_memory(with_scales=True)  # the view keeps its own manifest copy: safe to stream
        self._manifest["files"] = [e for e in files if e["kind"] == "file"]
        if documents.num_rows:
            self._write_table("documents", documents)
        if chunks.num_rows:
            self._write_table("chunks", chunks)
        buffers: dict[torch.dtype, list[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]] = {}
        sizes: dict[torch.dtype, int] = {}

        def flush(dtype: torch.dtype) -> None:
            parts = buffers.pop(dtype, [])
            sizes.pop(dtype, None)
            if parts:
                scales = torch.cat([s for _, _, s in parts]) if dtype == torch.int8 else None
                self._write_shard(np.concatenate([k for k, _, _ in parts]), torch.cat([m for _, m, _ in parts]),
                                  scales=scales)

        for keys, memory, scales in shards:
            buffers.setdefault(memory.dtype, []).append((keys, memory, scales))
            sizes[memory.dtype] = sizes.get(memory.dtype, 0) + memory.numel() * memory.element_size()
            if sizes[memory.dtype] >= _COMPACT_SHARD_BYTES:
                flush(memory.dtype)
        for dtype in list(buffers):
            flush(dtype)
        self._changed()

    def commit(self) -> int:
        """Make everything written so far visible in one atomic manifest swap; returns the new
        version (the current one when there was nothing to commit)."""
        self._check_open()
        if not self._dirty:
            return self._committed_version
        root = self._store.root
        self._merge_small_shards()
        fsync_path(root / DATA_DIR)  # the new files' names must be durable before the manifest
        fault_point("commit")
        on_disk = self._store._read_manifest()
        if int(on_disk["version"]) != self._committed_version:  # cannot happen under the lock
            raise ClaraError(f"store {root} changed under this writer (version {on_disk['version']})")
        version = self._committed_version + 1
        manifest = copy.deepcopy(self._manifest)
        manifest["version"] = version
        manifest["committed_at"] = time.time()
        _write_json_atomic(root / HISTORY_DIR / f"v{version:08d}.json", manifest, compact=True)
        self._store._create_lease_file(version)
        fault_point("swap")
        _write_json_atomic(root / MANIFEST, manifest, sync_dir=False)
        # Committed: from here on nothing may treat these files as pending (an error now must
        # not make _abort delete files the current manifest names).
        self._manifest = manifest
        self._committed_version = version
        self._pending.clear()
        self._new_docs.clear()
        self._dirty = False
        self._view = None
        fault_point("committed")
        fsync_path(root)  # the rename durable
        if version % HOUSEKEEP_EVERY == 0:  # a long compress run: drop unused lease files and
            with contextlib.suppress(OSError):  # old history copies as it goes, not only at the end
                self._store._leased_versions(version)
                self._store._prune_history(DEFAULT_GRACE_SECONDS, HISTORY_KEEP)
        return version

    def _merge_small_shards(self) -> None:
        """Merge MERGE_FANOUT small memory shards of one tier (and dtype) into one of the next:
        a compress run then keeps O(log rows) shards in the manifest instead of one per batch.
        Only live rows move; the old files stay for readers of older snapshots until gc."""
        while True:
            groups: dict[tuple[int, str], list[dict]] = {}
            for e in self._manifest["files"]:
                if e["kind"] == "memory" and e["bytes"] * MERGE_FANOUT <= _COMPACT_SHARD_BYTES:
                    groups.setdefault((int(e.get("tier", 0)), e["dtype"]), []).append(e)
            full = [(key, group) for key, group in sorted(groups.items()) if len(group) >= MERGE_FANOUT]
            if not full:
                return
            (tier, _), group = full[0]
            names = {e["name"] for e in group}
            view = self.view
            parts = [(entry, rows, keys) for entry, rows, keys in view._memory_rows() if entry["name"] in names]
            keys_out, blocks, scales = [], [], []
            for entry, rows, keys in parts:
                block, sc = view._read_rows(entry, rows, keys, with_scales=True)
                keys_out.append(keys)
                blocks.append(block)
                scales.append(sc)
            self._manifest["files"] = [e for e in self._manifest["files"] if e["name"] not in names]
            if keys_out:
                self._write_shard(np.concatenate(keys_out), torch.cat(blocks), tier=tier + 1,
                                  scales=torch.cat(scales) if blocks[0].dtype == torch.int8 else None)
            self._changed()

    def _abort(self) -> None:
        """Remove files written since the last commit: no committed manifest references them
        (checked against the manifest on disk too, should a commit have landed after all)."""
        try:
            current = {e["name"] for e in self._store._read_manifest()["files"]}
        except ClaraError:
            current = None  # unreadable: remove nothing, gc decides later
        for name in self._pending:
            if current is None or name in current:
                continue
            with contextlib.suppress(OSError):
                (self._store.root / DATA_DIR / name).unlink()
        self._pending.clear()
        self._new_docs.clear()
        self._dirty = False
        self._view = None


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of keys in a sorted array and whether each is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


def _index_files(info: dict) -> list[str]:
    names = [info["file"]] if info.get("file") else []
    names += [n for n in info.get("files", []) if isinstance(n, str)]
    return names
