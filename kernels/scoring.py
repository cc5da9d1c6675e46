"""``cosine_topk``: exact cosine retrieval over a memory bank with one API on every backend."""

from __future__ import annotations

import torch

from .dispatch import backend, load_kernel_module
from .reference import cosine_topk_torch

_QUERY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MEMORY_DTYPES = (*_QUERY_DTYPES, torch.int8)
#: Must match ``_triton_scoring.MAX_K`` (kept here so the check needs no triton import).
MAX_KERNEL_K = 128


def cosine_topk(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int,
    memory_scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` memory rows per query by cosine similarity, best first.

    ``queries`` is ``[Q, ...]`` and ``memory`` ``[N, ...]``; trailing dims are flattened
    (CLaRa scores the flattened ``n_mem * hidden`` vectors, not their mean). Memory is
    read in its stored dtype: fp32, fp16, bf16, or int8 with ``memory_scales`` ``[N]``
    (row ``i`` is ``memory[i] * memory_scales[i]``). Scores are fp32 cosines of the
    L2-normalised vectors (``F.normalize`` semantics, zero rows score 0).

    Returns ``(scores [Q, k] float32, indices [Q, k] int64)`` sorted by descending score.
    """
    if queries.ndim < 2 or memory.ndim < 2:
        raise ValueError("queries and memory must be [Q, ...] and [N, ...]")
    q2 = queries.reshape(queries.shape[0], -1)
    m2 = memory.reshape(memory.shape[0], -1)
    if q2.shape[1] != m2.shape[1]:
        raise ValueError(f"queries have {q2.shape[1]} features per row, memory {m2.shape[1]}")
    if queries.dtype not in _QUERY_DTYPES:
        raise ValueError(f"queries must be one of {_QUERY_DTYPES}, got {queries.dtype}")
    if memory.dtype not in _MEMORY_DTYPES:
        raise ValueError(f"memory must be one of {_MEMORY_DTYPES}, got {memory.dtype}")
    if memory.dtype == torch.int8 and memory_scales is None:
        raise ValueError("int8 memory needs memory_scales [N] (one dequantisation scale per row)")
    if memory_scales is not None and memory_scales.shape != (m2.shape[0],):
        raise ValueError(f"memory_scales must be [{m2.shape[0]}], got {tuple(memory_scales.shape)}")
    if queries.device != memory.device or (
        memory_scales is not None and memory_scales.device != memory.device
    ):
        raise ValueError("queries, memory and memory_scales must be on one device")
    if not 1 <= k <= m2.shape[0]:
        raise ValueError(f"k must be between 1 and the {m2.shape[0]} memory rows, got {k}")
    if q2.shape[0] == 0:
        return (
            torch.empty(0, k, dtype=torch.float32, device=memory.device),
            torch.empty(0, k, dtype=torch.int64, device=memory.device),
        )

    if backend(memory.device) == "torch" or k > MAX_KERNEL_K or q2.shape[1] == 0:
        return cosine_topk_torch(q2, m2, k, memory_scales)
    module = load_kernel_module("_triton_scoring")
    scales = memory_scales.float().contiguous() if memory_scales is not None else None
    return module.cosine_topk_fwd(q2, m2, k, scales)
