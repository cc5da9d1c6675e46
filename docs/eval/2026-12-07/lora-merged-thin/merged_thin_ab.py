"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16)
with peft's LoRA linears against `clara_cli.train.merged_lora` (one product with W + s*B*A, thin
products only for A's and B's gradients), on one compiled model. Steps interleaved, order
alternating; busy tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/lora-merged-thin/merged_thin_ab.py scp 6 [fp32|bf16] [eager]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_model, interleave  # noqa: E402

from clara_cli.train.stages import Trainable, matmul_attention_backward_pays_off  # noqa: E402

torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
dtype = sys.argv[3] if len(sys.argv) > 3 else "bf16"
compiled = "eager" not in sys.argv[4:]
model, records, cfg = compiled_model(stage, dtype, compiled)
tm = Trainable(model, stage, autocast=dtype == "bf16", packed=True, merged_lora=True,
               matmul_attention_backward=matmul_attention_backward_pays_off(compiled, torch.device("cpu"),
                                                                            model.dtype))
if stage in ("e2e", "generator"):
    tm.cache_documents([d for r in records for d in r.docs])
merged = tm.merged_lora


def switch(on: bool) -> None:
    """on: the merged path, every adapter merged again inside the timed step as after an optimizer
    step (the benchmark's steps leave A and B as they are); off: peft's forward."""
    tm.merged_lora = merged if on else None
    merged.forget()


interleave(tm, records, cfg, switch, ("peft", "merged"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
