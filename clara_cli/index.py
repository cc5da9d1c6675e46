"""FAISS indexes over L2-normalised flattened memory: inner product = the method's cosine.

An index file is immutable like every data file: an update loads the current one, removes
the ids of deleted chunks, adds the new ones, and writes a new file under a new manifest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import torch

from .errors import ClaraError, CorruptDataError
from .progress import progress_bar
from .store import Snapshot, Store


@dataclass
class IndexReport:
    added: int
    removed: int
    total: int
    rebuilt: bool
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def flatten_normalized(memory: torch.Tensor) -> np.ndarray:
    """[n, n_mem, hidden] -> [n, n_mem*hidden] fp32 rows of unit length (the method's cosine)."""
    flat = memory.reshape(memory.shape[0], -1).float()
    return torch.nn.functional.normalize(flat, dim=-1).numpy()


def index_ids(index: faiss.Index) -> np.ndarray:
    return faiss.vector_to_array(index.id_map).astype(np.int64) if index.ntotal else np.zeros(0, np.int64)


def load_index(snapshot: Snapshot) -> faiss.Index | None:
    info = snapshot.manifest.get("index")
    if not info:
        return None
    path = snapshot.check_file(info["file"])  # size and sha256: a damaged index is refused, not searched
    try:
        return faiss.read_index(str(path))
    except Exception as err:  # faiss raises RuntimeError with a C++ trace: keep one line
        raise CorruptDataError(f"{path}: cannot read FAISS index ({str(err).splitlines()[0][:120]})") from None


def update_index(store: Store, progress: bool = True, rebuild: bool = False, wait: bool = True) -> IndexReport:
    """Bring the index in line with the live memory rows; no work when nothing changed."""
    t0 = time.perf_counter()
    with store.writer(wait=wait) as tx:
        view = tx.view
        model = view.model
        if model is None:
            raise ClaraError("the store has no compressed chunks yet (run `clara compress` first)")
        dim = int(model["n_mem"]) * int(model["hidden"])
        live = np.asarray(view.memory_keys(), dtype=np.int64)
        info = view.manifest.get("index")
        index = None
        if info and not rebuild and info.get("fingerprint") == model["fingerprint"] and info.get("dim") == dim:
            index = load_index(view)
        rebuilt = index is None
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        present = index_ids(index)
        stale = present[~np.isin(present, live)]
        new = live[~np.isin(live, present)]
        if len(stale) == 0 and len(new) == 0 and not rebuilt:
            return IndexReport(0, 0, int(index.ntotal), False, round(time.perf_counter() - t0, 3))
        if len(stale):
            index.remove_ids(faiss.IDSelectorBatch(stale))
        with progress_bar(total=len(new), desc="index", unit="chunk", enabled=progress) as bar:
            for start in range(0, len(new), 4096):
                keys = new[start:start + 4096]
                index.add_with_ids(flatten_normalized(view.read_memory(keys)), keys)
                bar.update(len(keys))
        path = tx.new_data_path("index", ".faiss")
        try:
            faiss.write_index(index, str(path))
        except RuntimeError as err:  # a full disk, say: one line, and the writer removes the file
            raise ClaraError(f"{path}: cannot write the FAISS index ({str(err).splitlines()[0][:160]})") from None
        tx.track_file(path.name)
        tx.set_index({"file": path.name, "kind": "flat", "metric": "cosine", "dim": dim,
                      "ntotal": int(index.ntotal), "fingerprint": model["fingerprint"]})
        tx.commit()
    return IndexReport(len(new), len(stale), int(index.ntotal), rebuilt, round(time.perf_counter() - t0, 3))
