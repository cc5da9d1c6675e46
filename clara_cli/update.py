"""`clara update`: ingest + compress + index in one incremental run, under one writer lock.

Made for cron: unchanged input costs one hash per file and writes nothing; only new or changed
chunks are compressed; the index follows. Each stage commits on its own (compress after every
batch), so a run killed anywhere leaves the last committed snapshot intact and the next run
continues from it. (`clara verify`'s checks live in `store/verify.py`.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, TextIO

from .ingest import IngestReport, ingest
from .store import Store, set_fault_stage
from .store.verify import VerifyReport, check_store, indexed_keys  # noqa: F401 - `clara verify`'s API, re-exported

if TYPE_CHECKING:  # `clara verify` starts without torch: the model's modules load in update()
    from .model import ClaraModel


@dataclass
class UpdateReport(IngestReport):
    """The ingest counts plus what the compress and index stages did."""

    compressed: int = 0
    duplicates: int = 0  # of `compressed`: chunks that reused the memory of an identical chunk text
    index_added: int = 0
    index_removed: int = 0
    indexed: int = 0
    seconds: float = 0.0
    stage_seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The one JSON object `clara update --json` prints (rejected/skipped as counts)."""
        counts = {k: v for k, v in self.to_dict().items() if k not in ("rejected", "skipped", "version")}
        return {**counts, "compressed": self.compressed, "duplicates": self.duplicates, "index_added": self.index_added,
                "index_removed": self.index_removed, "indexed": self.indexed, "rejected": len(self.rejected),
                "skipped": len(self.skipped), "version": self.version, "seconds": self.seconds,
                "stage_seconds": self.stage_seconds}


def update(store: Store, paths: Sequence[str], model: ClaraModel, *, overlap: int = 0, delete_missing: bool = False,
           follow_symlinks: bool = False, stdin: TextIO | None = None, batch_size: int = 32,
           memory_dtype: str | None = None, progress: bool = True, wait: bool = True,
           max_file_size: int | None = None, notify: bool = False,
           model_lock: AbstractContextManager = nullcontext()) -> UpdateReport:
    """Ingest the inputs, compress what has no memory, bring the index in line; one writer
    lock for all three (a second `update` waits, or fails at once with wait=False). With
    notify, say on stderr how many chunks are about to be compressed and about how long.
    model_lock guards the model (and its tokenizer) for the ingest and for each compression
    batch, not for the whole run: the API's questions are answered while it writes."""
    from .compress import compress_store, model_info
    from .index import IndexReport, update_index

    t0 = time.perf_counter()
    report = UpdateReport()
    with store.session(wait=wait):
        try:
            set_fault_stage("ingest")
            t = time.perf_counter()
            with model_lock:
                ing = ingest(store, list(paths), model.tokenizer, max_tokens=model.config.doc_max_length,
                             overlap=overlap, delete_missing=delete_missing, stdin=stdin, model_info=model_info(model),
                             progress=progress, follow_symlinks=follow_symlinks, max_file_size=max_file_size)
            report.stage_seconds["ingest"] = round(time.perf_counter() - t, 3)
            set_fault_stage("compress")
            t = time.perf_counter()
            comp = compress_store(store, model, batch_size=batch_size, memory_dtype=memory_dtype, progress=progress,
                                  notify=notify, model_lock=model_lock)
            report.stage_seconds["compress"] = round(time.perf_counter() - t, 3)
            set_fault_stage("index")
            t = time.perf_counter()
            snap = store.snapshot()
            if len(snap.memory_keys()) or snap.index:
                idx = update_index(store, progress=progress)
            else:  # nothing compressed and no index yet (no readable input so far): nothing to index
                idx = IndexReport("none", 0, 0, 0, False, 0.0)
            report.stage_seconds["index"] = round(time.perf_counter() - t, 3)
        finally:
            set_fault_stage("")
    for f in fields(IngestReport):
        setattr(report, f.name, getattr(ing, f.name))
    report.compressed, report.duplicates = comp.compressed, comp.duplicates
    report.index_added, report.index_removed, report.indexed = idx.added, idx.removed, idx.total
    report.version = store.snapshot().version
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


__all__ = ["UpdateReport", "VerifyReport", "check_store", "indexed_keys", "update"]
