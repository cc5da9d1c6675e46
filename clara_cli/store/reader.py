"""The one reader of a snapshot's memory rows (docs/design.md §3): memory-mapped shards, read
by the search scan block by block, by the rerank and `ask` row by row, and by rewrites shard
by shard. Every byte it hands out is checked first (`checked=True`, the default), with the
cheapest check that covers it:

* a scan reads whole shards: each shard's sha256 against the manifest, once per shard and
  Store object (a process), before its first block;
* row reads (`read`, `gather`, `iter`) check the per-row CRCs stored in the shard.

A damaged shard is refused with CorruptDataError (exit 6) naming the file, never scored.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ClaraError, CorruptDataError, MissingMemoryError
from ..lazy import torch
from .keys import chunk_id_from_key, find_keys
from .memory import check_rows, dequantize_int8

if TYPE_CHECKING:
    from .snapshot import Snapshot

# safetensors dtype -> (numpy dtype of the mapped bytes, torch dtype name)
_ST_DTYPES = {"F32": (np.float32, "float32"), "BF16": (np.uint16, "bfloat16"),
              "F16": (np.float16, "float16"), "I8": (np.int8, "int8")}


def mmap_tensors(path: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Zero-copy views of safetensors tensors (np.memmap copy-on-write: pages are read lazily,
    never written back). safetensors' own reader copies every slice; a scan cannot afford that."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise CorruptDataError(f"{path}: memory shard header does not parse ({err})") from None
    out = {}
    for name in names:
        info = header.get(name)
        if info is None:
            continue
        np_dtype, t_name = _ST_DTYPES[info["dtype"]]
        t_dtype = getattr(torch, t_name)
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == start:
            out[name] = torch.zeros(shape, dtype=t_dtype)
            continue
        arr = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + n + start, shape=shape)
        t = torch.from_numpy(arr)
        out[name] = t.view(t_dtype) if t_dtype == torch.bfloat16 else t
    return out


class _Shard:
    """One memory shard of the snapshot: its live rows, their keys, the mapped tensors."""

    def __init__(self, entry: dict, rows: np.ndarray, keys: np.ndarray, path: Path,
                 memory: torch.Tensor, scales: torch.Tensor | None):
        self.entry, self.rows, self.keys, self.path = entry, rows, keys, path
        self.memory = memory  # [rows in file, n_mem, hidden], stored dtype
        self.scales = scales  # [rows in file, n_mem] for int8 shards, else None

    def take(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(stored rows [b, n_mem, h], scales or None) for file row numbers; zero-copy when the
        rows are one contiguous run."""
        start, stop = int(rows[0]), int(rows[-1]) + 1
        if stop - start == len(rows) and np.all(np.diff(rows) == 1):
            return self.memory[start:stop], None if self.scales is None else self.scales[start:stop]
        idx = torch.from_numpy(np.ascontiguousarray(rows))
        return self.memory[idx], None if self.scales is None else self.scales[idx]


