"""Torch implementations: the numerical references and the fallback path.

``attention_reference`` is deliberately naive (explicit scores, masked softmax in fp32)
so the tests compare the kernels against something obviously right.
``varlen_attention_torch`` is the fallback that actually runs on a CPU or when
gradients are needed: it batches sequences of equal length into one SDPA call, so it
is differentiable and wastes no work on padding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import weakref
from collections.abc import Iterator

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

#: Whether causal CPU attention needing gradients takes `_FlashMatmulBackward` (set inside
#: `matmul_attention_backward`).
_MATMUL_BACKWARD = {"on": False}
#: Longer buckets keep flash's backward, which was as fast from ~600 tokens up
#: (docs/eval/2026-12-07/throughput/attention_backward.txt).
MATMUL_BACKWARD_MAX_WIDTH = 512


@contextlib.contextmanager
def matmul_attention_backward(on: bool = True) -> Iterator[None]:
    """Inside: causal CPU attention that needs gradients gets a backward of batched matmuls
    instead of SDPA's flash backward, which runs ~7x its forward on a CPU (docs/TRAINING.md,
    "One pass per step, and attention's backward as matmuls"). The same gradients to rounding
    (tests/test_kernels.py).
    The choice is made at the forward; the backward is compiled with inductor when first run,
    so it pays off in long runs only (`clara train` uses it with its compiled blocks)."""
    before = _MATMUL_BACKWARD["on"]
    _MATMUL_BACKWARD["on"] = on
    try:
        yield
    finally:
        _MATMUL_BACKWARD["on"] = before


def _attention_backward(q, k, v, o, lse, do, scale: float):
    """Causal attention's input gradients from the forward's output and log-sum-exp.

    q, o, do ``[B, H, L, D]``; k, v ``[B, H_kv, L, D]``; lse ``[B, H, L]`` fp32. The query heads
    of one kv head are stacked into one matrix ``[r * L, D]`` (no repeat_kv), the probabilities
    are recomputed in fp32 from the saved log-sum-exp, matmuls run in the inputs' dtype."""
    B, H, L, D = q.shape
    r = H // k.shape[1]
    qg, og, dog = (t.reshape(B, k.shape[1], r * L, D) for t in (q, o, do))      # [B, H_kv, rL, D]
    s = torch.matmul(qg, k.transpose(-1, -2)).float() * scale                    # [B, H_kv, rL, L]
    i = torch.arange(L, device=q.device)
    seen = (i[:, None] >= i[None, :]).repeat(r, 1)                               # [rL, L] causal
    p = torch.where(seen, torch.exp(s - lse.reshape(B, k.shape[1], r * L, 1)), 0.0)
    dv = torch.matmul(p.to(q.dtype).transpose(-1, -2), dog)                      # [B, H_kv, L, D]
    dp = torch.matmul(dog, v.transpose(-1, -2)).float()                          # [B, H_kv, rL, L]
    delta = (dog.float() * og.float()).sum(-1, keepdim=True)                     # [B, H_kv, rL, 1]
    ds = (p * (dp - delta) * scale).to(q.dtype)
    dq = torch.matmul(ds, k).reshape(B, H, L, D)
    dk = torch.matmul(ds.transpose(-1, -2), qg)                                  # [B, H_kv, L, D]
    return dq, dk, dv


@functools.cache
def _compiled_attention_backward():
    """`_attention_backward` through inductor (dynamic shapes), compiled at its first call."""
    return torch.compile(_attention_backward, dynamic=True)


