"""A/B of the four combinations of one pass per step and the matmul attention backward on one
compiled model (packed, bf16 autocast, or fp32 with a third argument "fp32"), steps interleaved with the order alternating; busy
tokens/s per step and the ratio to the compiled per-micro-batch path with flash's backward.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/throughput/one_pass_ab.py scp 6     # one_pass_ab.txt
        python docs/eval/2026-12-07/throughput/one_pass_ab.py scp 3 fp32   # one_pass_ab-fp32.txt
"""

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_model, tt  # noqa: E402  (the benchmark's records and step)

from clara_cli.train.stages import Trainable  # noqa: E402

torch.set_num_threads(2)
stage = sys.argv[1] if len(sys.argv) > 1 else "scp"
n_steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6
dtype = sys.argv[3] if len(sys.argv) > 3 else "bf16"
model, records, cfg = compiled_model(stage, dtype)
batch, accum = cfg.batch_size, cfg.grad_accum
variants = {(one_pass, matmul): Trainable(model, stage, autocast=dtype == "bf16", packed=True, matmul_attention_backward=matmul)
            for one_pass in (False, True) for matmul in (False, True)}


def name(key: tuple[bool, bool]) -> str:
    return f"{'one' if key[0] else 'per'}-{'mat' if key[1] else 'flash'}"


speed: dict[tuple[bool, bool], list[float]] = {k: [] for k in variants}
for s in range(n_steps + 1):  # step 0 warms up
    for key in (list(variants) if s % 2 else list(variants)[::-1]):
        (_, busy), tokens, _ = tt.one_step(variants[key], records, cfg, batch if s else 2, accum,
                                           s * batch * accum, key[0])
        if s:
            speed[key].append(tokens / busy)
    print(s, {name(k): round(v[-1]) for k, v in speed.items() if v}, flush=True)
base = speed[(False, False)]
for key, v in speed.items():
    ratios = [round(a / b, 3) for a, b in zip(v, base, strict=True)]
    print(f"{name(key)}: median {statistics.median(v):.0f} tok/s busy, x{statistics.median(v) / statistics.median(base):.3f}; "
          f"per step ratio vs per-flash: {ratios}")
