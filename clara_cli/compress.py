"""The batch compression job: every live chunk without memory -> one memory row.

Commits after every batch (a new immutable shard plus a manifest swap), so a killed
run loses at most the batch in flight and a rerun continues with what is pending.
Identical chunk texts are compressed once: a pending chunk whose text (content hash) is
already in the store copies that memory row, and duplicates within the run share the row
computed for the first of them (a file of one repeated word is one compression, not 600).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .model import ClaraModel, dtype_from_name
from .progress import notice, progress_bar
from .store import Store, chunk_ids_to_keys, memory_dtype_name, quantize_int8


@dataclass
class CompressReport:
    compressed: int
    batches: int
    seconds: float
    memory_dtype: str
    duplicates: int = 0  # of `compressed`, chunks whose memory was copied from an identical text

    def to_dict(self) -> dict:
        return asdict(self)


def model_info(model: ClaraModel) -> dict:
    """What the store records about its model (docs/design.md §3: a store is bound to one model)."""
    return {
        "fingerprint": model.fingerprint,
        "spec": model.source,
        "base_model": model.config.base_model,
        "n_mem": model.config.n_mem,
        "hidden": model.hidden_size,
        "doc_max_length": model.config.doc_max_length,
        "trained": model.trained,
        # a tensor, not JSON: bind_store_model keeps a copy of it in the store as a file
        **({"retrieval_center": model.retrieval_center} if model.retrieval_center is not None else {}),
    }


def bind_store_model(tx, info: dict) -> None:
    """Bind the store to its model. A model that centres retrieval leaves its center in the store
    (a tracked file named by the model record), so that `clara index` and search, which load no
    model, score exactly as the model was trained to; the fingerprint covers the center."""
    info = dict(info)
    center = info.pop("retrieval_center", None)
    if center is not None and not tx.view.model:
        path = tx.new_data_path("center", ".npy")
        with open(path, "wb") as f:
            np.save(f, np.asarray(center, dtype=np.float32))
        tx.track_file(path.name)
        info["center_file"] = path.name
    tx.bind_model(info)


def storage_dtype(model: ClaraModel, requested: str | None = None, existing: str | None = None) -> torch.dtype:
    """The shard dtype: as requested, else the store's existing memory dtype (one store keeps one,
    whichever machine compresses into it: an fp32 CPU adding to a bf16 store writes bf16), else
    the compute dtype (bf16/fp16 compute yields values exact in that dtype: lossless)."""
    if requested:
        return dtype_from_name(requested)
    if existing:
        return dtype_from_name(existing)
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


@dataclass
class CompressionPlan:
    """What a compress run does: rows copied from identical texts already in the store, and the
    texts to compute (longest first), each with the keys of the pending chunks that share it."""

    copy_to: np.ndarray  # pending chunk keys whose text already has memory in the store ...
    copy_from: np.ndarray  # ... and the key of that memory row
    texts: list[str]  # distinct pending texts to compress, longest first
    groups: list[np.ndarray]  # keys of the pending chunks holding texts[i] (first: the representative)
    tokens: int  # tokens of the texts to compress

    @property
    def pending(self) -> int:
        return len(self.copy_to) + sum(len(g) for g in self.groups)

    @property
    def duplicates(self) -> int:
        return self.pending - len(self.texts)


def plan_compression(view) -> CompressionPlan:
    """Group the pending chunks by content hash (the sha256 of the chunk text)."""
    chunks = view.chunks(columns=["chunk_id", "text", "n_tokens", "content_hash"])
    keys = chunk_ids_to_keys(chunks.column("chunk_id"))
    hashes = chunks.column("content_hash").to_pylist()
    n_tokens = np.asarray(chunks.column("n_tokens").to_numpy(zero_copy_only=False))
    done = np.isin(keys, np.asarray(view.memory_keys(), dtype=np.int64))
    stored: dict[str, int] = {}
    for i in np.nonzero(done)[0]:
        stored.setdefault(hashes[i], int(keys[i]))
    copy_to, copy_from, first_of = [], [], {}
    members: list[list[int]] = []
    for i in np.nonzero(~done)[0]:
        h = hashes[i]
        if h in stored:
            copy_to.append(int(keys[i]))
            copy_from.append(stored[h])
        elif h in first_of:
            members[first_of[h]].append(i)
        else:
            first_of[h] = len(members)
            members.append([i])
    order = sorted(range(len(members)), key=lambda g: -int(n_tokens[members[g][0]]))  # stable: longest first
    texts_col = chunks.column("text")
    return CompressionPlan(np.asarray(copy_to, np.int64), np.asarray(copy_from, np.int64),
                           [texts_col[members[g][0]].as_py() for g in order],
                           [keys[np.asarray(members[g])] for g in order],
                           int(sum(int(n_tokens[members[g][0]]) for g in order)))


def copy_stored_duplicates(tx, plan: CompressionPlan, dtype: torch.dtype, rows_per_commit: int = 4096) -> int:
    """Give the pending chunks whose text already has memory in the store a copy of that row
    (one commit per rows_per_commit); returns how many."""
    for lo in range(0, len(plan.copy_to), rows_per_commit):
        src = plan.copy_from[lo:lo + rows_per_commit]
        add_memory(tx, plan.copy_to[lo:lo + rows_per_commit], tx.view.read_memory(src, dtype=torch.float32), dtype)
        tx.commit()
    return len(plan.copy_to)


def forget_memory(store: Store, wait: bool = True) -> int:
    """Drop every memory row, the indexes and the model binding in one commit, so that the next
    compress binds the store to another model (`clara compress --recompress`); the chunk rows
    stay, so nothing is re-read or re-chunked. Returns how many rows were dropped."""
    with store.writer(wait=wait) as tx:
        rows = len(tx.view.memory_keys())
        tx.unbind_model()
        tx.commit()
    return rows


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


PROBE_BATCH = 4  # with notify, the first batch is this small: an estimate within seconds


def compress_store(store: Store, model: ClaraModel, batch_size: int = 32, memory_dtype: str | None = None,
                   progress: bool = True, wait: bool = True, notify: bool = False,
                   say: Callable[[str], None] = notice,
                   model_lock: AbstractContextManager = nullcontext()) -> CompressReport:
    """Compress what is pending; one commit per batch. With notify, say up front how many
    chunks will be compressed, and (after a small first batch) about how long it will take.
    model_lock is held for each batch's forward pass only, so that a server's questions to the
    same model are answered between batches instead of after the whole run."""
    t0 = time.perf_counter()
    with store.writer(wait=wait) as tx:
        dtype = storage_dtype(model, memory_dtype, existing_memory_dtype(tx.view))
        bind_store_model(tx, model_info(model))
        plan = plan_compression(tx.view)
        batches = 0
        merged = model.merge_pays_off(len(plan.texts), batch_size)
        with progress_bar(total=plan.pending, desc="compress", unit="chunk", enabled=progress) as bar:
            bar.update(copy_stored_duplicates(tx, plan, dtype))
            texts = plan.texts
            if notify and texts:
                dup = f" ({plan.duplicates} more share the memory of an identical chunk text)" if plan.duplicates else ""
                say(f"compressing {len(texts)} chunk(s), {plan.tokens} tokens{dup}")
            first = min(PROBE_BATCH, batch_size) if notify and len(texts) > batch_size else batch_size
            bounds = [0, *range(first, len(texts), batch_size), len(texts)] if texts else [0]
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                t_batch = time.perf_counter()
                with model_lock:
                    memory = model.compress(texts[lo:hi], batch_size=batch_size, merged=merged)
                group = plan.groups[lo:hi]
                rows = torch.from_numpy(np.repeat(np.arange(hi - lo), [len(g) for g in group]))
                add_memory(tx, np.concatenate(group), memory[rows.to(memory.device)], dtype)
                tx.commit()
                batches += 1
                bar.update(len(rows))
                if notify and batches == 1 and hi < len(texts):
                    rate = (hi - lo) / max(time.perf_counter() - t_batch, 1e-6)
                    say(f"compress: about {_duration((len(texts) - hi) / rate)} left "
                        f"({rate:.1f} chunks/s on the first, longest chunks)")
    return CompressReport(compressed=plan.pending, batches=batches, seconds=round(time.perf_counter() - t0, 3),
                          memory_dtype=memory_dtype_name(dtype), duplicates=plan.duplicates)
