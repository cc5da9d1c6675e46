# The benchmark behind workers-*.txt. It needs `clara train --workers` (commit f3c5feb, reverted in d2a3bde):
# git worktree add /tmp/w f3c5feb && cp this file /tmp/w/benchmarks/ && cd /tmp/w && python benchmarks/train_workers.py
# (workers-balanced.txt also had micro-batches balanced by length, an uncommitted change to that commit).
"""Whole training steps of `clara train` (optimizer included) with the cores used three ways,
on the same records from the same start, in one run:

    padded     issue 12's baseline: one process, padded batches, eager (--no-pack --no-compile)
    compiled   one process of all threads, packed, compiled blocks (the default before --workers)
    workers    --workers auto: one process per core, one thread each, packed, compiled

Each path trains --steps steps of `make train-default`'s scp settings (8 examples x 2
micro-batches, no dropout, `--dtype auto`) from the shipped model; the first --warmup steps
(compilation, allocator) are left out, and tokens/s is the sum of the other steps' tokens
over the sum of their seconds (the trainer's own per-step history). The machine's matmul
peak is measured two ways between the paths: one matmul on all threads (torch's intra-op
pool, the probe of train_throughput.py) and one single-thread matmul per core at once (what
the cores can do together); the share of the peak is against the larger. On an AMX Xeon the
two differ by 2x: oneDNN runs a 1024^3 bf16 matmul on one thread of two.

    python benchmarks/train_workers.py                    # ~8 min on 2 cores
    python benchmarks/train_workers.py --steps 4 --paths compiled,workers
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch


def peak_gflops(dtype: torch.dtype, n: int, seconds: float = 3.0) -> tuple[float, float]:
    """(all threads on one matmul, one single-thread matmul per thread at once) GFLOP/s.

    The probe that became benchmarks/train_throughput.py's `matmul_gflops` (19b5af7), which is
    what to call today; kept as it ran, since this script runs on f3c5feb, which predates it."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b

    def run(out: list, i: int) -> None:
        k, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            a @ b
            k += 1
        out[i] = 2 * n**3 * k / (time.perf_counter() - t) / 1e9

    threads = torch.get_num_threads()
    pooled = [0.0]
    run(pooled, 0)
    torch.set_num_threads(1)  # torch releases the GIL in matmuls: Python threads run them side by side
    per_core = [0.0] * threads
    workers = [threading.Thread(target=run, args=(per_core, i)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    torch.set_num_threads(threads)
    return pooled[0], sum(per_core)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paths", default="padded,compiled,workers")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per path")
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the figures")
    ap.add_argument("--docs", type=int, default=40, help="Wikipedia paragraphs to synthesize records from")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--peak-n", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the run (default: torch's)")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must be larger than --warmup")
    if args.threads:
        torch.set_num_threads(args.threads)

    from clara_cli.checkpoint import load_model
    from clara_cli.model import cpu_name, resolve_dtype
    from clara_cli.synth import SynthConfig, docs_from_wiki, synthesize
    from clara_cli.train import TrainConfig, train

    dtype = resolve_dtype(args.dtype)
    dname = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    tag = f"[{cpu_name()}, {dname}]"
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; dtype {dname}; torch {torch.__version__}", flush=True)
    settings = {"padded": {"pack": False, "compile": False, "workers": 1},
                "compiled": {"pack": True, "compile": True, "workers": 1},
                "workers": {"pack": True, "compile": True, "workers": 0}}
    paths = args.paths.split(",")
    rates, losses, peaks = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(docs_from_wiki("train")[:args.docs], Path(tmp), SynthConfig(seed=0), source="benchmark",
                   progress=False)
        for name in paths:
            peaks.append(peak_gflops(dtype, args.peak_n))
            print(f"  matmul {args.peak_n}^3 {dname}: {peaks[-1][0]:.0f} GFLOP/s on all threads, "
                  f"{peaks[-1][1]:.0f} one per core", flush=True)
            cfg = TrainConfig("scp", str(Path(tmp) / "pretrain.jsonl"), str(Path(tmp) / name), init_from="default",
                              steps=args.steps, batch_size=8, grad_accum=2, dropout=False, dtype=args.dtype,
                              save_every=10_000, seed=0, **settings[name])
            result = train(cfg, progress=False)
            kept = result.history[args.warmup:]
            rates[name] = sum(h["tokens"] for h in kept) / sum(h["seconds"] for h in kept)
            losses[name] = [h["loss"] for h in result.history]
            print(f"  {name}: steps {[h['seconds'] for h in result.history]} s, "
                  f"losses {losses[name]}", flush=True)
        model = load_model(result.out, device="cpu", dtype=dname)
        body = 4 * sum(p.numel() for n, p in model.decoder.get_decoder().named_parameters()
                       if "embed_tokens" not in n and "lora_" not in n)  # FLOPs per token: forward 2N, backward 2N
    peaks.append(peak_gflops(dtype, args.peak_n))
    pooled = max(p[0] for p in peaks)
    together = max(p[1] for p in peaks)
    print(f"peak: {pooled:.0f} GFLOP/s on all threads, {together:.0f} one matmul per core  {tag}")
    for name in paths:
        rate = rates[name]
        print(f"scp {name:9s} {rate:6.0f} tokens/s  {100 * body * rate / 1e9 / max(pooled, together):5.1f}% of "
              f"the cores' {dname} matmul peak ({max(pooled, together):.0f} GFLOP/s); "
              f"{100 * body * rate / 1e9 / pooled:5.1f}% of the all-threads probe  {tag}")
    for name in paths[1:]:
        print(f"scp {name} / {paths[0]}  {rates[name] / rates[paths[0]]:.2f}x  {tag}")
    for name in paths[1:]:
        diff = max(abs(a - b) for a, b in zip(losses[paths[0]], losses[name], strict=True))
        print(f"scp max loss difference {paths[0]} vs {name}: {diff:.2e} over {args.steps} steps")
    print(f"(tokens: non-pad tokens through compressor + generator; FLOPs {body / 1e6:.1f} M per token, "
          "LM head and LoRA not counted)")


if __name__ == "__main__":
    main()
