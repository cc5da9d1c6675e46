"""`Transaction`: the one writer's pending changes, made visible by one manifest swap.

Every method writes new immutable files at once (Parquet tables, memory shards, files other
modules write under `new_data_path`); `commit` fsyncs them, writes the manifest's history copy,
then swaps `manifest.json` atomically. Nothing is ever rewritten: removals add deletion
tables, and small memory shards are merged into bigger ones as a compress run goes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ClaraError
from ..lazy import torch
from .durable import HashingFile, fsync_path, sha256_file, write_json_atomic
from .faults import fault_point
from .keys import chunk_id_from_key, chunk_ids_to_keys
from .lock import create_lease_file
from .memory import MEMORY_DTYPES, encode_shard, memory_dtype_name
from .protocol import (
    CHUNK_SCHEMA,
    COMPACT_SHARD_BYTES,
    DATA_DIR,
    DELETION_SCHEMA,
    DOCUMENT_SCHEMA,
    HOUSEKEEP_EVERY,
    MANIFEST,
    MERGE_FANOUT,
    history_path,
    index_files,
    model_mismatch,
)
from .snapshot import Snapshot

if TYPE_CHECKING:
    from .store import Store


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
            sink = HashingFile(f)
            pq.write_table(table, sink, compression="zstd")
            f.flush()
            fault_point("write")
            os.fsync(f.fileno())
        return self._add_entry({"name": path.name, "kind": kind, "bytes": sink.bytes,
                                "sha256": sink.sha256.hexdigest(), "rows": table.num_rows})

    def _write_shard(self, keys: np.ndarray, memory: torch.Tensor, tier: int = 0,
                     scales: torch.Tensor | None = None) -> dict:
        model = self._manifest["model"]
        dtype = memory_dtype_name(memory.dtype)
        data = encode_shard(keys, memory, str(model["fingerprint"]), scales=scales)
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
                raise model_mismatch(self._store.root, bound, info)
            return
        self._manifest["model"] = json.loads(json.dumps(info))  # a plain-JSON copy
        self._changed(keysets_too=False)

    def unbind_model(self) -> None:
        """Forget the model: every memory row, the indexes (vector and BM25, rebuilt by the next
        `clara index`) and the model record with its files go from the manifest (the files at a
        later gc); documents and chunks stay. Recompressing under a new model starts here."""
        self._check_open()
        bound = self._manifest.get("model") or {}
        self.set_index(None)
        if bound.get("center_file"):
            self.untrack_file(bound["center_file"])
        self._manifest["files"] = [e for e in self._manifest["files"] if e["kind"] != "memory"]
        self._manifest["model"] = None
        self._changed()

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
        new_files = set(index_files(new or {}))
        for name in index_files(old):
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
                         "sha256": sha256_file(path)})
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
            if sizes[memory.dtype] >= COMPACT_SHARD_BYTES:
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
        on_disk = self._store.read_manifest()
        if int(on_disk["version"]) != self._committed_version:  # cannot happen under the lock
            raise ClaraError(f"store {root} changed under this writer (version {on_disk['version']})")
        version = self._committed_version + 1
        manifest = copy.deepcopy(self._manifest)
        manifest["version"] = version
        manifest["committed_at"] = time.time()
        write_json_atomic(history_path(root, version), manifest, compact=True)
        create_lease_file(root, version)
        fault_point("swap")
        write_json_atomic(root / MANIFEST, manifest, sync_dir=False)
        # Committed: from here on nothing may treat these files as pending (an error now must
        # not make abort delete files the current manifest names).
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
                self._store.housekeep(version)
        return version

    def _merge_small_shards(self) -> None:
        """Merge MERGE_FANOUT small memory shards of one tier (and dtype) into one of the next:
        a compress run then keeps O(log rows) shards in the manifest instead of one per batch.
        Only live rows move; the old files stay for readers of older snapshots until gc."""
        while True:
            groups: dict[tuple[int, str], list[dict]] = {}
            for e in self._manifest["files"]:
                if e["kind"] == "memory" and e["bytes"] * MERGE_FANOUT <= COMPACT_SHARD_BYTES:
                    groups.setdefault((int(e.get("tier", 0)), e["dtype"]), []).append(e)
            full = [(key, group) for key, group in sorted(groups.items()) if len(group) >= MERGE_FANOUT]
            if not full:
                return
            (tier, _), group = full[0]
            names = {e["name"] for e in group}
            view = self.view
            reader = view.memory_reader()
            parts = [entry["name"] for entry, _, _ in view.memory_rows() if entry["name"] in names]
            keys_out, blocks, scales = [], [], []
            for name in parts:
                keys, block, sc = reader.read_shard(name)
                keys_out.append(keys)
                blocks.append(block)
                scales.append(sc)
            self._manifest["files"] = [e for e in self._manifest["files"] if e["name"] not in names]
            if keys_out:
                self._write_shard(np.concatenate(keys_out), torch.cat(blocks), tier=tier + 1,
                                  scales=torch.cat(scales) if blocks[0].dtype == torch.int8 else None)
            self._changed()

    def abort(self) -> None:
        """Remove files written since the last commit: no committed manifest references them
        (checked against the manifest on disk too, should a commit have landed after all)."""
        try:
            current = {e["name"] for e in self._store.read_manifest()["files"]}
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

    def close(self) -> None:
        """End the transaction: later calls raise (Store.writer closes it on exit)."""
        self._closed = True


__all__ = ["Transaction"]
