"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16)
with the LM head's loss over the whole [targets x vocabulary] logits (commit 75d1c8b's
`Trainable.logits` + F.cross_entropy per group) against `head_group_losses` (chunks of rows,
gradients computed on the way). Steps interleaved, order alternating; busy tokens/s per step and
the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/head-loss/head_ab.py scp 6
"""

import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "benchmarks"))
import train_throughput as tt  # noqa: E402

from clara_cli.train.loop import TrainConfig, _load_start_model  # noqa: E402
from clara_cli.train.stages import Trainable, compile_layers, prepare_adapters  # noqa: E402

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


Trainable.head_losses = head_losses
torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
n_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 4
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
if stage in ("e2e", "generator"):
    tm.cache_documents([d for r in records for d in r.docs])
print(stage, batch, accum, "bf16 threads", torch.get_num_threads(), flush=True)
speed: dict[bool, list[float]] = {False: [], True: []}
losses: dict[bool, list[list[float]]] = {False: [], True: []}
for s in range(n_steps + 1):  # step 0 warms up
    for chunked in ((False, True) if s % 2 else (True, False)):
        CHUNKED[0] = chunked
        (_, busy), tokens, loss = tt.one_step(tm, records, cfg, batch if s else 2, accum, s * batch * accum, True)
        if s:
            speed[chunked].append(tokens / busy)
            losses[chunked].append(loss)
    if s:
        print(s, tokens, {("chunked" if k else "whole"): round(v[-1]) for k, v in speed.items()},
              "losses", losses[False][-1], losses[True][-1], flush=True)
ratios = [round(a / b, 3) for a, b in zip(speed[True], speed[False], strict=True)]
print(f"whole: median {statistics.median(speed[False]):.0f} tok/s busy; chunked: {statistics.median(speed[True]):.0f}; "
      f"x{statistics.median(speed[True]) / statistics.median(speed[False]):.3f}; per step {ratios}")
print("largest loss difference", max(abs(a - b) for x, y in zip(losses[False], losses[True], strict=True) for a, b in zip(x, y, strict=True)))
