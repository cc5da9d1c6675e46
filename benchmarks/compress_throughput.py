"""Compressor throughput: clara's path vs the straightforward path, same model, precision and run.

(a) clara: length-sorted batches padded dynamically, body only (no LM head, no per-layer
    hidden states), LoRA merged into the weights, inference mode.
(b) straightforward: every document padded to doc_max_length+3, the full causal LM with
    all hidden states, LoRA as side paths (what the reference implementation does).

Prints docs/s and tokens/s of each, the ratio, achieved GFLOP/s against bf16 and fp32
matmul peaks measured in this run, and the max difference between (a) and (b).

    python benchmarks/compress_throughput.py --docs 256 --dtype bf16
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

from clara_cli.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import matmul_gflops  # noqa: E402  (one peak probe for the benchmarks)


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """The larger of one matmul on all threads and one single-thread matmul per thread side by
    side (train_throughput.py's probe: on an AMX Xeon, oneDNN runs some square products on one
    thread of two, and the first way alone halves the peak)."""
    return max(matmul_gflops(dtype, n))


def forward_flops(model, padded_len: list[int]) -> float:
    """Matmul FLOPs of the body over the computed (padded) tokens: 2*params per token + attention."""
    cfg = model.decoder.config
    body = sum(p.numel() for n, p in model.decoder.get_decoder().named_parameters()
               if "embed_tokens" not in n and "lora_" not in n)
    tokens = sum(padded_len)
    attn = sum(4 * cfg.num_hidden_layers * cfg.hidden_size * L * L for L in padded_len)  # QK^T and PV
    return 2.0 * body * tokens + attn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from clara_cli.corpora import wiki_paragraphs

    texts = [p["text"] for p in itertools.islice(wiki_paragraphs("train"), args.docs)]
    model = load_model(None, device="cpu", dtype=args.dtype)
    dtype = model.dtype
    rows = model.encoder_token_ids(texts)
    n_real = sum(len(r) for r in rows)
    print(f"model: SmolLM2-135M-Instruct (default base), {dtype}, {torch.get_num_threads()} threads")
    print(f"docs: {len(texts)} Wikipedia paragraphs, {n_real} compressor tokens "
          f"(mean {n_real / len(texts):.1f} incl. {model.config.n_mem} memory tokens)")

    peak_bf16, peak_fp32 = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"matmul peak (2048^3, this run, train_throughput.py's probe): bf16 {peak_bf16:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s")

    # Warm up both paths (and build the merged copy), then alternate their batches so that both
    # see the same machine: on a shared CPU, two back-to-back phases would not.
    model.compress(texts[: args.batch_size], batch_size=args.batch_size, merged=True)
    model.compress_reference(texts[:4])
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))  # what compress() does inside
    fast = torch.empty(len(texts), model.config.n_mem, model.hidden_size)
    ref = torch.empty_like(fast)
    t_fast = t_ref = 0.0
    for s in range(0, len(texts), args.batch_size):
        a_idx, b_idx = order[s:s + args.batch_size], list(range(s, min(s + args.batch_size, len(texts))))
        t0 = time.perf_counter()
        fast[a_idx] = model.compress([texts[i] for i in a_idx], batch_size=args.batch_size, merged=True)
        t1 = time.perf_counter()
        ref[b_idx] = model.compress_reference([texts[i] for i in b_idx])
        t_fast, t_ref = t_fast + t1 - t0, t_ref + time.perf_counter() - t1
    fast_lens = [len(rows[order[s]]) for s in range(0, len(order), args.batch_size)
                 for _ in order[s:s + args.batch_size]]
    flops_fast = forward_flops(model, fast_lens)
    fixed = model.config.doc_max_length + 3 + model.config.n_mem
    cfg = model.decoder.config
    flops_ref = forward_flops(model, [fixed] * len(rows)) + 2.0 * cfg.vocab_size * cfg.hidden_size * fixed * len(rows)

    peak = peak_bf16 if dtype == torch.bfloat16 else peak_fp32
    for name, t, flops in (("(a) clara", t_fast, flops_fast), ("(b) straightforward", t_ref, flops_ref)):
        gf = flops / t / 1e9
        print(f"{name:22s} {t:7.2f} s  {len(texts) / t:7.1f} docs/s  {n_real / t:8.0f} tokens/s  "
              f"{gf:6.0f} GFLOP/s = {100 * gf / peak:4.1f}% of the {str(dtype)[6:]} matmul peak "
              f"({100 * gf / peak_bf16:4.1f}% of bf16 peak)")
    diff = (fast - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    cos = torch.nn.functional.cosine_similarity(fast.reshape(len(texts), -1), ref.reshape(len(texts), -1))
    print(f"speed-up (a)/(b): {t_ref / t_fast:.2f}x   max |a-b| = {diff:.3g} (relative to max |b|: {rel:.2g}), "
          f"min cosine(a, b) per document = {cos.min().item():.5f}")


if __name__ == "__main__":
    main()
