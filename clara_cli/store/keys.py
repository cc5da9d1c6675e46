"""Chunk ids and their int64 keys: one codec for every stage.

A chunk id is 16 lowercase hex digits of a 63-bit number derived from the chunk's document,
span and content; the same number, as an int64, is the key of its memory row, its FAISS id and
its BM25 row. Decode ids only through `chunk_ids_to_keys` (it validates them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ClaraError


def make_chunk_id(doc_id: str, start: int, end: int, content_hash: str) -> str:
    """The chunk id of a span of a document: 16 hex digits of a 63-bit number (an int64 key)."""
    digest = hashlib.sha256(f"{doc_id}\0{start}\0{end}\0{content_hash}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') >> 1:016x}"


def chunk_id_from_key(key: int) -> str:
    """The chunk id of an int64 key."""
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


def find_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of keys in a sorted key array and whether each is there."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys


__all__ = ["chunk_id_from_key", "chunk_ids_to_keys", "find_keys", "make_chunk_id"]
