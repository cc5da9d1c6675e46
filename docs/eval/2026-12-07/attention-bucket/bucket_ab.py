"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward, merged
LoRA; bf16) with the varlen attention's causal buckets 64 tokens wide (clara_kernels'
CAUSAL_BUCKET) against another width: less padding per sequence, more SDPA calls. Steps
interleaved, order alternating; busy tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/attention-bucket/bucket_ab.py scp 6 32
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_model, interleave  # noqa: E402

import clara_kernels.reference as ref  # noqa: E402
from clara_cli.train.stages import Trainable, trainer_speedups  # noqa: E402

torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
width = int(sys.argv[3]) if len(sys.argv) > 3 else 32
model, records, cfg = compiled_model(stage, "bf16")
tm = Trainable(model, stage, autocast=True, packed=True, **trainer_speedups(model, torch.device("cpu"), model.dtype, True))
if stage in ("e2e", "generator"):
    tm.cache_documents([d for r in records for d in r.docs])
default = ref.CAUSAL_BUCKET


def switch(on: bool) -> None:
    ref.CAUSAL_BUCKET = width if on else default
    tm.merged_lora.forget()  # as after an optimizer step, for both


interleave(tm, records, cfg, switch, (f"bucket {default}", f"bucket {width}"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
