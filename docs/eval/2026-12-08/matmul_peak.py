"""A square 1024^3 matmul in fp32 and bf16 on 2 threads, GFLOP/s: the CPU as it is, and under the ISA
caps that stand in for an AVX2-only CPU (docs/TRAINING.md, "The trainer on the other two kinds of CPU").

    python docs/eval/2026-12-08/matmul_peak.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python docs/eval/2026-12-08/matmul_peak.py
"""
import time

import torch

from clara_cli.model import cpu_name

torch.set_num_threads(2)
print(f"[{cpu_name()}, torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}]")
for dt, n in ((torch.float32, 10), (torch.bfloat16, 3)):
    a, b = torch.randn(1024, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(n):
        a @ b
    print(f"{dt}: {2 * 1024 ** 3 / ((time.perf_counter() - t) / n) / 1e9:.1f} GFLOP/s")
