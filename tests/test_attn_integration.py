"""The compressor on clara_kernels' varlen attention (packed batches) equals the SDPA path.

On CPU the Triton kernel runs in the interpreter. TRITON_INTERPRET must be set before
triton.language is first imported (transformers' Llama imports it), so the check runs
in a fresh subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from clara_kernels import dispatch

from clara_cli.checkpoint import load_model

SCRIPT = r"""
import json, sys, torch
from clara_kernels import dispatch
from clara_cli.checkpoint import load_model
texts = ["Short.", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
         "Ada Lovelace wrote what is often called the first computer program."]
model = load_model(sys.argv[1], device="cpu", dtype="fp32", attn="sdpa")
reference, q_ref = model.compress(texts, merged=False), model.encode_queries(["Where is the tower?"])
model.set_attention("triton")
packed = model.compress(texts, merged=False)
queries = model.encode_queries(["Where is the tower?"])
print(json.dumps({"backend": dispatch.backend("cpu"), "attn": model.attn,
                  "implementation": model.decoder.config._attn_implementation,
                  "memory_diff": (packed - reference).abs().max().item(),
                  "query_diff": (queries - q_ref).abs().max().item()}))
"""


@pytest.mark.skipif(not dispatch.triton_available(), reason="triton not installed")
def test_packed_triton_compress_equals_sdpa(tiny_model_dir):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop(dispatch.FORCE_ENV, None)
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_dir)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["backend"] == "interpreter" and out["attn"] == "triton"
    assert out["implementation"] != "sdpa"
    assert out["memory_diff"] <= 1e-4 and out["query_diff"] <= 1e-4


def test_auto_picks_sdpa_without_cuda(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    assert model.attn == ("triton" if torch.cuda.is_available() else "sdpa")


def test_mask_hook_takes_both_transformers_conventions():
    """transformers 4.x passes the query positions as cache_position, 5.x as q_length / q_offset:
    without a cache the varlen path gets no 4-D mask either way (the lent GPU's image has 5.x)."""
    from clara_kernels.hf import clara_attention_mask

    pad = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    by_cache = clara_attention_mask(2, cache_position=torch.arange(4), kv_length=4, attention_mask=pad)
    by_length = clara_attention_mask(2, kv_length=4, attention_mask=pad, q_length=4, q_offset=0)
    assert torch.equal(by_cache, pad.bool()) and torch.equal(by_length, pad.bool())
    assert clara_attention_mask(2, kv_length=4, q_length=4) is None
