"""`clara verify`: every file against the manifest, then the store's logic.

`verify_files` checks what is on disk (presence, size, sha256, shard headers); `consistency`
checks what the files say (ids live once, no orphan chunks, one memory row per chunk);
`check_store` adds the index and is what `clara verify` and the fault-injection tests run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import ClaraError, CorruptDataError
from .durable import sha256_file
from .keys import chunk_id_from_key
from .protocol import DATA_DIR, TABLE_KINDS
from .snapshot import Snapshot


def verify_files(snapshot: Snapshot) -> list[str]:
    """Check every data file's presence, size and sha256 (and shard headers); one line per
    problem, empty when the store is sound."""
    problems = []
    for entry in snapshot.files():
        path = snapshot.data_path(entry["name"])
        try:
            snapshot.checked_path(entry)
            if sha256_file(path) != entry["sha256"]:
                problems.append(f"{path}: sha256 differs from the manifest (content changed)")
                continue
            if entry["kind"] == "memory":
                snapshot.shard_keys(entry)
            elif entry["kind"] in TABLE_KINDS:
                pq.read_metadata(path)
        except CorruptDataError as err:
            problems.append(str(err))
        except (pa.ArrowException, OSError) as err:
            problems.append(f"{path}: {str(err).splitlines()[0]}")
    return problems


def consistency(snapshot: Snapshot) -> list[str]:
    """Logical problems of a snapshot whose files are sound: a document or chunk id live
    twice, a chunk of a document that is not live, a chunk with more than one memory row."""
    problems = []
    doc_ids = snapshot.documents().column("doc_id")
    counts = pc.value_counts(doc_ids)
    twice = [v["values"] for v in counts.to_pylist() if v["counts"] > 1]
    if twice:
        problems.append(f"{len(twice)} document id(s) are live more than once, e.g. {twice[0]!r}")
    keys = snapshot.chunk_keys()
    uniq, n = np.unique(keys, return_counts=True)
    if (n > 1).any():
        problems.append(f"{int((n > 1).sum())} chunk id(s) are live more than once, e.g. "
                        f"{chunk_id_from_key(uniq[np.argmax(n > 1)])}")
    chunk_docs = snapshot.chunks(["doc_id"]).column("doc_id")
    orphans = pc.filter(chunk_docs, pc.invert(pc.is_in(chunk_docs, value_set=doc_ids.unique())))
    if len(orphans):
        problems.append(f"{len(orphans)} chunk(s) belong to no live document, e.g. of {orphans[0].as_py()!r}")
    mem_keys, _, _, live = snapshot.memory_live()
    uniq, n = np.unique(mem_keys[live], return_counts=True)
    if (n > 1).any():
        problems.append(f"{int((n > 1).sum())} chunk(s) have more than one memory row, e.g. "
                        f"{chunk_id_from_key(uniq[np.argmax(n > 1)])}")
    return problems


@dataclass
class VerifyReport:
    """What `clara verify` prints: problems make it exit 6, notes are work not done yet."""

    version: int
    problems: list[str]  # corruption or inconsistency: exit code 6
    notes: list[str]  # work not done yet (chunks not compressed, index behind): fine
    counts: dict

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "version": self.version, "problems": self.problems, "notes": self.notes,
                **self.counts}


def indexed_keys(snapshot: Snapshot) -> np.ndarray | None:
    """The chunk keys the snapshot's vector index covers (None: no vector index): a flat index
    records them in a keys file, FAISS kinds hold them; files are checksummed first."""
    info = snapshot.index or {}
    if info.get("keys_file"):
        path = snapshot.check_file(info["keys_file"])
        try:
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.int64).reshape(-1)
        except (ValueError, OSError) as err:
            raise CorruptDataError(f"{path}: cannot read the index keys ({err})") from None
    if info.get("file"):
        from ..index import index_ids, load_index  # faiss loads only for a FAISS index

        snapshot.check_file(info["file"])
        index = load_index(snapshot)
        return index_ids(index) if index is not None else None
    return None


def check_store(snapshot: Snapshot) -> VerifyReport:
    """Every file's size, sha256 and header against the manifest; then, if the files are sound,
    the logic: ids live once, every chunk's document live, at most one memory row per chunk,
    and the index holding exactly the compressed chunks (once each)."""
    problems = verify_files(snapshot)
    notes: list[str] = []
    counts = {"files": len(snapshot.files())}
    if problems:
        return VerifyReport(snapshot.version, problems, notes, counts)
    problems += consistency(snapshot)
    chunk_keys = snapshot.chunk_keys()
    memory_keys = snapshot.memory_keys()
    counts.update(documents=snapshot.documents().num_rows, chunks=len(chunk_keys), compressed=len(memory_keys))
    pending = len(chunk_keys) - len(memory_keys)
    if pending:
        notes.append(f"{pending} chunk(s) are not compressed yet (run `clara update` or `clara compress`)")
    info = snapshot.index or {}
    try:
        ids = indexed_keys(snapshot)
    except ClaraError as err:
        problems.append(str(err))
        return VerifyReport(snapshot.version, problems, notes, counts)
    if ids is not None:
        name = info.get("file") or info.get("keys_file")
        counts["indexed"] = len(ids)
        uniq, n = np.unique(ids, return_counts=True)
        if (n > 1).any():
            problems.append(f"index {name}: chunk {chunk_id_from_key(uniq[np.argmax(n > 1)])} "
                            f"is in it {int(n.max())} times")
        if info.get("ntotal") is not None and int(info["ntotal"]) != len(ids):
            problems.append(f"index {name}: holds {len(ids)} chunks, the manifest says {info['ntotal']}")
        missing = np.setdiff1d(memory_keys, ids)
        stale = np.setdiff1d(ids, memory_keys)
        if len(missing):
            notes.append(f"the index lacks {len(missing)} compressed chunk(s) (run `clara index`)")
        if len(stale):
            notes.append(f"the index still holds {len(stale)} removed chunk(s) (run `clara index`)")
    elif len(memory_keys):
        notes.append("no index yet (run `clara index`)")
    data = snapshot.root / DATA_DIR
    names = {e["name"] for e in snapshot.files()}
    extra = [p.name for p in data.iterdir() if p.name not in names] if data.is_dir() else []
    if extra:
        notes.append(f"{len(extra)} file(s) in data/ belong to older snapshots or killed runs "
                     "(`clara gc` removes those no reader holds)")
    return VerifyReport(snapshot.version, problems, notes, counts)


__all__ = ["VerifyReport", "check_store", "consistency", "indexed_keys", "verify_files"]
