"""Helpers to pack several sequences into one row for the varlen attention path.

The compressor concatenates a batch's documents into a single row whose
``position_ids`` restart at 0 for every document; the attention implementation
recovers the boundaries (``cu_seqlens``) from those resets, and the caller gathers
each document's memory-token states with ``tail_indices``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _lengths_tensor(
    lengths: Sequence[int] | torch.Tensor, device: torch.device | str | None
) -> torch.Tensor:
    out = torch.as_tensor(lengths, dtype=torch.int64, device=device)
    if out.ndim != 1 or (out.numel() and int(out.min()) < 0):
        raise ValueError("lengths must be a 1-D sequence of non-negative integers")
    return out


def cu_seqlens_from_lengths(
    lengths: Sequence[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """int32 ``[batch + 1]`` cumulative offsets: ``[0, l0, l0 + l1, ...]``."""
    lens = _lengths_tensor(lengths, device)
    return F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)


def pack_position_ids(
    lengths: Sequence[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[1, sum(lengths)]`` position ids restarting at 0 for each packed sequence."""
    lens = _lengths_tensor(lengths, device)
    total = int(lens.sum())
    starts = torch.repeat_interleave(lens.cumsum(0) - lens, lens)
    return (torch.arange(total, device=lens.device) - starts).unsqueeze(0)


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(cu_seqlens int32, max_seqlen)`` of the sequences packed in ``position_ids``.

    A sequence starts at every row start and wherever a position is not its
    predecessor + 1 (the rule transformers' own packed-sequence masks use), so each
    row of a ``[batch, seq]`` tensor may hold one or several sequences.
    """
    pos = position_ids.reshape(1, -1) if position_ids.ndim == 1 else position_ids
    batch, seq = pos.shape
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    first = starts.reshape(-1).nonzero().squeeze(1)
    end = torch.tensor([batch * seq], device=pos.device, dtype=first.dtype)
    cu = torch.cat([first, end]).to(torch.int32)
    max_seqlen = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return cu, max_seqlen


def tail_indices(cu_seqlens: torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, n]`` packed-row indices of the last ``n`` tokens of every sequence.

    With memory tokens appended at the end of each document, ``hidden[0, tail_indices(cu, n_mem)]``
    is the ``[batch, n_mem, hidden]`` block of compressed vectors.
    """
    cu = cu_seqlens.long()
    if n < 0 or (cu.numel() > 1 and int((cu[1:] - cu[:-1]).min()) < n):
        raise ValueError(f"every sequence must hold at least {n} tokens")
    return cu[1:, None] - n + torch.arange(n, device=cu.device)
