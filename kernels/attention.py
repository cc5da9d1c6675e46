"""``flash_attn_varlen``: packed causal attention with one API on every backend."""

from __future__ import annotations

import math

import torch

from .dispatch import backend, load_kernel_module
from .reference import plan_is_known, varlen_attention_torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Larger head dims would not fit the kernel's registers; they take the torch path.
MAX_KERNEL_HEAD_DIM = 256


def flash_attn_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int | torch.Tensor | None = None,
    causal: bool = True,
    softmax_scale: float | None = None,
    *,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Self-attention over sequences packed without padding, like flash-attn's varlen call.

    Args:
        q: ``[total_tokens, n_heads, head_dim]``.
        k, v: ``[total_tokens, n_kv_heads, head_dim]``; ``n_heads % n_kv_heads == 0``
            (query head ``h`` reads key/value head ``h // (n_heads // n_kv_heads)``,
            the layout of transformers' ``repeat_kv``).
        cu_seqlens: int32 ``[batch + 1]`` offsets of each sequence, ``cu_seqlens[-1] == total_tokens``.
        max_seqlen: longest sequence (computed from ``cu_seqlens`` when ``None``).
        causal: mask future positions inside each sequence.
        softmax_scale: defaults to ``1 / sqrt(head_dim)``.
        dropout_p: attention dropout; the kernel has none, so ``> 0`` takes the torch path.

    Returns ``[total_tokens, n_heads, head_dim]`` in ``q``'s dtype. The Triton kernel is
    forward-only: when autograd needs gradients the call runs the torch (SDPA) path.
    """
    _check(q, k, v, cu_seqlens)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    max_seqlen = int(max_seqlen)

    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if (
        backend(q.device) == "torch"
        or needs_grad
        or dropout_p > 0.0
        or q.shape[-1] > MAX_KERNEL_HEAD_DIM
    ):
        return varlen_attention_torch(q, k, v, cu_seqlens, causal, softmax_scale, dropout_p)
    module = load_kernel_module("_triton_attention")
    return module.flash_attn_varlen_fwd(
        q, k, v, cu_seqlens.to(torch.int32), max_seqlen, causal, float(softmax_scale)
    )


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    """Reject shapes the kernel would read out of bounds with, in plain words."""
    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape:
        raise ValueError(
            "expected q [total, heads, dim] and k, v [total, kv_heads, dim] of equal shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[0] != q.shape[0] or k.shape[2] != q.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on tokens or head dim"
        )
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one of {_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
        raise ValueError("cu_seqlens must be a 1-D integer tensor [batch + 1]")
    if cu_seqlens.device != q.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
    if not plan_is_known(cu_seqlens, q.shape[0]) and int(cu_seqlens[-1]) != q.shape[0]:
        raise ValueError(f"cu_seqlens[-1] = {int(cu_seqlens[-1])} but q holds {q.shape[0]} tokens")
