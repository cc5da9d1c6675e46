"""Memory shards: the int8 codec, the shard file format, and checked reads of its rows.

A shard is one safetensors file: ``memory [rows, n_mem, hidden]`` in its stored dtype,
``chunk_keys [rows]`` int64, ``row_crc [rows]`` (CRC32 of each key, row and its scales), and
for int8 ``scales [rows, n_mem]`` fp32 (symmetric absmax per memory token). Its metadata
repeat the model fingerprint, shape, dtype and a CRC of the keys (docs/design.md §3).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..errors import ClaraError, CorruptDataError
from ..lazy import torch

# str(torch dtype) -> the shard's dtype name; int8 shards also hold "scales" [rows, n_mem] fp32
# (per token). Keyed by name so that reading a store needs no torch import.
MEMORY_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16",
                 "torch.int8": "int8"}


def memory_dtype_name(dtype) -> str:
    """The shard dtype name of a torch dtype ("bfloat16"); KeyError for others."""
    return MEMORY_DTYPES[str(dtype)]


def quantize_int8(memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, n_mem, hidden] -> (int8 values, fp32 scales [n, n_mem]): symmetric absmax per memory
    token (each token is one input embedding of the generator; their norms differ)."""
    m = memory.detach().float()
    scales = (m.abs().amax(dim=-1) / 127.0).clamp_min(1e-12)
    return (m / scales[..., None]).round().clamp(-127, 127).to(torch.int8), scales


def dequantize_int8(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 values and their per-token scales -> fp32 rows."""
    return values.float() * scales.float()[..., None]


def row_crcs(keys: np.ndarray, memory: torch.Tensor, scales: torch.Tensor | None = None) -> np.ndarray:
    """CRC32 of each (key, memory row[, its scales]): lets a reader check just the rows it reads."""
    ks = np.ascontiguousarray(np.asarray(keys, dtype="<i8"))
    if len(ks) == 0:
        return np.zeros(0, np.int64)
    raw = memory.detach().to("cpu").contiguous().reshape(len(ks), -1).view(torch.uint8).numpy()
    if scales is not None:
        raw = np.concatenate([raw, scales.detach().float().contiguous().reshape(len(ks), -1)
                              .view(torch.uint8).numpy()], axis=1)
    return np.array([zlib.crc32(raw[i], zlib.crc32(ks[i].tobytes())) for i in range(len(ks))], dtype=np.int64)


def keys_crc(keys: np.ndarray) -> str:
    """The CRC32 of a shard's key column, as its metadata records it."""
    return str(zlib.crc32(np.asarray(keys).astype("<i8").tobytes()))


def encode_shard(keys: np.ndarray, memory: torch.Tensor, fingerprint: str,
                 scales: torch.Tensor | None = None) -> bytes:
    """The bytes of one shard file (int8 memory needs its scales [rows, n_mem])."""
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    memory = memory.detach().to("cpu").contiguous()
    extra = {}
    if memory.dtype == torch.int8:
        if scales is None or tuple(scales.shape) != tuple(memory.shape[:2]):
            raise ClaraError("int8 memory needs scales [rows, n_mem]")
        scales = scales.detach().to("cpu", torch.float32).contiguous()
        extra["scales"] = scales
    else:
        scales = None
    from safetensors.torch import save as safetensors_save

    return safetensors_save(
        {"memory": memory, "chunk_keys": torch.from_numpy(keys.copy()),
         "row_crc": torch.from_numpy(row_crcs(keys, memory, scales)), **extra},
        metadata={"model_fingerprint": str(fingerprint), "n_mem": str(memory.shape[1]),
                  "hidden": str(memory.shape[2]), "dtype": memory_dtype_name(memory.dtype),
                  "keys_crc": keys_crc(keys)})


def open_shard(path: Path, entry: dict, framework: str = "pt"):
    """safe_open a shard whose size is checked, and check its header against the manifest entry
    (framework "numpy" for reads that need no torch, such as the keys)."""
    try:
        handle = safe_open(str(path), framework=framework)
        meta = handle.metadata() or {}
        shape = handle.get_slice("memory").get_shape()
        keys_shape = handle.get_slice("chunk_keys").get_shape()
    except Exception as err:  # safetensors raises its own error types
        raise CorruptDataError(f"{path}: memory shard header does not parse ({err})") from None
    expect = [entry["rows"], entry["n_mem"], entry["hidden"]]
    if list(shape) != expect or list(keys_shape) != [entry["rows"]] \
            or meta.get("model_fingerprint") != entry["fingerprint"]:
        raise CorruptDataError(f"{path}: memory shard header disagrees with the manifest "
                               f"(shape {list(shape)}, expected {expect})")
    return handle


def read_shard_keys(path: Path, handle) -> np.ndarray:
    """The shard's chunk keys, checked against the CRC in its metadata."""
    keys = np.asarray(handle.get_tensor("chunk_keys")).astype(np.int64)  # a numpy handle: no torch
    expect = (handle.metadata() or {}).get("keys_crc")
    if expect is not None and keys_crc(keys) != expect:
        raise CorruptDataError(f"{path}: chunk keys fail their CRC (content changed; run `clara verify`)")
    return keys


def read_row_crcs(handle) -> np.ndarray | None:
    """The stored per-row CRCs (None for shards written before rows carried one)."""
    if "row_crc" not in handle.keys():
        return None
    return handle.get_tensor("row_crc").numpy().astype(np.int64)


def check_rows(path: Path, stored_crcs: np.ndarray | None, rows: np.ndarray, keys: np.ndarray,
               block: torch.Tensor, scales: torch.Tensor | None = None) -> None:
    """CorruptDataError naming the first row read whose CRC differs from the stored one."""
    if stored_crcs is None or len(rows) == 0:
        return
    bad = np.nonzero(row_crcs(keys, block, scales) != stored_crcs[rows])[0]
    if len(bad):
        raise CorruptDataError(f"{path}: memory row {int(rows[bad[0]])} fails its CRC "
                               "(content changed; run `clara verify`)")


__all__ = ["MEMORY_DTYPES", "memory_dtype_name", "check_rows", "dequantize_int8", "encode_shard", "keys_crc",
           "open_shard", "quantize_int8", "read_row_crcs", "read_shard_keys", "row_crcs"]
