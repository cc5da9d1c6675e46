"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward) with
peft's LoRA side paths against the same step with each LoRA pair merged into the weight
before its product (y = x (W + s B A)^T: no side paths; the weight gradient grad_y^T x, one
compute-bound product, gives A's and B's). Steps interleaved, order alternating; busy
tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/merged-lora/merged_ab.py scp 4
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_trainer, interleave  # noqa: E402

MERGED = [False]
_peft_forward = LoraLinear.forward


def merged_forward(self, x, *args, **kwargs):
    if not MERGED[0] or self.disable_adapters or self.merged:
        return _peft_forward(self, x, *args, **kwargs)
    adapter = self.active_adapters[0]
    if adapter not in self.lora_A:
        return _peft_forward(self, x, *args, **kwargs)
    w = self.base_layer.weight + (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]
    return F.linear(x, w, self.base_layer.bias)


def switch(on: bool) -> None:
    MERGED[0] = on


LoraLinear.forward = merged_forward
torch.set_num_threads(2)
tm, records, cfg = compiled_trainer(sys.argv[1] if len(sys.argv) > 1 else "scp")
print("lora r", tm.model.config.lora_r)
interleave(tm, records, cfg, switch, ("peft", "merged"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
