"""Time of `MergedLora.refresh` for one adapter of the default base (210 LoRA linear layers,
every one merged again, as after an optimizer step), bf16, 2 threads.

    python docs/eval/2026-12-07/lora-merged-thin/merge_time.py
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_model  # noqa: E402

from clara_cli.train.stages import Trainable  # noqa: E402

torch.set_num_threads(2)
model, _, _ = compiled_model("scp", "bf16", compile=False)
merged = Trainable(model, "scp", autocast=True, packed=True, merged_lora=True).merged_lora
print(len(merged.layers), "layers")
for _ in range(4):
    for adapter in ("encoder_adapter", "decoder_adapter"):
        merged.forget()
        start = time.perf_counter()
        merged.refresh(adapter)
        print(f"{adapter}: {(time.perf_counter() - start) * 1e3:.0f} ms")
