"""The batch compression job: every live chunk without memory -> one memory row.

Commits after every batch (a new immutable shard plus a manifest swap), so a killed
run loses at most the batch in flight and a rerun continues with what is pending.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .model import ClaraModel
from .progress import progress_bar
from .store import Store, quantize_int8


@dataclass
class CompressReport:
    compressed: int
    pending_before: int
    batches: int
    seconds: float
    memory_dtype: str

    def to_dict(self) -> dict:
        return asdict(self)


def model_info(model: ClaraModel) -> dict:
    """What the store records about its model (DESIGN.md §3: a store is bound to one model)."""
    return {
        "fingerprint": model.fingerprint,
        "spec": model.source,
        "n_mem": model.config.n_mem,
        "hidden": model.hidden_size,
        "doc_max_length": model.config.doc_max_length,
        "trained": model.trained,
    }


_BY_NAME = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
            "fp16": torch.float16, "float16": torch.float16, "int8": torch.int8}


def storage_dtype(model: ClaraModel, requested: str | None = None, existing: str | None = None) -> torch.dtype:
    """The shard dtype: as requested, else the store's existing memory dtype (one store keeps one,
    whichever machine compresses into it: an fp32 CPU adding to a bf16 store writes bf16), else
    the compute dtype (bf16/fp16 compute yields values exact in that dtype: lossless)."""
    if requested:
        return _BY_NAME[requested]
    if existing:
        return _BY_NAME[existing]
    return model.dtype if model.dtype in (torch.bfloat16, torch.float16) else torch.float32


def existing_memory_dtype(view) -> str | None:
    """The dtype of the store's newest memory shard (None when it holds none)."""
    shards = view.files("memory")
    return shards[-1].get("dtype") if shards else None


def add_memory(tx, keys: np.ndarray, memory: torch.Tensor, dtype: torch.dtype) -> None:
    """One batch into the store in the storage dtype (int8: per-token absmax scales)."""
    if dtype == torch.int8:
        values, scales = quantize_int8(memory)
        tx.add_memory(keys, values, scales=scales)
    else:
        tx.add_memory(keys, memory.to(dtype))


def pending_chunks(store_view, columns=("chunk_id", "text", "n_tokens")):
    """Live chunks that have no memory row yet, longest first (homogeneous batches pad little)."""
    chunks = store_view.chunks(columns=list(columns))
    keys = np.array([int(c, 16) for c in chunks.column("chunk_id").to_pylist()], dtype=np.int64)
    done = np.asarray(store_view.memory_keys(), dtype=np.int64)
    todo = ~np.isin(keys, done)
    n_tokens = np.asarray(chunks.column("n_tokens").to_numpy(zero_copy_only=False))
    idx = np.nonzero(todo)[0]
    idx = idx[np.argsort(-n_tokens[idx], kind="stable")]
    texts = chunks.column("text").to_pylist()
    return keys[idx], [texts[i] for i in idx]


def compress_store(store: Store, model: ClaraModel, batch_size: int = 32, memory_dtype: str | None = None,
                   progress: bool = True, wait: bool = True) -> CompressReport:
    """Compress what is pending; one commit per batch."""
    t0 = time.perf_counter()
    with store.writer(wait=wait) as tx:
        dtype = storage_dtype(model, memory_dtype, existing_memory_dtype(tx.view))
        tx.bind_model(model_info(model))
        keys, texts = pending_chunks(tx.view)
        batches = 0
        with progress_bar(total=len(texts), desc="compress", unit="chunk", enabled=progress) as bar:
            for start in range(0, len(texts), batch_size):
                memory = model.compress(texts[start:start + batch_size], batch_size=batch_size, merged=len(texts) > 4 * batch_size)
                add_memory(tx, keys[start:start + batch_size], memory, dtype)
                tx.commit()
                batches += 1
                bar.update(len(memory))
    return CompressReport(compressed=len(texts), pending_before=len(texts), batches=batches,
                          seconds=round(time.perf_counter() - t0, 3), memory_dtype=str(dtype).replace("torch.", ""))
