"""`clara ls` and `clara rm`: the store's documents, chosen by id or path prefix.

A name chooses the document with that id, and every document whose source is that path or
lies under it (as given, or resolved the way ingest records sources), so `clara ls NAME`
shows exactly what `clara rm NAME` removes. Removal is one committed write (deletion
records; no file is rewritten) and the index follows, as after `clara update --delete-missing`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ClaraError, UsageError
from .store import Snapshot, Store, chunk_ids_to_keys


@dataclass
class DocumentInfo:
    doc_id: str
    source: str
    chunks: int
    compressed: int
    n_chars: int
    ingested_at: float

    def to_dict(self) -> dict:
        return asdict(self)


def _under(source: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return source == prefix or source.startswith(prefix if prefix.endswith("/") else prefix + "/")


def matches(doc_id: str, source: str, name: str) -> bool:
    """The document has id `name`, or its source is the path `name` or lies under it."""
    if not name:
        return False
    if doc_id == name or _under(source, name):
        return True
    resolved = str(Path(name).expanduser().resolve())  # as ingest records paths (and "FILE#LINE" ids)
    return doc_id == resolved or _under(source, resolved)


def list_documents(snapshot: Snapshot, names: list[str] | None = None) -> tuple[list[DocumentInfo], list[str]]:
    """(documents chosen by any of `names`, or all; the names that chose nothing), in the
    order they were ingested, with their chunk counts (all, and compressed)."""
    docs = snapshot.documents()
    chunks = snapshot.chunks(columns=["chunk_id", "doc_id"])
    chunk_docs = chunks.column("doc_id").to_pylist()
    per_doc = Counter(chunk_docs)
    compressed_keys = np.asarray(snapshot.memory_keys(), dtype=np.int64)
    done = np.isin(chunk_ids_to_keys(chunks.column("chunk_id")), compressed_keys)
    per_doc_done = Counter(d for d, ok in zip(chunk_docs, done.tolist(), strict=True) if ok)
    used: set[str] = set()
    out = []
    columns = [docs.column(c).to_pylist() for c in ("doc_id", "source", "n_chars", "ingested_at")]
    for doc_id, source, n_chars, ingested_at in zip(*columns, strict=True):
        if names:
            chosen = [n for n in names if matches(doc_id, source, n)]
            if not chosen:
                continue
            used.update(chosen)
        out.append(DocumentInfo(doc_id, source, per_doc[doc_id], per_doc_done[doc_id], int(n_chars or 0),
                                float(ingested_at or 0.0)))
    return out, [n for n in (names or []) if n not in used]


@dataclass
class RemoveReport:
    removed: int = 0
    chunks_removed: int = 0
    documents: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    index_removed: int = 0
    indexed: int = 0
    version: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def remove_documents(store: Store, names: list[str], everything: bool = False, wait: bool = True) -> RemoveReport:
    """Remove the documents `names` choose (every document with everything=True and no names)
    in one commit, then bring the index in line. Removing every document needs everything=True:
    a prefix like `/` or `.` chooses them all, and that is rarely meant."""
    from .index import update_index

    if not names and not everything:
        raise UsageError("name the documents to remove (ids or path prefixes), or pass --all")
    report = RemoveReport()
    with store.session(wait=wait):
        with store.writer(wait=wait) as tx:
            view = tx.view
            total = view.documents().num_rows
            chosen, report.unmatched = list_documents(view, names or None)
            if chosen and len(chosen) == total and not everything:
                raise UsageError(f"this would remove every document in the store ({total}); "
                                 "pass --all to do that")
            report.documents = [d.doc_id for d in chosen]
            report.removed, report.chunks_removed = len(chosen), sum(d.chunks for d in chosen)
            if not chosen:
                return _finish(report, store)
            index = dict(view.manifest.get("index") or {})
            tx.remove_documents(report.documents)
            if index and report.removed == total:  # nothing left to index
                report.index_removed = int(index.get("ntotal") or 0)
                tx.set_index(None)
                index = {}
        if index:
            idx = update_index(store, progress=False, wait=wait, bm25=bool(index.get("bm25")))
            report.index_removed, report.indexed = idx.removed, idx.total
    return _finish(report, store)


def _finish(report: RemoveReport, store: Store) -> RemoveReport:
    report.version = store.snapshot().version
    if report.unmatched and not report.removed:
        raise ClaraError(f"no document matches {', '.join(report.unmatched)}")
    return report


__all__ = ["DocumentInfo", "RemoveReport", "list_documents", "matches", "remove_documents"]
