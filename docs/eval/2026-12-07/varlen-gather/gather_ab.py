"""A/B: the trainer's step (packed, compiled blocks, one pass, matmul attention backward in bf16)
with the varlen attention's old per-bucket gather and scatter (commit 0c83b87's
kernels/reference.py) against one gather and one scatter for all buckets. Steps interleaved,
order alternating; busy tokens/s per step and the loss of each micro-batch.

    LD_PRELOAD=<jemalloc> MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0 \\
        python docs/eval/2026-12-07/varlen-gather/gather_ab.py scp 6 [bf16|fp32]
"""

import subprocess
import sys
import types
from pathlib import Path

import clara_kernels.attention as attention
import clara_kernels.reference as reference
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ab_steps import compiled_trainer, interleave  # noqa: E402

ROOT = Path(__file__).resolve().parents[4]
old = types.ModuleType("reference_0c83b87")
exec(subprocess.run(["git", "-C", str(ROOT), "show", "0c83b87:kernels/reference.py"], capture_output=True,
                    text=True, check=True).stdout, old.__dict__)
old._MATMUL_BACKWARD = reference._MATMUL_BACKWARD  # the trainer's switch reaches both
NEW = reference.varlen_attention_torch
ONE_GATHER = [True]


def varlen(*args, **kwargs):
    return (NEW if ONE_GATHER[0] else old.varlen_attention_torch)(*args, **kwargs)


def switch(on: bool) -> None:
    ONE_GATHER[0] = on


attention.varlen_attention_torch = varlen
torch.set_num_threads(2)
tm, records, cfg = compiled_trainer(sys.argv[1] if len(sys.argv) > 1 else "scp", sys.argv[3] if len(sys.argv) > 3 else "bf16")
interleave(tm, records, cfg, switch, ("per bucket", "one gather"), int(sys.argv[2]) if len(sys.argv) > 2 else 4)
