"""head_group_losses alone at an scp step's shapes (2,362 target rows, hidden 576, vocabulary
49,171, bf16, <MEM*> rows trained), forward + backward, against the whole-logits path, for
several CHUNK_ROWS; median of 5 after a warm-up.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/head-loss/chunk_rows.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

from clara_cli.model import cpu_name
from clara_cli.train import head_loss

torch.set_num_threads(2)
T, H, V, lo, n_mem, counts = 2362, 576, 49171, 49152, 16, [1200, 1162]
g = torch.Generator().manual_seed(0)
h0 = torch.randn(T, H, generator=g).bfloat16()
head = (torch.randn(V, H, generator=g) * 0.05).bfloat16()
rows0 = torch.randn(n_mem, H, generator=g) * 0.05
labels = torch.randint(0, V - n_mem, (T,), generator=g)


def whole(h, rows):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = F.linear(h, head)
    mem = h @ rows.to(h.dtype).T
    out = torch.cat([out[:, :lo], mem.to(out.dtype), out[:, lo + n_mem:]], dim=1)
    per_token = F.cross_entropy(out.float(), labels, reduction="none")
    return torch.stack([p.mean() for p in per_token.split(counts)])


def chunked(h, rows):
    return head_loss.head_group_losses(h, head, labels, counts, rows, lo, dtype=torch.bfloat16)


def timed(fn):
    times = []
    for _ in range(6):
        h, rows = h0.clone().requires_grad_(), rows0.clone().requires_grad_()
        t = time.perf_counter()
        fn(h, rows).mean().backward()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1e3


print(f"{cpu_name()}, 2 threads, bf16; {T} x {V} logits")
print(f"whole logits: {timed(whole):.0f} ms")
for rows in (64, 128, 256, 512, 1024):
    head_loss.CHUNK_ROWS = rows
    print(f"chunked, {rows} rows: {timed(chunked):.0f} ms")
