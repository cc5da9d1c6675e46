"""A base LM folder of another's shape with random weights (seed 0), for timing where the real
weights cannot be brought: the lent GPU machine receives at most 64 MiB with the working tree, and
the default base's GGUF alone is 98 MB (scripts/gpu_check.sh). Same config, same tokenizer files,
so every matmul, attention call and token count is the real model's; only the values differ.

    python scripts/random_base.py SRC_DIR DST_DIR    # SRC_DIR: config.json + tokenizer files
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch


def random_base(src: Path, dst: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.bfloat16)
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors", "clara_source.json") and not (dst / f.name).exists():
            shutil.copy(f, dst / f.name)
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(random_base(Path(sys.argv[1]), Path(sys.argv[2])))
