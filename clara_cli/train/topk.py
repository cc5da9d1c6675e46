"""Straight-through differentiable top-k (docs/design.md §1, end-to-end stage).

The forward pass is an exact hard selection of the top-k candidates in rank order; the
backward pass sees, for each slot, a softmax over s/tau restricted to the candidates not
taken by earlier slots. So the generator reads exactly the documents a hard retriever
would give it, while the LM loss still reaches the retrieval scores (and through them
the query reasoner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def differentiable_topk(scores: torch.Tensor, k: int, temperature: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """scores [B, N] -> (W [B, k, N], topk_idx [B, k]).

    W = hard + (soft - soft.detach()): its value is the one-hot hard selection (slot j holds
    the j-th best candidate), its gradient is the soft one's. Select with W @ candidates.
    """
    B, N = scores.shape
    if not 1 <= k <= N:
        raise ValueError(f"k must be in 1..{N}, got {k}")
    logits = scores.float() / max(temperature, 1e-6)              # [B, N]
    topk_idx = logits.topk(k, dim=-1).indices                     # [B, k], rank order
    hard = torch.zeros(B, k, N, device=scores.device, dtype=logits.dtype)
    hard.scatter_(2, topk_idx.unsqueeze(-1), 1.0)                 # [B, k, N] one-hot rows
    taken = torch.zeros(B, N, device=scores.device, dtype=logits.dtype)
    soft = []
    for j in range(k):
        # slots already filled are masked out: log(1 - taken + 1e-8) is ~ -18.4 there, 0 elsewhere
        soft.append(F.softmax(logits + torch.log(1.0 - taken + 1e-8), dim=-1))  # [B, N]
        taken = torch.clamp(taken + hard[:, j], max=1.0)
    soft = torch.stack(soft, dim=1)                               # [B, k, N]
    W = hard + (soft - soft.detach())  # (soft - soft) is exactly 0: the value is exactly hard
    return W, topk_idx
