"""`Snapshot`: one committed state of the store, read from its manifest; never changes.

Tables are read through pyarrow and checked against their sha256 when first opened; memory
rows are read through safetensors' memory map and checked against their CRC when read. A
snapshot holds a lease on its version so that gc keeps its files (see `lock`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ClaraError, CorruptDataError
from ..lazy import torch
from .durable import sha256_file
from .keys import chunk_id_from_key, chunk_ids_to_keys, find_keys
from .memory import (
    open_shard,
    read_row_crcs,
    read_shard_keys,
)
from .protocol import CHUNK_SCHEMA, DATA_DIR, DOCUMENT_SCHEMA, model_mismatch

if TYPE_CHECKING:
    from .reader import MemoryReader
    from .store import Store


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
            raise model_mismatch(self.root, bound, {"fingerprint": fingerprint})

    # -- low-level, size-checked file access -------------------------------------------------------

    def checked_path(self, entry: dict) -> Path:
        """The path of a data file after checking it is there with the size the manifest says."""
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
        path = self.checked_path(entry)

        def check() -> bool:
            if sha256_file(path) != entry["sha256"]:
                raise CorruptDataError(f"{path}: sha256 differs from the manifest (content changed; "
                                       "run `clara verify`)")
            return True
        self._store.cached(entry["name"], "sha256-ok", check)
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
        return self._store.cached(entry["name"], column, load)

    def _chunk_keys_of(self, entry: dict) -> np.ndarray:
        return self._store.cached(entry["name"], "keys",
                                   lambda: chunk_ids_to_keys(self._ids(entry, "chunk_id")))

    def _open_shard(self, entry: dict, framework: str = "pt"):
        return open_shard(self.checked_path(entry), entry, framework)

    def shard_keys(self, entry: dict) -> np.ndarray:
        """A memory shard's chunk keys, header and key CRC checked (cached: files are immutable)."""
        return self._store.cached(entry["name"], "keys", lambda: read_shard_keys(
            self.data_path(entry["name"]), self._open_shard(entry, "numpy")))

    def row_crcs(self, entry: dict) -> np.ndarray | None:
        """A memory shard's stored per-row CRCs, header checked (cached: files are immutable)."""
        return self._store.cached(entry["name"], "row_crc", lambda: read_row_crcs(self._open_shard(entry)))

    # -- deletions ---------------------------------------------------------------------------------

    def _deletions(self, kind: str) -> tuple[pa.Array, np.ndarray]:
        """Unique deleted ids of one kind and, per id, the newest deletion's sequence number."""
        memo = f"deletions:{kind}"
        if memo not in self._memo:
            ids, seqs = [], []
            for entry in self.files("deletions"):
                table = self._store.cached(entry["name"], "table", lambda e=entry: self._read_table(e))
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
        pos, found = find_keys(all_keys[order], keys)
        if not found.all():
            raise ClaraError(f"chunk {chunk_id_from_key(keys[np.argmin(found)])} is not in store "
                             f"{self.root} (version {self.version})")
        return self.chunks(columns).take(pa.array(order[pos] if len(keys) else pos))

    def document_hashes(self) -> dict[str, str]:
        """doc_id -> content_hash of the live documents (what ingest diffs against)."""
        docs = self.documents()
        return dict(zip(docs.column("doc_id").to_pylist(), docs.column("content_hash").to_pylist(), strict=True))

    # -- memory ------------------------------------------------------------------------------------

    def memory_rows(self) -> list[tuple[dict, np.ndarray, np.ndarray]]:
        """Per shard: (entry, live row numbers, their keys). Rows of deleted chunks and
        (defensively) repeated keys are dropped; the first live row of a key wins."""
        if "memory_rows" not in self._memo:
            shards = self.files("memory")
            if not shards:
                self._memo["memory_rows"] = []
                return []
            keys, shard, rows, live = self.memory_live()
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

    def memory_live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every row of every shard: (key, shard number, row, live?) before duplicates are dropped."""
        shards = self.files("memory")
        per_shard = [self.shard_keys(e) for e in shards]
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
            pos, found = find_keys(del_keys[order], keys)
            seq = np.array([e["seq"] for e in shards], np.int64)[shard]
            live &= ~(found & (del_seq[order][pos] > seq))
        return keys, shard, rows, live

    def memory_keys(self) -> np.ndarray:
        """int64 keys of the live chunks that have memory, in shard order."""
        parts = [k for _, _, k in self.memory_rows()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def memory_reader(self, checked: bool = True) -> MemoryReader:
        """The one reader of this snapshot's memory rows (store.reader), built once per snapshot."""
        from .reader import MemoryReader

        memo = f"memory_reader:{checked}"
        if memo not in self._memo:
            self._memo[memo] = MemoryReader(self, checked=checked)
        return self._memo[memo]

    def read_memory(self, chunk_keys: np.ndarray | list[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Memory rows [n, n_mem, hidden] for the keys, in the order asked (fp32 by default), CRC-checked."""
        return self.memory_reader().read(chunk_keys, dtype or torch.float32)

    def iter_memory(self, batch_rows: int = 4096, dtype: torch.dtype | None = None, with_scales: bool = False
                    ) -> Iterator[tuple]:
        """(keys, memory) over all live rows, shard by shard (MemoryReader.iter)."""
        return self.memory_reader().iter(batch_rows, dtype, with_scales)

    # -- bookkeeping -------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counts, bytes per kind of file, number of files: what `clara info` shows."""
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
        """Every data file's presence, size and sha256 (and shard headers): one line per problem."""
        from .verify import verify_files

        return verify_files(self)

    def consistency(self) -> list[str]:
        """Logical problems of a snapshot whose files are sound (see `verify.consistency`)."""
        from .verify import consistency

        return consistency(self)


__all__ = ["Snapshot"]
