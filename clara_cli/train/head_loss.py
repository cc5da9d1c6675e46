"""The LM head and its cross-entropy in chunks of target rows, gradients computed on the way.

For an scp step the [targets x vocabulary] logits are the largest tensor of the step (2,362 x
49,171 in fp32: 465 MB). Computed whole, autograd passes over them ~15 times: the bf16 product,
the <MEM*> columns spliced in, the fp32 copy, log-softmax and its backward, the zero-filled
gradients of the splice and of the NLL, the casts back. `head_group_losses` runs the same
computation a chunk of rows at a time and, since the loss is linear in each group's mean,
computes each row's gradient in the forward: p - onehot, scaled by 1 / the group's target count,
times the head. The backward only scales those rows by the group's incoming gradient. No
[targets x vocabulary] tensor outlives a chunk (docs/TRAINING.md, "The LM head in chunks").
"""

from __future__ import annotations

import torch

#: Target rows per chunk: [256 x 49,171] fp32 logits are 50 MB.
CHUNK_ROWS = 256


class _HeadGroupLosses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, head, mem_rows, labels, group, inv_count, n_groups: int, mem_lo: int, dtype):
        # h [T, H], head [V, H] (frozen), mem_rows [n_mem, H] fp32 master or None, labels [T],
        # group [T] (the group of each target row), inv_count [T] fp32 (1 / its group's targets)
        w = head.to(dtype)
        if mem_rows is not None:  # tied head: the <MEM*> rows are the trained master's
            w = w.clone()
            w[mem_lo:mem_lo + mem_rows.shape[0]] = mem_rows.to(dtype)
        hc = h.to(dtype)
        losses = torch.zeros(n_groups, dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hc)
        grad_mem = (torch.zeros(n_groups, *mem_rows.shape, dtype=torch.float32, device=h.device)
                    if mem_rows is not None else None)
        for a in range(0, h.shape[0], CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, h.shape[0])
            y, g, scale = labels[a:b], group[a:b], inv_count[a:b]
            z = (hc[a:b] @ w.T).float()                                 # [c, V] logits
            lse = torch.logsumexp(z, dim=1)                             # [c]
            nll = lse - z.gather(1, y[:, None]).squeeze(1)              # [c]
            losses.index_add_(0, g, nll * scale)
            p = z.sub_(lse[:, None]).exp_()                             # softmax, in place
            p[torch.arange(b - a, device=h.device), y] -= 1.0
            p = p.mul_(scale[:, None]).to(dtype)                        # d(group mean) / d logits
            grad_h[a:b] = p @ w                                         # [c, H]
            if grad_mem is not None:
                n_mem = mem_rows.shape[0]
                pm = p[:, mem_lo:mem_lo + n_mem].float()                # [c, n_mem]
                grad_mem.index_add_(0, g, pm[:, :, None] * hc[a:b, None, :].float())
        ctx.save_for_backward(grad_h, grad_mem, group)
        ctx.h_dtype = h.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        grad_h, grad_mem, group = ctx.saved_tensors
        dh = (grad_h.float() * grad_losses[group][:, None]).to(ctx.h_dtype)
        dmem = (grad_mem * grad_losses[:, None, None]).sum(0) if grad_mem is not None else None
        return dh, None, dmem, None, None, None, None, None, None


def head_group_losses(h: torch.Tensor, head: torch.Tensor, labels: torch.Tensor, counts: list[int],
                      mem_rows: torch.Tensor | None = None, mem_lo: int = 0,
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per group, the mean cross-entropy of `labels` under the LM head: [G] fp32.

    h [T, H]: hidden states of the target positions, groups back to back (counts[g] rows
    each); head [V, H]: the frozen output embedding; mem_rows [n_mem, H]: the trained <MEM*>
    rows that replace head rows mem_lo.. (a tied head), or None. The products run in `dtype`
    (default h's), the softmax in fp32: what `F.cross_entropy(logits.float(), labels)` per
    group computes, with gradients for h and mem_rows."""
    dev = h.device
    group = torch.repeat_interleave(torch.arange(len(counts), device=dev), torch.tensor(counts, device=dev))
    inv_count = (1.0 / torch.tensor(counts, dtype=torch.float32, device=dev))[group]
    return _HeadGroupLosses.apply(h, head, mem_rows, labels, group, inv_count, len(counts), mem_lo,
                                  dtype or h.dtype)
