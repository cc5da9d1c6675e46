"""The LoRA side paths' thin products alone, warm in the cache, at the scp step's shapes
(compressor 3,380 rows, generator 2,002 rows; r 16; bf16, 2 threads): ms per product, and
their sum over one step's 30 layers x 7 linear layers x 2 passes, peft's six products per
linear against the merged path's four, to set beside the step's profile (profile-scp-*.txt).

    python docs/eval/2026-12-07/lora-merged-thin/thin_products.py
"""

import time

import torch

torch.set_num_threads(2)
DT = torch.bfloat16
LINEARS = {"q": (576, 576), "k": (576, 192), "v": (576, 192), "o": (576, 576),
           "gate": (576, 1536), "up": (576, 1536), "down": (1536, 576)}
PEFT = ("x A^T", "(x A^T) B^T", "dy B", "dy^T xa", "dxa^T x", "dxa A")
MERGED = ("x A^T", "dy B", "dy^T xa", "dxa^T x")


def ms(f, n: int = 30) -> float:
    f()
    f()
    start = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - start) / n * 1e3


def products(rows: int, fan_in: int, fan_out: int) -> dict[str, float]:
    x, dy = torch.randn(rows, fan_in).to(DT), torch.randn(rows, fan_out).to(DT)
    a, b = torch.randn(16, fan_in).to(DT), torch.randn(fan_out, 16).to(DT)
    xa, dxa = x @ a.T, dy @ b
    return {"x A^T": ms(lambda: x @ a.T), "(x A^T) B^T": ms(lambda: xa @ b.T), "dy B": ms(lambda: dy @ b),
            "dy^T xa": ms(lambda: dy.T @ xa), "dxa^T x": ms(lambda: dxa.T @ x), "dxa A": ms(lambda: dxa @ a)}


total = {"peft": 0.0, "merged": 0.0}
for rows in (3380, 2002):
    for name, (fan_in, fan_out) in LINEARS.items():
        t = products(rows, fan_in, fan_out)
        print(f"{rows} rows, {name} {fan_in}->{fan_out}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in t.items()))
        total["peft"] += 30 * sum(t[k] for k in PEFT)
        total["merged"] += 30 * sum(t[k] for k in MERGED)
print(f"one scp step's thin products alone [{torch.get_num_threads()} threads, bf16]: "
      f"peft {total['peft'] / 1e3:.2f} s, merged {total['merged'] / 1e3:.2f} s")