class MemoryReader:
    """The live memory rows of a snapshot, memory-mapped shard by shard (see the module doc)."""

    def __init__(self, snapshot: Snapshot, checked: bool = True):
        self.snapshot = snapshot
        self.checked = checked
        model = snapshot.model or {}
        self.n_mem = int(model.get("n_mem", 0))
        self.hidden = int(model.get("hidden", 0))
        self.shards: list[_Shard] = []
        for entry, rows, keys in snapshot.memory_rows():
            path = snapshot.checked_path(entry)  # present, with the manifest's size
            t = mmap_tensors(path, ("memory", "scales"))
            if "memory" not in t or tuple(t["memory"].shape) != (entry["rows"], entry["n_mem"], entry["hidden"]):
                raise CorruptDataError(f"{path}: not a memory shard of the shape the manifest says")
            self.shards.append(_Shard(entry, rows, keys, path, t["memory"], t.get("scales")))
        self.keys = np.concatenate([s.keys for s in self.shards]) if self.shards else np.zeros(0, np.int64)
        self.n = len(self.keys)
        self._lookup: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- checks ------------------------------------------------------------------------------------

    def _check_whole(self, shard: _Shard) -> None:
        """sha256 of the whole file against the manifest, once per Store object."""
        if self.checked:
            self.snapshot.check_file(shard.entry["name"])

    def _check_rows(self, shard: _Shard, rows: np.ndarray, keys: np.ndarray, block: torch.Tensor,
                    scales: torch.Tensor | None) -> None:
        if self.checked:
            check_rows(shard.path, self.snapshot.row_crcs(shard.entry), rows, keys, block, scales)

    # -- the scan ----------------------------------------------------------------------------------

    def blocks(self, block_rows: int = 4096) -> Iterator[tuple[int, np.ndarray, torch.Tensor, torch.Tensor | None]]:
        """(offset in self.keys, keys, rows [b, D] stored dtype, per-token scales [b, n_mem] or
        None) over every live row; zero-copy where the live rows are contiguous. Each shard's
        sha256 is checked before its first block."""
        offset = 0
        for shard in self.shards:
            self._check_whole(shard)
            for lo in range(0, len(shard.rows), block_rows):
                part = shard.rows[lo:lo + block_rows]
                block, scales = shard.take(part)
                yield offset, shard.keys[lo:lo + block_rows], block.reshape(len(part), -1), scales
                offset += len(part)

    def first_rows(self, per_shard: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
        """(keys, rows [b, D] stored dtype, scales) of the first live rows of every shard, checked."""
        for shard in self.shards:
            part = shard.rows[:per_shard]
            if len(part):
                block, scales = shard.take(part)
                self._check_rows(shard, part, shard.keys[:per_shard], block, scales)
                yield shard.keys[:per_shard], block.reshape(len(part), -1), scales

    # -- rows by key -------------------------------------------------------------------------------

    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, file row) per key; MissingMemoryError names a key without memory."""
        if self._lookup is None:
            shard = np.concatenate([np.full(len(s.keys), i, np.int64) for i, s in enumerate(self.shards)]) \
                if self.shards else np.zeros(0, np.int64)
            rows = np.concatenate([s.rows for s in self.shards]) if self.shards else np.zeros(0, np.int64)
            order = np.argsort(self.keys, kind="stable")
            self._lookup = (self.keys[order], shard[order], rows[order])
        sorted_keys, shard_of, row_of = self._lookup
        pos, found = find_keys(sorted_keys, keys)
        if not found.all():
            missing = ~found
            raise MissingMemoryError(
                f"{int(missing.sum())} chunk(s) have no memory in store {self.snapshot.root} (version "
                f"{self.snapshot.version}), e.g. {chunk_id_from_key(keys[np.argmax(missing)])}; run `clara compress`")
        return shard_of[pos], row_of[pos]

    def read(self, chunk_keys: np.ndarray | list[int], dtype: torch.dtype | None = torch.float32,
             flat: bool = False) -> torch.Tensor:
        """Rows for the keys, in the order asked, CRC-checked: [n, n_mem, hidden] (flat: [n, D]),
        int8 rows dequantised; dtype None keeps a float shard's stored dtype."""
        keys = np.asarray(chunk_keys, dtype=np.int64).reshape(-1)
        shape = (self.n_mem * self.hidden,) if flat else (self.n_mem, self.hidden)
        if len(keys) == 0:
            return torch.zeros(0, *shape, dtype=dtype or torch.float32)
        shard_of, row_of = self._locate(keys)
        out: torch.Tensor | None = None
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            shard = self.shards[int(s)]
            block, scales = shard.take(row_of[where])
            self._check_rows(shard, row_of[where], keys[where], block, scales)
            rows = block if scales is None else dequantize_int8(block, scales)
            if out is None:
                out = torch.empty((len(keys), *shape), dtype=dtype or rows.dtype)
            out[torch.from_numpy(where)] = rows.reshape(len(where), *shape).to(out.dtype)
        assert out is not None
        return out

    def gather(self, keys: np.ndarray) -> torch.Tensor:
        """fp32 rows [n, D] for live keys, in the order asked (the exact rerank's read)."""
        return self.read(keys, torch.float32, flat=True)

    def read_shard(self, name: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
        """(keys, stored rows [b, n_mem, h], int8 scales or None) of one shard's live rows,
        CRC-checked: what a shard merge rewrites as it is."""
        for shard in self.shards:
            if shard.entry["name"] == name:
                block, scales = shard.take(shard.rows)
                block, scales = block.clone(), None if scales is None else scales.clone()
                self._check_rows(shard, shard.rows, shard.keys, block, scales)
                return shard.keys, block, scales
        raise ClaraError(f"{name} holds no live memory rows of this snapshot")

    def iter(self, batch_rows: int = 4096, dtype: torch.dtype | None = None, with_scales: bool = False) -> Iterator[tuple]:
        """(keys, memory [b, n_mem, h]) over all live rows, shard by shard, at most batch_rows at a
        time, CRC-checked; dtype None keeps the stored dtype (int8: dequantised fp32). with_scales
        yields (keys, stored rows, int8 scales or None) instead, for rewriting shards as they are."""
        for shard in self.shards:
            for lo in range(0, len(shard.rows), batch_rows):
                part, keys = shard.rows[lo:lo + batch_rows], shard.keys[lo:lo + batch_rows]
                block, scales = shard.take(part)
                block = block.clone()  # a private copy: the caller may keep it past the mapping
                scales = None if scales is None else scales.clone()
                self._check_rows(shard, part, keys, block, scales)
                if with_scales:
                    yield keys, block, scales
                    continue
                if scales is not None:
                    block = dequantize_int8(block, scales)
                yield keys, block if dtype is None else block.to(dtype)


__all__ = ["MemoryReader", "mmap_tensors"]