class _FlashMatmulBackward(torch.autograd.Function):
    """Causal SDPA (CPU flash forward) with `_attention_backward`, compiled once, as backward."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float):
        r = q.shape[1] // k.shape[1]
        kr, vr = (k, v) if r == 1 else (k.repeat_interleave(r, 1), v.repeat_interleave(r, 1))
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kr, vr, 0.0, True, scale=scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = (t.contiguous() for t in ctx.saved_tensors)
        return (*_compiled_attention_backward()(q, k, v, o, lse, do.contiguous(), ctx.scale), None)


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
    exact lengths only. The grouping (`bucket_plan`) is built once per cu_seqlens tensor.
    """
    n_rep = q.shape[1] // k.shape[1]
    plan = bucket_plan(cu_seqlens, q.shape[0], causal)
    if not plan.buckets:
        return q.new_zeros(q.shape)
    flat, buckets, src_of_row = plan.flat, plan.buckets, plan.src_of_row
    # index_select: CPU advanced indexing is much slower here.
    sizes = [n * width for width, n in buckets]
    pieces = [t.index_select(0, flat).split(sizes) for t in (q, k, v)]  # each [n * width, H(_kv), D]
    outs = []
    for b, (width, n) in enumerate(buckets):
        # [n * width, H, D] -> [n, H, width, D]
        qs, ks, vs = (t[b].view(n, width, *t[b].shape[1:]).transpose(1, 2) for t in pieces)
        if (
            _MATMUL_BACKWARD["on"] and causal and 1 < width <= MATMUL_BACKWARD_MAX_WIDTH and dropout_p == 0.0
            and q.device.type == "cpu" and torch.is_grad_enabled()
            and any(t.requires_grad for t in (q, k, v))
        ):
            scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
            ys = _FlashMatmulBackward.apply(qs, ks, vs, scale)
        else:
            ys = F.scaled_dot_product_attention(
                qs,
                ks,
                vs,
                dropout_p=dropout_p,
                is_causal=causal and width > 1,
                scale=softmax_scale,
                enable_gqa=n_rep > 1,
            )
        outs.append(ys.transpose(1, 2).reshape(n * width, *q.shape[1:]))  # [n * width, H, D]
    if plan.outside:  # rows outside every sequence read one zero row
        outs.append(q.new_zeros(1, *q.shape[1:]))
    return torch.cat(outs).index_select(0, src_of_row)


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """How `varlen_attention_torch` batches the sequences of one cu_seqlens: the rows each
    bucket's slots read (`flat`, bucket after bucket), each bucket's (width, sequences), and
    for every row the output slot it takes back (`src_of_row`; rows outside every sequence take
    the zero row after the last slot when `outside`)."""

    flat: torch.Tensor
    buckets: tuple[tuple[int, int], ...]
    src_of_row: torch.Tensor
    outside: bool


class LastTensorMemo:
    """One value remembered for one tensor while that tensor lives unchanged (the same object,
    the same version counter) under the same extra key. The layers of a packed forward all pass
    the same cu_seqlens tensor, so what is derived from it (with host syncs, which on a GPU stall
    the host) is derived once per forward. Inference tensors have no version counter to tell an
    in-place change by: nothing is remembered for them. Safe across threads: one entry, read
    and replaced whole."""

    def __init__(self) -> None:
        self._last: tuple | None = None

    def get(self, tensor: torch.Tensor, *key):
        last = self._last
        if last is None or tensor.is_inference() or last[0]() is not tensor or last[1] != (tensor._version, *key):
            return None
        return last[2]

    def put(self, tensor: torch.Tensor, value, *key):
        if not tensor.is_inference():
            self._last = (weakref.ref(tensor), (tensor._version, *key), value)
        return value


_PLANS = LastTensorMemo()


def bucket_plan(cu_seqlens: torch.Tensor, total: int, causal: bool = True) -> BucketPlan:
    """The bucket plan of `cu_seqlens` over `total` rows, built once per cu_seqlens tensor.

    Building it takes host syncs (unique, boolean masks; on a GPU each one drains the queue)
    and ~10 small operators per bucket. Every layer of a packed forward passes the same
    cu_seqlens tensor, so a forward builds it once instead of once per layer
    (docs/TRAINING.md, "The host's share of a GPU step")."""
    plan = _PLANS.get(cu_seqlens, total, causal)
    if plan is not None:
        return plan
    if int(cu_seqlens[-1]) != total:
        raise ValueError(f"cu_seqlens[-1] = {int(cu_seqlens[-1])} but q holds {total} tokens")
    starts = cu_seqlens[:-1].long()
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    bucket = CAUSAL_BUCKET if causal else 1
    padded = (lengths + bucket - 1) // bucket * bucket
    # Every bucket's rows come from one gather, split into buckets, and the outputs go back by
    # one gather of their concatenation. In a backward pass a gather, slice or copy per bucket is
    # a zero-filled [total, H, D] gradient summed with the others': ~8 full-size passes per tensor
    # and layer where one does (docs/TRAINING.md, "One gather per attention call").
    buckets, flats = [], []
    src_of_row = torch.full((total,), -1, dtype=torch.long, device=cu_seqlens.device)  # row -> its output slot
    used = 0
    for width in torch.unique(padded).tolist():
        if width == 0:
            continue
        group = padded == width
        offsets = torch.arange(width, device=cu_seqlens.device)
        rows = starts[group, None] + offsets  # [n, width]
        valid = offsets < lengths[group, None]
        src_of_row[rows[valid]] = used + torch.arange(rows.numel(), device=cu_seqlens.device).view_as(rows)[valid]
        flats.append(rows.clamp(max=total - 1).reshape(-1))  # padded slots read any row, unused
        buckets.append((width, rows.shape[0]))
        used += rows.numel()
    outside = bool((src_of_row < 0).any())
    if outside:
        src_of_row[src_of_row < 0] = used
    flat = torch.cat(flats) if flats else src_of_row[:0]
    return _PLANS.put(cu_seqlens, BucketPlan(flat, tuple(buckets), src_of_row, outside), total, causal)



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
