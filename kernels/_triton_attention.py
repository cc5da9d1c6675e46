"""Triton forward kernel for causal varlen attention with grouped-query heads.

FlashAttention-2 style: one program per (query block, sequence, query head) walks
the key/value blocks of its own sequence with an online softmax, so no
[seq, seq] score matrix and no padding ever exist. Sequences are packed back to
back and located through ``cu_seqlens`` (cumulative offsets, like flash-attn).

Imported lazily by ``clara_kernels.attention`` (see ``dispatch.load_kernel_module``).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

#: Whether the kernels below were decorated in interpreter mode (read at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRETED:
    # One small config: the interpreter is slow, and BLOCK_M != BLOCK_N exercises
    # the causal loop bound.
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=1)]
else:
    # Untuned starting points (no GPU was available when this was written);
    # the autotuner picks per (head dim, GQA ratio, causal, dtype).
    _CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (64, 64, 4, 2),
            (64, 64, 4, 3),
            (128, 64, 4, 3),
            (128, 64, 8, 3),
            (128, 32, 4, 3),
            (128, 128, 8, 2),
        ]
    ]


@triton.autotune(configs=_CONFIGS, key=["BLOCK_D", "N_REP", "IS_CAUSAL"])
@triton.jit
def _flash_varlen_fwd(
    Q,
    K,
    V,
    Out,
    CU_SEQLENS,
    scale_log2e,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    N_REP: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Highest query blocks first: under a causal mask they have the most work.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // N_REP

    start = tl.load(CU_SEQLENS + seq)
    seqlen = tl.load(CU_SEQLENS + seq + 1) - start
    m0 = pid_m * BLOCK_M
    if m0 >= seqlen:
        return

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # head dims below 16 or not a power of two are padded

    row_ok = offs_m < seqlen
    q_ptrs = Q + (start + offs_m).to(tl.int64)[:, None] * stride_qt + head * stride_qh
    q = tl.load(q_ptrs + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    k_base = K + start.to(tl.int64) * stride_kt + kv_head * stride_kh
    v_base = V + start.to(tl.int64) * stride_vt + kv_head * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    if IS_CAUSAL:
        hi = tl.minimum(seqlen, m0 + BLOCK_M)
    else:
        hi = seqlen
    # The first block always holds key 0, visible to every row, so m_i turns finite
    # at once and exp2(m_i - m_new) never sees -inf - -inf.
    for n0 in range(0, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < seqlen
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale_log2e
        visible = col_ok[None, :]
        if IS_CAUSAL:
            visible = visible & (cols[None, :] <= offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = Out + (start + offs_m).to(tl.int64)[:, None] * stride_ot + head * stride_oh
    tl.store(
        o_ptrs + offs_d[None, :],
        acc.to(Out.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )


def flash_attn_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    causal: bool,
    softmax_scale: float,
) -> torch.Tensor:
    """Launch the kernel; inputs are already validated by ``clara_kernels.attention``."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    total, n_heads, head_dim = q.shape
    out = torch.empty((total, n_heads, head_dim), dtype=q.dtype, device=q.device)
    n_seqs = cu_seqlens.numel() - 1
    if total == 0 or n_seqs == 0 or max_seqlen == 0:
        return out.zero_()
    block_d = max(16, triton.next_power_of_2(head_dim))

    def grid(meta: dict) -> tuple[int, int, int]:
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"]), n_seqs, n_heads)

    _flash_varlen_fwd[grid](
        q,
        k,
        v,
        out,
        cu_seqlens,
        softmax_scale * math.log2(math.e),
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        N_REP=n_heads // k.shape[1],
        IS_CAUSAL=causal,
        # The interpreter's tl.dot is wrong on bf16: compute it in fp32 there.
        UPCAST=INTERPRETED,
        # fp32 inputs get true fp32 products on the GPU, not TF32.
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out
