"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16)
with the varlen attention's old per-bucket gather and scatter (commit 0c83b87's
kernels/reference.py) against one gather and one scatter for all buckets. Steps interleaved,
order alternating; busy tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/varlen-gather/gather_ab.py scp 4 [bf16|fp32]
"""

import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "benchmarks"))
import clara_kernels.attention as attention  # noqa: E402
import clara_kernels.reference as reference  # noqa: E402
import train_throughput as tt  # noqa: E402

from clara_cli.train.loop import TrainConfig, _load_start_model  # noqa: E402
from clara_cli.train.stages import Trainable, compile_layers, prepare_adapters  # noqa: E402

old = types.ModuleType("reference_0c83b87")
old.__dict__["__name__"] = "reference_0c83b87"
exec(subprocess.run(["git", "-C", str(ROOT), "show", "0c83b87:kernels/reference.py"], capture_output=True,
                    text=True, check=True).stdout, old.__dict__)
old._MATMUL_BACKWARD = reference._MATMUL_BACKWARD  # the trainer's switch reaches both
NEW = reference.varlen_attention_torch
ONE_GATHER = [True]


def varlen(*args, **kwargs):
    return (NEW if ONE_GATHER[0] else old.varlen_attention_torch)(*args, **kwargs)


attention.varlen_attention_torch = varlen
torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
n_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
dtype = sys.argv[3] if len(sys.argv) > 3 else "bf16"
batch, accum = tt.RECIPE[stage]
with tempfile.TemporaryDirectory() as tmp:
    records = tt.synth_records(40, Path(tmp))[stage]
cfg = TrainConfig(stage, "unused", "unused", init_from="default", batch_size=batch, grad_accum=accum,
                  dropout=False, dtype=dtype).resolved()
model = _load_start_model(cfg, None, torch.device("cpu"), torch.bfloat16 if dtype == "bf16" else torch.float32)
prepare_adapters(model, stage, fresh_start=True, seed=0)
model.set_attention("auto")
model.decoder.train(False)
compile_layers(model, fall_back=False)
tm = Trainable(model, stage, autocast=dtype == "bf16", packed=True, matmul_attention_backward=dtype == "bf16")
if stage in ("e2e", "generator"):
    tm.cache_documents([d for r in records for d in r.docs])
print(stage, batch, accum, dtype, "threads", torch.get_num_threads(), flush=True)
speed: dict[bool, list[float]] = {False: [], True: []}
losses: dict[bool, list[list[float]]] = {False: [], True: []}
for s in range(n_steps + 1):  # step 0 warms up
    for one in ((False, True) if s % 2 else (True, False)):
        ONE_GATHER[0] = one
        (_, busy), tokens, loss = tt.one_step(tm, records, cfg, batch if s else 2, accum, s * batch * accum, True)
        if s:
            speed[one].append(tokens / busy)
            losses[one].append(loss)
    if s:
        print(s, tokens, {("one gather" if k else "per bucket"): round(v[-1]) for k, v in speed.items()},
              "losses", losses[False][-1], losses[True][-1], flush=True)
ratios = [round(a / b, 3) for a, b in zip(speed[True], speed[False], strict=True)]
print(f"per bucket: median {statistics.median(speed[False]):.0f} tok/s busy; one gather: "
      f"{statistics.median(speed[True]):.0f}; x{statistics.median(speed[True]) / statistics.median(speed[False]):.3f}; "
      f"per step {ratios}")
print("largest loss difference", max(abs(a - b) for x, y in zip(losses[False], losses[True], strict=True) for a, b in zip(x, y, strict=True)))
