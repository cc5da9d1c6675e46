"""Torch implementations: the numerical references and the fallback path.

``attention_reference`` is deliberately naive (explicit scores, masked softmax in fp32)
so the tests compare the kernels against something obviously right.
``varlen_attention_torch`` is the fallback that actually runs on a CPU or when
gradients are needed: it batches sequences of equal length into one SDPA call, so it
is differentiable and wastes no work on padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Naive fp32 varlen attention, one sequence at a time; output in ``q``'s dtype."""
    n_heads, head_dim = q.shape[1], q.shape[2]
    n_rep = n_heads // k.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end == start:
            continue
        qs = q[start:end].float().transpose(0, 1)  # [H, L, D]
        ks = k[start:end].float().transpose(0, 1).repeat_interleave(n_rep, dim=0)
        vs = v[start:end].float().transpose(0, 1).repeat_interleave(n_rep, dim=0)
        scores = qs @ ks.transpose(1, 2) * scale
        if causal:
            length = end - start
            future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out[start:end] = (scores.softmax(dim=-1) @ vs).transpose(0, 1)
    return out.to(q.dtype)


#: Causal sequences are right-padded to a multiple of this before batching into SDPA.
CAUSAL_BUCKET = 64


def varlen_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    causal: bool = True,
    softmax_scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Varlen attention through a few batched SDPA calls.

    Under a causal mask a real token never sees the positions after its sequence, so
    sequences can be right-padded (with any values) to a bucket length and batched
    without a mask; the padded rows are discarded (and get no gradient). This keeps
    the number of SDPA calls at ``max_len / CAUSAL_BUCKET`` instead of one per
    distinct length (each call is a thread barrier on a CPU). Non-causal calls group
    exact lengths only.
    """
    n_rep = q.shape[1] // k.shape[1]
    total = q.shape[0]
    out = q.new_zeros(q.shape)
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    bucket = CAUSAL_BUCKET if causal else 1
    padded = (lengths + bucket - 1) // bucket * bucket
    for width in torch.unique(padded).tolist():
        if width == 0:
            continue
        group = padded == width
        offsets = torch.arange(width, device=q.device)
        rows = starts[group, None] + offsets  # [n, width]
        valid = offsets < lengths[group, None]
        # index_select / index_copy_: CPU advanced indexing is much slower here.
        flat = rows.clamp(max=total - 1).reshape(-1)
        # [n * width, H, D] -> [n, H, width, D]
        qs, ks, vs = (
            t.index_select(0, flat).view(-1, width, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)
        )
        ys = F.scaled_dot_product_attention(
            qs,
            ks,
            vs,
            dropout_p=dropout_p,
            is_causal=causal and width > 1,
            scale=softmax_scale,
            enable_gqa=n_rep > 1,
        )
        ys = ys.transpose(1, 2)[valid]  # [n_valid, H, D]
        out.index_copy_(0, rows[valid], ys)
    return out


def cosine_topk_torch(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int,
    memory_scales: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k in fp32, chunked over the memory rows to bound peak memory.

    Only one chunk of the corpus is ever upcast and normalised at a time
    (about 256 MiB of fp32 by default).
    """
    n_rows = memory.shape[0]
    qn = F.normalize(queries.reshape(queries.shape[0], -1).float(), dim=1)
    dim = qn.shape[1]
    if chunk_rows is None:
        chunk_rows = max(1, (1 << 26) // max(dim, 1))
    best_vals = qn.new_empty(qn.shape[0], 0)
    best_idx = torch.empty(qn.shape[0], 0, dtype=torch.int64, device=qn.device)
    for start in range(0, n_rows, chunk_rows):
        rows = memory[start : start + chunk_rows].reshape(-1, dim).float()
        if memory_scales is not None:
            rows = rows * memory_scales[start : start + chunk_rows, None].float()
        scores = qn @ F.normalize(rows, dim=1).T
        vals, idx = scores.topk(min(k, scores.shape[1]), dim=1)
        best_vals = torch.cat([best_vals, vals], dim=1)
        best_idx = torch.cat([best_idx, idx + start], dim=1)
        best_vals, keep = best_vals.topk(min(k, best_vals.shape[1]), dim=1)
        best_idx = best_idx.gather(1, keep)
    return best_vals, best_idx
