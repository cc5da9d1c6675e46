"""`clara update`: ingest + compress + index in one incremental run, under one writer lock.

Made for cron: unchanged input costs one hash per file and writes nothing; only new or changed
chunks are compressed; the index follows. Each stage commits on its own (compress after every
batch), so a run killed anywhere leaves the last committed snapshot intact and the next run
continues from it. `check_store` is what `clara verify` and the fault-injection tests run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, TextIO

import numpy as np

from .errors import ClaraError, CorruptDataError
from .ingest import IngestReport, ingest
from .store import Snapshot, Store, chunk_id_from_key, set_fault_stage

if TYPE_CHECKING:  # `clara verify` starts without torch: the model's modules load in update()
    from .model import ClaraModel


@dataclass
class UpdateReport(IngestReport):
    """The ingest counts plus what the compress and index stages did."""

    compressed: int = 0
    index_added: int = 0
    index_removed: int = 0
    indexed: int = 0
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The one JSON object `clara update --json` prints (rejected/skipped as counts)."""
        counts = {k: v for k, v in self.to_dict().items() if k not in ("rejected", "skipped", "version")}
        return {**counts, "compressed": self.compressed, "index_added": self.index_added,
                "index_removed": self.index_removed, "indexed": self.indexed, "rejected": len(self.rejected),
                "skipped": len(self.skipped), "version": self.version, "seconds": self.seconds,
                "stage_seconds": self.stage_seconds}


def update(store: Store, paths: Sequence[str], model: ClaraModel, *, overlap: int = 0, delete_missing: bool = False,
           follow_symlinks: bool = False, stdin: TextIO | None = None, batch_size: int = 32,
           memory_dtype: str | None = None, progress: bool = True, wait: bool = True) -> UpdateReport:
    """Ingest the inputs, compress what has no memory, bring the index in line; one writer
    lock for all three (a second `update` waits, or fails at once with wait=False)."""
    from .compress import compress_store, model_info
    from .index import update_index

    t0 = time.perf_counter()
    report = UpdateReport()
    with store.session(wait=wait):
        try:
            set_fault_stage("ingest")
            t = time.perf_counter()
            ing = ingest(store, list(paths), model.tokenizer, max_tokens=model.config.doc_max_length, overlap=overlap,
                         delete_missing=delete_missing, stdin=stdin, model_info=model_info(model), progress=progress,
                         follow_symlinks=follow_symlinks)
            report.stage_seconds["ingest"] = round(time.perf_counter() - t, 3)
            set_fault_stage("compress")
            t = time.perf_counter()
            comp = compress_store(store, model, batch_size=batch_size, memory_dtype=memory_dtype, progress=progress)
            report.stage_seconds["compress"] = round(time.perf_counter() - t, 3)
            set_fault_stage("index")
            t = time.perf_counter()
            idx = update_index(store, progress=progress)
            report.stage_seconds["index"] = round(time.perf_counter() - t, 3)
        finally:
            set_fault_stage("")
    for f in fields(IngestReport):
        setattr(report, f.name, getattr(ing, f.name))
    report.compressed = comp.compressed
    report.index_added, report.index_removed, report.indexed = idx.added, idx.removed, idx.total
    report.version = store.snapshot().version
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


@dataclass
class VerifyReport:
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
        from .index import index_ids, load_index

        snapshot.check_file(info["file"])
        index = load_index(snapshot)
        return index_ids(index) if index is not None else None
    return None


def check_store(snapshot: Snapshot) -> VerifyReport:
    """Every file's size, sha256 and header against the manifest; then, if the files are sound,
    the logic: ids live once, every chunk's document live, at most one memory row per chunk,
    and the index holding exactly the compressed chunks (once each)."""
    problems = snapshot.verify()
    notes: list[str] = []
    counts = {"files": len(snapshot.files())}
    if problems:
        return VerifyReport(snapshot.version, problems, notes, counts)
    problems += snapshot.consistency()
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
    data = snapshot.root / "data"
    names = {e["name"] for e in snapshot.files()}
    extra = [p.name for p in data.iterdir() if p.name not in names] if data.is_dir() else []
    if extra:
        notes.append(f"{len(extra)} file(s) in data/ belong to older snapshots or killed runs "
                     "(`clara gc` removes those no reader holds)")
    return VerifyReport(snapshot.version, problems, notes, counts)


__all__ = ["UpdateReport", "VerifyReport", "check_store", "indexed_keys", "update"]
