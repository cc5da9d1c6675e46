"""Causal GQA attention on a CPU, forward + backward at the packed training step's bucket shapes
(9 query / 3 kv heads, head dim 64, bf16): SDPA (flash forward and backward) against SDPA's
forward with clara_kernels' compiled matmul backward (`matmul_attention_backward`).
Medians of 10 after 3 warm-ups (the first compiles).

    python docs/eval/2026-12-07/throughput/attention_backward.py --threads 2
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from clara_kernels.reference import _FlashMatmulBackward

from clara_cli.model import cpu_name

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def matmul_backward(q, k, v):
    return _FlashMatmulBackward.apply(q, k, v, 1 / 8)


def time_it(fn, batch, length):
    q = torch.randn(batch, 9, length, 64, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(batch, 3, length, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    grad = torch.randn(batch, 9, length, 64, dtype=torch.bfloat16)
    fwd, bwd = [], []
    for i in range(13):
        t0 = time.perf_counter()
        out = fn(q, k, v)
        t1 = time.perf_counter()
        out.backward(grad)
        t2 = time.perf_counter()
        if i >= 3:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return 1e3 * statistics.median(fwd), 1e3 * statistics.median(bwd)


print(f"[{cpu_name()}, bf16, {args.threads} threads, torch {torch.__version__}]")
print("sequences x tokens | SDPA fwd / bwd ms | matmul backward: fwd / bwd ms | backward speed-up")
for batch, length in [(4, 128), (4, 192), (2, 256), (3, 320), (2, 384), (1, 448), (1, 640)]:
    a, b = time_it(sdpa, batch, length), time_it(matmul_backward, batch, length)
    print(f"{batch} x {length} | {a[0]:.1f} / {a[1]:.1f} | {b[0]:.1f} / {b[1]:.1f} | {a[1] / b[1]:.2f}x")
