"""``flash_attn_varlen``: packed causal attention with one API on every backend."""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings

import torch

from .dispatch import FORCE_ENV, backend, load_kernel_module
from .reference import LastTensorMemo, varlen_attention_torch

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
    forward-only: when autograd needs gradients a CUDA call runs PyTorch's flash varlen attention
    (`torch.nn.attention.varlen`, fp16/bf16, checked against the torch path on its first call in a
    process), any other the torch (SDPA) path.
    """
    _check(q, k, v, cu_seqlens)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    max_seqlen = int(max_seqlen)

    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if needs_grad and dropout_p == 0.0 and _torch_varlen_applies(q):
        out = _torch_varlen(q, k, v, cu_seqlens, max_seqlen, causal, float(softmax_scale))
        if out is not None:
            return out
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
    # reading the last offset back is a host sync: once per cu_seqlens tensor, not per layer
    if _CHECKED.get(cu_seqlens, q.shape[0]) is None:
        if int(cu_seqlens[-1]) != q.shape[0]:
            raise ValueError(f"cu_seqlens[-1] = {int(cu_seqlens[-1])} but q holds {q.shape[0]} tokens")
        _CHECKED.put(cu_seqlens, True, q.shape[0])


_CHECKED = LastTensorMemo()


#: PyTorch's flash varlen attention for CUDA calls that need gradients: one kernel a layer forward
#: and one backward, where the torch path gathers, runs an SDPA call per length bucket and
#: gathers back (~35 calls a layer; docs/TRAINING.md, "The host's share of a GPU step"). "untried"
#: until the first call in a process, then "on", or "off" where it is missing from this torch,
#: fails, or disagrees with the torch path.
_TORCH_VARLEN = {"state": "untried"}
#: How far its first output may lie from the torch path's (bf16 rounding, as the tests allow).
TORCH_VARLEN_TOLERANCE = 3e-2


def _torch_varlen_applies(q: torch.Tensor) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= MAX_KERNEL_HEAD_DIM
            and os.environ.get(FORCE_ENV, "").lower() != "torch" and _TORCH_VARLEN["state"] != "off")


def _load_torch_varlen():
    """torch.nn.attention.varlen.varlen_attn, or None in a torch without it (before 2.9)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _takes_enable_gqa(varlen_attn) -> bool:
    """Whether this torch's varlen_attn has `enable_gqa` (2.13 does, 2.11 does not); asked once."""
    return "enable_gqa" in inspect.signature(varlen_attn).parameters


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen: int, causal: bool, scale: float) -> torch.Tensor | None:
    """The attention through PyTorch's flash varlen kernel, or None where it is not to be used."""
    varlen_attn = _load_torch_varlen()
    if varlen_attn is None:
        return _torch_varlen_off("torch.nn.attention.varlen is not in this torch")
    kv, kw = (k, v), {}
    if q.shape[1] != k.shape[1]:  # grouped query heads: the kernel's own, or kv heads repeated
        if _takes_enable_gqa(varlen_attn):
            kw["enable_gqa"] = True
        else:
            kv = tuple(t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    cu = cu_seqlens.to(torch.int32)
    try:
        out = varlen_attn(q, *kv, cu, cu, max_seqlen, max_seqlen, scale=scale,
                          window_size=(-1, 0) if causal else (-1, -1), **kw)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        return _torch_varlen_off(f"it failed: {exc}")
    if _TORCH_VARLEN["state"] == "untried":
        with torch.no_grad():
            ref = varlen_attention_torch(q.detach(), k.detach(), v.detach(), cu_seqlens, causal, scale)
        gap = float((out.detach().float() - ref.float()).abs().max())
        if gap > TORCH_VARLEN_TOLERANCE * max(1.0, float(ref.float().abs().max())):
            return _torch_varlen_off(f"its output lies {gap:.3g} from the torch path's")
        _TORCH_VARLEN["state"] = "on"
    return out


def _torch_varlen_off(why: str) -> None:
    _TORCH_VARLEN["state"] = "off"
    warnings.warn(f"clara_kernels: attention with gradients on CUDA takes the SDPA path: PyTorch's flash "
                  f"varlen attention is not used ({why})", RuntimeWarning, stacklevel=3)
    return None
