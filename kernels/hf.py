"""transformers integration: run a causal LM's attention through ``flash_attn_varlen``.

``register_transformers_attention()`` registers an attention function *and* a mask
function under one name. Both are needed: transformers builds no mask at all for a
name its mask registry does not know, which would silently drop a padded batch's
padding mask. Our mask function returns ``None`` (plain causal; packing is read
from ``position_ids``) or the 2-D padding mask (the batch is unpadded into varlen
form), like flash-attention's; whenever a KV cache or an active sliding window is
involved it hands over to transformers' SDPA mask, and the attention function then
runs SDPA. transformers is imported only inside these functions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .attention import flash_attn_varlen
from .packing import cu_seqlens_from_position_ids

IMPLEMENTATION_NAME = "clara_triton"


def register_transformers_attention(name: str = IMPLEMENTATION_NAME) -> str:
    """Register the attention and mask functions; returns the name for
    ``model.set_attn_implementation(name)`` or ``from_pretrained(..., attn_implementation=name)``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, _eager_forward())
    AttentionMaskInterface.register(name, clara_attention_mask)
    return name


_EAGER_FORWARD: Any = None


def _eager_forward() -> Any:
    """``clara_attention_forward`` as an opaque call for ``torch.compile``: it reads sequence
    lengths on the host (``.tolist()``), so compiled blocks run it eagerly between their
    compiled halves instead of tracing into it. Made once, on first registration (the
    wrapper needs ``torch._dynamo``, which transformers has imported by then)."""
    global _EAGER_FORWARD
    if _EAGER_FORWARD is None:
        _EAGER_FORWARD = torch.compiler.disable(clara_attention_forward)
    return _EAGER_FORWARD


def clara_attention_mask(
    batch_size: int,
    cache_position: torch.Tensor | None = None,
    kv_length: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """``None`` or a 2-D padding mask when the varlen kernel applies, else SDPA's 4-D mask.
    transformers 4.x passes the query positions as ``cache_position``; 5.x as ``q_length`` and
    ``q_offset`` (in ``kwargs``)."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    config = kwargs.get("config")
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if cache_position is not None:
        q_length, q_offset = cache_position.shape[0], int(cache_position[0])
        positions = {"cache_position": cache_position}
    else:
        q_length, q_offset = kwargs["q_length"], kwargs.get("q_offset", 0)
        positions = {}
    no_cache = kv_offset == 0 and kv_length == q_length and q_offset == 0
    if no_cache and (window is None or kv_length <= window):
        if attention_mask is None:
            return None
        mask = attention_mask[:, :kv_length].bool()
        return None if bool(mask.all()) else mask
    return sdpa_mask(
        batch_size=batch_size,
        **positions,
        kv_length=kv_length,
        kv_offset=kv_offset,
        mask_function=mask_function or causal_mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


def clara_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: ``query [B, H, S, D]`` -> ``([B, S, H, D], None)``.

    Varlen kernel for a fresh forward (no cache): a packed row (boundaries from
    ``cu_seq_lens_q`` or ``position_ids`` resets), a plain batch, or a padded batch
    (2-D mask, unpadded first). Anything else (4-D masks, KV-cache decoding) goes to
    transformers' SDPA function.
    """
    batch, n_heads, q_len, head_dim = query.shape
    if softcap is not None:
        raise NotImplementedError("clara_triton attention has no logit softcap; use sdpa/eager")
    if (attention_mask is not None and attention_mask.ndim != 2) or key.shape[2] != q_len:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )  # fmt: skip

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    q, k, v = (_token_major(t) for t in (query, key, value))
    mask = attention_mask.bool() if attention_mask is not None else None
    if mask is not None and bool(mask.all()):
        mask = None

    if mask is None:
        cu_seqlens, max_seqlen = _boundaries(batch, q_len, query.device, kwargs)
        _check_window(sliding_window, max_seqlen)
        out = flash_attn_varlen(q, k, v, cu_seqlens, max_seqlen, causal, scaling, dropout_p=dropout)
        return out.view(batch, q_len, n_heads, head_dim), None

    # Padded batch: keep the real tokens of each row as one sequence (left or right padding).
    keep = mask.reshape(-1).nonzero().squeeze(1)
    lengths = mask.sum(1)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    max_seqlen = int(lengths.max())
    _check_window(sliding_window, max_seqlen)
    out = flash_attn_varlen(
        q[keep], k[keep], v[keep], cu_seqlens, max_seqlen, causal, scaling, dropout_p=dropout
    )
    full = out.new_zeros(batch * q_len, n_heads, head_dim).index_copy(0, keep, out)
    return full.view(batch, q_len, n_heads, head_dim), None


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, S, D]`` -> ``[B * S, H, D]`` (a view, no copy, when ``B == 1``)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


def _boundaries(
    batch: int, seq: int, device: torch.device, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, int]:
    """Sequence offsets of an unpadded input, from explicit kwargs, position ids or rows."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None:
        if cu_k is not None and cu_k is not cu_q and not torch.equal(cu_q, cu_k):
            raise NotImplementedError("clara_triton attention needs cu_seq_lens_q == cu_seq_lens_k")
        max_len = kwargs.get("max_length_q")
        if max_len is None:
            max_len = int((cu_q[1:] - cu_q[:-1]).max())
        return cu_q.to(device=device, dtype=torch.int32), int(max_len)
    position_ids = kwargs.get("position_ids")
    if position_ids is not None and position_ids.ndim == 2 and position_ids.shape[-1] == seq:
        return cu_seqlens_from_position_ids(position_ids.expand(batch, seq))
    cu = torch.arange(0, (batch + 1) * seq, seq, device=device, dtype=torch.int32)
    return cu, seq


def _check_window(sliding_window: int | None, max_seqlen: int) -> None:
    if sliding_window is not None and max_seqlen > sliding_window:
        raise NotImplementedError(
            f"a sequence of {max_seqlen} tokens exceeds the sliding window ({sliding_window}); "
            "clara_triton attention has no sliding window, use sdpa"
        )
