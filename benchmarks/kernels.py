"""Benchmark clara_kernels against torch, or check them for correctness where no GPU exists.

On a CUDA machine: times the varlen attention kernel against SDPA on the same docs
padded to the longest (and flash-attn's varlen call when installed, and the torch
fallback), and ``cosine_topk`` against torch matmul + topk, printing TFLOP/s, GB/s
and fractions of this device's peak, where the peaks are *measured in the same run*
(a large bf16 matmul, a large device copy).

Without CUDA: runs a small correctness sweep through the Triton interpreter and says
plainly that no speed was measured.

    python benchmarks/kernels.py [--docs 256] [--memory-rows 100000] [--dim 9216]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

if __name__ == "__main__" and not torch.cuda.is_available():
    # Must be set before clara_kernels first imports a kernel (it does so lazily). Only when this
    # file runs: every script in benchmarks/ has this folder first on sys.path, so transformers'
    # optional `import kernels` (Hugging Face's hub kernels) finds this file in their processes,
    # and importing it must not switch their attention to the Triton interpreter.
    os.environ["TRITON_INTERPRET"] = "1"

import clara_kernels as ck  # noqa: E402


def time_ms(fn: Callable[[], object], reps: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn`` on the GPU, in milliseconds (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def doc_lengths(n: int, seed: int = 0) -> list[int]:
    """Chunk lengths 40-260 tokens: mostly long chunks, a tail of short ones (last chunks)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.normal(180.0, 60.0, (n,), generator=gen).round().clamp(40, 260)
    return [int(x) for x in lengths]


