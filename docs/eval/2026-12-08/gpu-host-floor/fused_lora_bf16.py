"""The fused LoRA path against peft's on the real default model, one scp step of 2 x 4 in one pass, bf16 autocast
[AMD EPYC, no AMX, bf16, 2 threads]: python docs/eval/2026-12-08/gpu-host-floor/fused_lora_bf16.py"""
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
from train_throughput import one_step, synth_records  # noqa: E402

from clara_cli.train.loop import TrainConfig, _load_start_model  # noqa: E402
from clara_cli.train.stages import Trainable, prepare_adapters  # noqa: E402

torch.set_num_threads(2)
tmp = Path(tempfile.mkdtemp())
recs = synth_records(20, tmp / "r")["scp"]
cfg = TrainConfig("scp", "u", "u", init_from="default", batch_size=4, grad_accum=2, dropout=False, dtype="bf16").resolved()
out = {}
for fused in (False, True):
    m = _load_start_model(cfg, None, torch.device("cpu"), torch.bfloat16)
    prepare_adapters(m, "scp", fresh_start=True, seed=0)
    m.set_attention("auto")
    m.decoder.train(False)
    tm = Trainable(m, "scp", autocast=True, packed=True, fused_lora=fused)
    _, _, losses = one_step(tm, recs, cfg, 4, 2, 0, True)
    out[fused] = losses
    print("fused" if fused else "peft ", losses, flush=True)
print("max loss difference", max(abs(a - b) for a, b in zip(out[False], out[True], strict=True)))
