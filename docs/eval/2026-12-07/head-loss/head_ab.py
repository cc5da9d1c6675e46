"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16)
with the LM head's loss over the whole [targets x vocabulary] logits (commit 75d1c8b's
`Trainable.logits` + F.cross_entropy per group) against `head_group_losses` (chunks of rows,
gradients computed on the way). Steps interleaved, order alternating; busy tokens/s per step and
the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/head-loss/head_ab.py scp 6
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_trainer, interleave  # noqa: E402

from clara_cli.train.stages import Trainable  # noqa: E402

CHUNKED = [True]
chunked_losses = Trainable.head_losses


def whole_logits_losses(self, h_t, labels, counts):
    """75d1c8b's path: the whole logits, the <MEM*> columns spliced in, F.cross_entropy per group."""
    with self._autocast():
        out = self.model.decoder.get_output_embeddings()(h_t)
    if self.mem_rows is not None and self.tied:
        lo, hi = self.mem_lo, self.mem_lo + self.n_mem
        mem = h_t @ self.mem_rows.to(h_t.dtype).T
        out = torch.cat([out[:, :lo], mem.to(out.dtype), out[:, hi:]], dim=1)
    if len(counts) == 1:
        return F.cross_entropy(out.float(), labels)[None]
    per_token = F.cross_entropy(out.float(), labels, reduction="none")
    return torch.stack([part.mean() for part in torch.split(per_token, counts)])


def head_losses(self, h_t, labels, counts):
    return (chunked_losses if CHUNKED[0] else whole_logits_losses)(self, h_t, labels, counts)


def switch(on: bool) -> None:
    CHUNKED[0] = on


Trainable.head_losses = head_losses
torch.set_num_threads(2)
tm, records, cfg = compiled_trainer(sys.argv[1] if len(sys.argv) > 1 else "scp")
interleave(tm, records, cfg, switch, ("whole", "chunked"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