def measured_peaks(device: torch.device) -> tuple[float, float]:
    """(bf16 matmul TFLOP/s, copy GB/s) measured now on this device."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = time_ms(lambda: a @ b, reps=10)
    tflops = 2 * 8192**3 / ms / 1e9
    buf = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
    ms_copy = time_ms(lambda: buf.clone(), reps=10)
    gbs = 2 * buf.numel() / ms_copy / 1e6  # read + write
    return tflops, gbs


def bench_attention(device: torch.device, n_docs: int, peak_tflops: float) -> None:
    n_heads, n_kv, head_dim, dtype = 32, 8, 128, torch.bfloat16
    lengths = doc_lengths(n_docs)
    total, longest = sum(lengths), max(lengths)
    cu = ck.cu_seqlens_from_lengths(lengths, device=device)
    q = torch.randn(total, n_heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(total, n_kv, head_dim, device=device, dtype=dtype)
    v = torch.randn(total, n_kv, head_dim, device=device, dtype=dtype)

    # Useful causal work only (padding excluded), the same numerator for every method.
    flops = sum(4 * n_heads * head_dim * n * (n + 1) / 2 for n in lengths)
    bytes_moved = (2 * n_heads + 2 * n_kv) * head_dim * total * q.element_size()

    # Right padding + is_causal: real tokens never see the padding, so no mask is needed
    # and SDPA may use its fastest (flash) backend. This is the padded path's best case.
    index = torch.cat(
        [torch.arange(n, device=device) + row * longest for row, n in enumerate(lengths)]
    )

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(n_docs * longest, *x.shape[1:])
        out[index] = x
        return out.view(n_docs, longest, *x.shape[1:]).transpose(1, 2)

    qp, kp, vp = pad(q), pad(k), pad(v)

    def padded_sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)

    methods: dict[str, Callable[[], torch.Tensor]] = {
        "clara triton varlen": lambda: ck.flash_attn_varlen(q, k, v, cu, longest),
        "torch SDPA, padded to max": padded_sdpa,
        "torch fallback (SDPA per length)": lambda: ck.varlen_attention_torch(q, k, v, cu),
    }
    try:
        from flash_attn import flash_attn_varlen_func

        methods["flash-attn varlen"] = lambda: flash_attn_varlen_func(
            q, k, v, cu, cu, longest, longest, causal=True
        )
    except ImportError:
        print("  (flash-attn not installed: no flash-attn row)")

    ours = ck.flash_attn_varlen(q, k, v, cu, longest)
    ref = padded_sdpa().transpose(1, 2).reshape(n_docs * longest, n_heads, head_dim)[index]
    print(
        f"attention: {n_docs} docs, lengths {min(lengths)}-{longest} (mean {total / n_docs:.0f}), "
        f"{n_heads} heads / {n_kv} kv heads / dim {head_dim}, bf16; "
        f"max |kernel - SDPA| = {(ours.float() - ref.float()).abs().max().item():.2e}"
    )
    print(f"  {'method':36s} {'ms':>8s} {'TFLOP/s':>8s} {'%peak':>6s} {'GB/s':>7s}")
    for name, fn in methods.items():
        ms = time_ms(fn)
        tflops = flops / ms / 1e9
        print(
            f"  {name:36s} {ms:8.3f} {tflops:8.1f} {100 * tflops / peak_tflops:5.1f}% "
            f"{bytes_moved / ms / 1e6:7.0f}"
        )


def bench_cosine_topk(
    device: torch.device, rows: int, dim: int, peak_gbs: float, n_queries: int = 16, k: int = 20
) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    memory = torch.randn(rows, dim, device=device, dtype=torch.bfloat16, generator=gen)
    queries = torch.randn(n_queries, dim, device=device, dtype=torch.bfloat16, generator=gen)
    scales = memory.float().abs().amax(1) / 127
    memory_i8 = (memory.float() / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
    normalised = F.normalize(memory.float(), dim=1).to(torch.bfloat16)  # the unfused baseline

    def torch_prenormalised() -> tuple[torch.Tensor, torch.Tensor]:
        return (
            (F.normalize(queries.float(), dim=1).to(torch.bfloat16) @ normalised.T).float().topk(k)
        )

    ref_idx = ck.cosine_topk_torch(queries, memory, k)[1]
    ours_idx = ck.cosine_topk(queries, memory, k)[1]
    agree = (ours_idx == ref_idx).float().mean().item()
    print(
        f"cosine_topk: {n_queries} queries x {rows} rows x {dim} dims, k={k}; "
        f"kernel indices equal to the fp32 torch reference: {100 * agree:.1f}%"
    )
    print(f"  {'method':44s} {'ms':>8s} {'GB/s':>7s} {'%peak':>6s}")
    cases = [
        ("clara triton, bf16 memory", lambda: ck.cosine_topk(queries, memory, k), memory),
        (
            "clara triton, int8 memory + scales",
            lambda: ck.cosine_topk(queries.float(), memory_i8, k, memory_scales=scales),
            memory_i8,
        ),
        ("torch reference (fp32 chunks)", lambda: ck.cosine_topk_torch(queries, memory, k), memory),
        ("torch bf16 matmul on a pre-normalised copy", torch_prenormalised, normalised),
    ]
    for name, fn, read in cases:
        ms = time_ms(fn)
        gbs = read.numel() * read.element_size() / ms / 1e6
        print(f"  {name:44s} {ms:8.3f} {gbs:7.0f} {100 * gbs / peak_gbs:5.1f}%")


def correctness_sweep() -> bool:
    """Small shapes through the interpreter against the torch references."""
    ok = True
    gen = torch.Generator().manual_seed(0)
    lengths = [1, 23, 40, 7]
    cu = ck.cu_seqlens_from_lengths(lengths)
    print(f"attention (backend: {ck.backend('cpu')}), lengths {lengths}")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n_heads, n_kv, head_dim in [(4, 4, 64), (3, 1, 64), (4, 1, 128), (4, 2, 16)]:
            q = torch.randn(sum(lengths), n_heads, head_dim, generator=gen).to(dtype)
            k = torch.randn(sum(lengths), n_kv, head_dim, generator=gen).to(dtype)
            v = torch.randn(sum(lengths), n_kv, head_dim, generator=gen).to(dtype)
            err = (
                (ck.flash_attn_varlen(q, k, v, cu).float() - ck.attention_reference(q, k, v, cu))
                .abs()
                .max()
                .item()
            )
            tol = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
            ok &= err <= tol
            print(
                f"  {str(dtype):15s} heads {n_heads}/{n_kv} dim {head_dim:3d}: "
                f"max err {err:.1e} {'ok' if err <= tol else 'FAIL'}"
            )
    print(f"cosine_topk (backend: {ck.backend('cpu')}), 3 queries x 300 rows x 72 dims, k=8")
    queries, memory = torch.randn(3, 72, generator=gen), torch.randn(300, 72, generator=gen)
    scales = memory.abs().amax(1) / 127
    cases = {
        "fp32": (memory, None),
        "fp16": (memory.half(), None),
        "bf16": (memory.bfloat16(), None),
        "int8": ((memory / scales[:, None]).round().to(torch.int8), scales),
    }
    for name, (mem, sc) in cases.items():
        vals, idx = ck.cosine_topk(queries, mem, 8, memory_scales=sc)
        ref_vals, ref_idx = ck.cosine_topk_torch(queries, mem, 8, memory_scales=sc)
        same = torch.equal(idx, ref_idx) and (vals - ref_vals).abs().max().item() < 1e-5
        ok &= same
        print(f"  {name}: {'indices and scores match' if same else 'FAIL'}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=256, help="chunks per attention batch")
    parser.add_argument("--memory-rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=9216, help="flattened n_mem * hidden")
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("No CUDA device: correctness sweep only (Triton interpreter, small shapes).")
        ok = correctness_sweep()
        print("NO SPEED WAS MEASURED: timings need a CUDA GPU; none are reported or implied.")
        return 0 if ok else 1

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, backend: {ck.backend(device)}")
    peak_tflops, peak_gbs = measured_peaks(device)
    print(f"measured peaks: bf16 matmul {peak_tflops:.0f} TFLOP/s, copy {peak_gbs:.0f} GB/s")
    bench_attention(device, args.docs, peak_tflops)
    bench_cosine_topk(device, args.memory_rows, args.dim, peak_gbs)
    print(
        "TFLOP/s count the causal, unpadded work for every method (padding is waste, not work); "
        "attention GB/s count q, k, v, o once; cosine_topk GB/s count the memory bank once."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
