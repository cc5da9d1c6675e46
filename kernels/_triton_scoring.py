"""Triton kernel for exact cosine top-k over a memory bank, in one pass over the memory.

Each program owns a block of queries and a contiguous slice ("split") of memory
rows. It streams the rows in their stored dtype, accumulates dot products and the
rows' squared norms in fp32 from the same loaded tiles (so no normalised copy of
the corpus ever exists), scales to cosines, and merges each tile into a running
top-k kept in registers. The splits' small candidate lists are merged afterwards
with one ``torch.topk`` over ``splits * K_PAD`` values per query.

Imported lazily by ``clara_kernels.scoring``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Whether the kernels below were decorated in interpreter mode (read at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Largest k the register-resident top-k handles; larger k takes the torch path.
MAX_K = 128


@triton.jit
def _cosine_topk_kernel(
    Qry,
    Mem,
    Scales,
    OutV,
    OutI,
    n_queries,
    n_rows,
    dim,
    rows_per_split,
    stride_q,
    stride_m,
    HAS_SCALES: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)

    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < n_queries
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = Qry + offs_q.to(tl.int64)[:, None] * stride_q

    # Query norms once per program (queries are few; F.normalize's eps clamp).
    q_sq = tl.zeros([BLOCK_Q], tl.float32)
    for d0 in range(0, dim, BLOCK_D):
        d_ok = (d0 + offs_d) < dim
        qt = tl.load(q_rows + (d0 + offs_d)[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
        qt = qt.to(tl.float32)
        q_sq += tl.sum(qt * qt, 1)
    q_inv = 1.0 / tl.maximum(tl.sqrt(q_sq), 1e-12)

    slots = tl.arange(0, K_PAD)
    lanes = tl.arange(0, BLOCK_N)
    top_v = tl.full([BLOCK_Q, K_PAD], float("-inf"), tl.float32)
    top_i = tl.full([BLOCK_Q, K_PAD], -1, tl.int32)

    row_lo = pid_s * rows_per_split
    row_hi = tl.minimum(row_lo + rows_per_split, n_rows)
    for n0 in range(row_lo, row_hi, BLOCK_N):
        rows = n0 + lanes
        r_ok = rows < row_hi
        m_rows = Mem + rows.to(tl.int64)[:, None] * stride_m
        dots = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
        m_sq = tl.zeros([BLOCK_N], tl.float32)
        for d0 in range(0, dim, BLOCK_D):
            d_ok = (d0 + offs_d) < dim
            qt = tl.load(
                q_rows + (d0 + offs_d)[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0
            )
            mt = tl.load(
                m_rows + (d0 + offs_d)[None, :], mask=r_ok[:, None] & d_ok[None, :], other=0
            )
            mf = mt.to(tl.float32)
            m_sq += tl.sum(mf * mf, 1)
            if DOT_FP32:
                dots = tl.dot(
                    qt.to(tl.float32), tl.trans(mf), dots, input_precision=INPUT_PRECISION
                )
            else:
                # Half queries against same-dtype (or int8, exact in half) memory:
                # tensor-core products, fp32 accumulation.
                dots = tl.dot(qt, tl.trans(mt.to(qt.dtype)), dots)
        if HAS_SCALES:
            sc = tl.load(Scales + rows, mask=r_ok, other=1.0).to(tl.float32)
            dots = dots * sc[None, :]
            m_sq = m_sq * sc * sc
        m_inv = 1.0 / tl.maximum(tl.sqrt(m_sq), 1e-12)
        scores = dots * q_inv[:, None] * m_inv[None, :]
        scores = tl.where(r_ok[None, :], scores, float("-inf"))

        # Running top-k: while some query's best remaining score in this tile beats
        # its current k-th best, swap it in. Most tiles fail the first test.
        go = tl.max((tl.max(scores, 1) > tl.min(top_v, 1)).to(tl.int32), 0)
        while go > 0:
            best = tl.max(scores, 1)
            arg = tl.argmax(scores, 1)
            worst = tl.min(top_v, 1)
            slot = tl.argmin(top_v, 1)
            take = best > worst
            hit = (slots[None, :] == slot[:, None]) & take[:, None]
            top_v = tl.where(hit, best[:, None], top_v)
            top_i = tl.where(hit, (n0 + arg)[:, None], top_i)
            scores = tl.where(lanes[None, :] == arg[:, None], float("-inf"), scores)
            go = tl.max(take.to(tl.int32), 0)

    out_off = (offs_q.to(tl.int64)[:, None] * n_splits + pid_s) * K_PAD + slots[None, :]
    tl.store(OutV + out_off, top_v, mask=q_ok[:, None])
    tl.store(OutI + out_off, top_i, mask=q_ok[:, None])


def cosine_topk_fwd(
    queries: torch.Tensor,
    memory: torch.Tensor,
    k: int,
    memory_scales: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel on 2-D ``queries`` / ``memory`` validated by ``clara_kernels.scoring``."""
    queries, memory = (t if t.stride(-1) == 1 else t.contiguous() for t in (queries, memory))
    n_queries, dim = queries.shape
    n_rows = memory.shape[0]
    k_pad = triton.next_power_of_2(k)

    half = (torch.float16, torch.bfloat16)
    native = queries.dtype in half and (memory.dtype == queries.dtype or memory.dtype == torch.int8)
    dot_fp32 = INTERPRETED or not native  # the interpreter's bf16 tl.dot is wrong

    if INTERPRETED:
        block_q, block_n, block_d, warps, stages, target_programs = 16, 16, 32, 1, 1, 4
    else:
        block_q = 16 if n_queries <= 16 else 32 if n_queries <= 32 else 64
        block_n, block_d, warps, stages = 64, (64 if dot_fp32 else 128), 4, 3
        sms = torch.cuda.get_device_properties(memory.device).multi_processor_count
        target_programs = 4 * sms
    q_blocks = triton.cdiv(n_queries, block_q)
    max_splits = triton.cdiv(n_rows, block_n)
    n_splits = min(max_splits, max(1, triton.cdiv(target_programs, q_blocks)))
    rows_per_split = triton.cdiv(triton.cdiv(n_rows, n_splits), block_n) * block_n
    n_splits = triton.cdiv(n_rows, rows_per_split)

    part_v = torch.empty((n_queries, n_splits, k_pad), dtype=torch.float32, device=memory.device)
    part_i = torch.empty((n_queries, n_splits, k_pad), dtype=torch.int32, device=memory.device)
    scales = memory_scales if memory_scales is not None else part_v  # unused dummy pointer
    _cosine_topk_kernel[(q_blocks, n_splits)](
        queries,
        memory,
        scales,
        part_v,
        part_i,
        n_queries,
        n_rows,
        dim,
        rows_per_split,
        queries.stride(0),
        memory.stride(0),
        HAS_SCALES=memory_scales is not None,
        DOT_FP32=dot_fp32,
        INPUT_PRECISION="ieee",
        K_PAD=k_pad,
        BLOCK_Q=block_q,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=warps,
        num_stages=stages,
    )
    vals, pos = part_v.reshape(n_queries, -1).topk(k, dim=1)
    idx = part_i.reshape(n_queries, -1).gather(1, pos).long()
    return vals, idx
