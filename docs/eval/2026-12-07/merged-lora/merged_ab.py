"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward) with
peft's LoRA side paths against the same step with each LoRA pair merged into the weight
before its product (y = x (W + s B A)^T: no side paths; the weight gradient grad_y^T x, one
compute-bound product, gives A's and B's). Steps interleaved, order alternating; busy
tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/merged-lora/merged_ab.py scp 6
"""

import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
import train_throughput as tt  # noqa: E402

from clara_cli.train.loop import TrainConfig, _load_start_model  # noqa: E402
from clara_cli.train.stages import Trainable, compile_layers, prepare_adapters  # noqa: E402

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


LoraLinear.forward = merged_forward
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
n_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6
batch, accum = tt.RECIPE[stage]
with tempfile.TemporaryDirectory() as tmp:
    records = tt.synth_records(40, Path(tmp))[stage]
cfg = TrainConfig(stage, "unused", "unused", init_from="default", batch_size=batch, grad_accum=accum,
                  dropout=False, dtype="bf16").resolved()
model = _load_start_model(cfg, None, torch.device("cpu"), torch.bfloat16)
prepare_adapters(model, stage, fresh_start=True, seed=0)
model.set_attention("auto")
model.decoder.train(False)
compile_layers(model, fall_back=False)
tm = Trainable(model, stage, autocast=True, packed=True, matmul_attention_backward=True)
print(stage, batch, accum, "lora r", model.config.lora_r, "threads", torch.get_num_threads(), flush=True)
speed: dict[bool, list[float]] = {False: [], True: []}
losses: dict[bool, list[float]] = {False: [], True: []}
for s in range(n_steps + 1):  # step 0 warms up (compiles both)
    for merged in ((False, True) if s % 2 else (True, False)):
        MERGED[0] = merged
        (_, busy), tokens, loss = tt.one_step(tm, records, cfg, batch if s else 2, accum, s * batch * accum, True)
        if s:
            speed[merged].append(tokens / busy)
            losses[merged].append(loss)
    if s:
        print(s, tokens, {("merged" if k else "peft"): round(v[-1]) for k, v in speed.items()},
              "losses", losses[False][-1], losses[True][-1], flush=True)
ratios = [round(a / b, 3) for a, b in zip(speed[True], speed[False], strict=True)]
print(f"peft: median {statistics.median(speed[False]):.0f} tok/s busy; merged: {statistics.median(speed[True]):.0f}; "
      f"x{statistics.median(speed[True]) / statistics.median(speed[False]):.3f}; per step {ratios}")
print("largest loss difference", max(abs(a - b) for x, y in zip(losses[False], losses[True], strict=True) for a, b in zip(x, y, strict=True)))
