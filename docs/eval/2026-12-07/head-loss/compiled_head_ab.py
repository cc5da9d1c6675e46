"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16,
merged LoRA) with each LM-head chunk's softmax gradient in eager mode (`head_loss.logit_grads`)
against the same function through inductor (`compiled_logit_grads`), on one compiled model. Steps
interleaved, order alternating; busy tokens/s per step and the loss of each micro-batch.
It runs on commit b38d0f6 (`Trainable.compiled_head`), reverted after it measured 1.01x.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/head-loss/compiled_head_ab.py scp 6
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_model, interleave  # noqa: E402

from clara_cli.train.stages import Trainable  # noqa: E402

torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
model, records, cfg = compiled_model(stage, "bf16")
tm = Trainable(model, stage, autocast=True, packed=True, matmul_attention_backward=True, merged_lora=True)
if stage in ("e2e", "generator"):
    tm.cache_documents([d for r in records for d in r.docs])


def switch(on: bool) -> None:
    tm.compiled_head = on
    tm.merged_lora.forget()  # as after an optimizer step, for both


interleave(tm, records, cfg, switch, ("eager head", "compiled head"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
