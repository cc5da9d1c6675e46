"""Training throughput: tokens/s of the training step of each stage: the padded path (the
baseline), packed micro-batches, packed micro-batches through compiled decoder blocks, and
what `clara train` runs on a CPU now ("trainer": compiled blocks, attention's backward as
compiled matmuls, LoRA linears merged into their weights with the merges of every step timed,
and for every stage but retrieval a step's micro-batches in one pass, `--one-pass`).

The settings are those of `make train-default`: scp and e2e micro-batches of 8 with 2
accumulated, instruct micro-batches of 4 with 4 accumulated, no LoRA dropout, the default
base (SmolLM2-135M-Instruct) in the dtype `--dtype auto` picks (bf16 autocast with fp32
LoRA masters on an AMX / avx512_bf16 CPU). Records are a few dozen Wikipedia training
paragraphs through `clara synth`'s code.

Each stage runs every path on the same micro-batches, interleaved (baseline step, packed
step, compiled step, trainer step, matmul probe, ...), because a shared machine's speed
drifts: the ratio and the fraction of peak are measured against neighbours in time. The
unit is one optimizer step's forward + backward of its grad-accum micro-batches, as the
trainer runs them (the optimizer update, ~1% of a step, is left out so every path sees the
same weights and must give the same loss for each micro-batch). Figures are medians per token.

    busy vs wall      busy = process CPU time / threads: what a machine with the cores to
                      itself would take; wall = what this (shared) machine took. Both ratios
                      are printed; on a loaded machine the busy figures are the stable ones.
    FLOPs per token   4 x body parameters (forward 2N, backward to the inputs 2N; the
                      frozen base needs no weight gradients), LM head and LoRA not counted
    peak              a square bf16 (or fp32) matmul of size --peak-n, measured two ways: one
                      matmul on all threads (torch's intra-op pool) and one single-thread matmul
                      per thread at once (Python threads); the larger is the peak. On an AMX
                      Xeon they differ by 2x: oneDNN runs a 1024^3 bf16 matmul on one thread of
                      two, so the first way halves the peak (docs/TRAINING.md)

    make bench-train                                      # all stages, with the trainer's allocator
    python benchmarks/train_throughput.py                 # all stages, ~3-5 min on 2 busy cores
    python benchmarks/train_throughput.py --stages scp --steps 1
    python benchmarks/train_throughput.py --stages scp --threads 1 --warmup-batch 2   # docs/TRAINING.md
    python benchmarks/train_throughput.py --device cuda --base-model DIR --no-baseline  # a GPU (scripts/gpu_check.sh)

On CUDA the clock synchronizes the device before each reading, the peak probe is one bf16 matmul
of --peak-n (8192 there by default), busy time is the wall time, and the compiled path is left
out unless --compile-on-cuda (unmeasured there); the trainer path there is packed with one pass per
step, LoRA linears fused and attention on PyTorch's flash varlen kernel, as `clara train` runs on
CUDA (docs/TRAINING.md, "The host's share of a GPU step"). --base-model DIR puts the default model's adapters
on another base folder of the same shape (e.g. random weights: scripts/random_base.py), which
times the same computation where the real base cannot be brought.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

# (batch size, grad accum) per stage: make train-default's; generator: make train-written's
RECIPE = {"scp": (8, 2), "instruct": (4, 4), "e2e": (8, 2), "generator": (8, 2)}
FILES = {"scp": "pretrain.jsonl", "instruct": "instruct.jsonl", "e2e": "e2e.jsonl", "generator": "instruct.jsonl"}


class Clock:
    """Wall seconds and busy seconds (process CPU time / threads: the wall time the same work
    would take with the threads' cores to itself, which a shared machine's wall clock is not).
    On CUDA both are the wall time after the device has finished."""

    cuda = False

    def __init__(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize()
            wall = time.perf_counter() - self.wall
            return wall, wall
        return time.perf_counter() - self.wall, (time.process_time() - self.cpu) / torch.get_num_threads()


def cuda_matmul_gflops(dtype: torch.dtype, n: int, seconds: float = 2.0) -> tuple[float, float]:
    """GFLOP/s of n x n @ n x n matmuls in `dtype` on the GPU (twice, the shape of matmul_gflops)."""
    a, b = torch.randn(n, n, device="cuda", dtype=dtype), torch.randn(n, n, device="cuda", dtype=dtype)
    a @ b
    torch.cuda.synchronize()
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        k += 1
        if k % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    g = 2 * n**3 * k / (time.perf_counter() - t) / 1e9
    return g, g


def matmul_gflops(dtype: torch.dtype, n: int, seconds: float = 2.0) -> tuple[float, float]:
    """GFLOP/s of n x n @ n x n matmuls in `dtype`, wall: (one matmul on all threads, one
    single-thread matmul per thread side by side). The larger is this machine's practical peak."""
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
    torch.set_num_threads(1)  # matmuls release the GIL: Python threads run one per core at once
    each = [0.0] * threads
    side_by_side = [threading.Thread(target=run, args=(each, i)) for i in range(threads)]
    for t in side_by_side:
        t.start()
    for t in side_by_side:
        t.join()
    torch.set_num_threads(threads)
    return pooled[0], sum(each)


def synth_records(n_docs: int, out: Path) -> dict[str, list]:
    """Training records of every stage from the first n_docs training paragraphs."""
    from clara_cli.synth import SynthConfig, docs_from_wiki, synthesize
    from clara_cli.train.data import read_records

    docs = docs_from_wiki("train")[:n_docs]
    synthesize(docs, out, SynthConfig(seed=0), source="benchmark", progress=False)
    return {stage: read_records(out / name, stage) for stage, name in FILES.items()}


def one_step(tm, records, cfg, batch: int, accum: int, offset: int, one_pass: bool
             ) -> tuple[tuple[float, float], int, list[float]]:
    """Forward + backward of one optimizer step's `accum` micro-batches, as the trainer runs
    them: one by one (loss / accum each), or in one pass (`--one-pass`);
    ((wall, busy) seconds, tokens, loss of each micro-batch)."""
    groups = []
    for g in range(accum):
        idx = [(offset + g * batch + j) % len(records) for j in range(batch)]
        groups.append(([records[i] for i in idx], [(0, i) for i in idx]))
    if tm.merged_lora is not None:  # the trainer merges A and B again after each optimizer step
        tm.merged_lora.forget()
    clock = Clock()
    stats = tm.backward_step(groups, cfg, one_pass)
    seconds = clock.read()
    for p in tm.parameters():
        p.grad = None
    return seconds, sum(st.tokens for st in stats), [st.loss for st in stats]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="scp,instruct,e2e")
    ap.add_argument("--steps", type=int, default=2,
                    help="measured optimizer steps (grad-accum micro-batches each) per path and stage, after one warm-up")
    ap.add_argument("--docs", type=int, default=40, help="Wikipedia paragraphs to synthesize records from")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--peak-n", type=int, default=None, help="matmul probe size (1024 on a CPU, 8192 on a GPU)")
    ap.add_argument("--warmup-batch", type=int, default=None,
                    help="examples in the warm-up step's micro-batches (default: the recipe's; smaller is quicker)")
    ap.add_argument("--no-baseline", action="store_true", help="leave the padded path out")
    ap.add_argument("--no-compile", action="store_true", help="leave the compiled path out")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--base-model", default=None,
                    help="a base folder of the default base's shape to put the default adapters on")
    ap.add_argument("--compile-on-cuda", action="store_true", help="measure compiled blocks on CUDA too")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). 1 keeps a loaded machine's busy time honest: "
                         "no thread spins at a barrier waiting for a descheduled sibling")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from clara_cli.model import cpu_name, resolve_dtype
    from clara_cli.train.allocator import allocator
    from clara_cli.train.loop import TrainConfig, _load_start_model
    from clara_cli.train.stages import (
        ONE_PASS_STAGES,
        Trainable,
        compile_layers,
        prepare_adapters,
        trainer_speedups,
    )

    device = torch.device(args.device)
    Clock.cuda = device.type == "cuda"
    if Clock.cuda and not args.compile_on_cuda:
        args.no_compile = True
    args.peak_n = args.peak_n or (8192 if Clock.cuda else 1024)
    probe = cuda_matmul_gflops if Clock.cuda else matmul_gflops
    dtype = resolve_dtype(args.dtype, device)
    dname = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}[dtype]
    machine = torch.cuda.get_device_name(0) if Clock.cuda else cpu_name()
    if Clock.cuda:
        print(f"GPU: {machine}; CPU: {cpu_name()}")
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; dtype {dname}"
          f"{' (autocast, fp32 LoRA masters)' if dtype != torch.float32 else ''}; torch {torch.__version__}; "
          f"allocator: {allocator()}")
    with tempfile.TemporaryDirectory() as tmp:
        records = synth_records(args.docs, Path(tmp))
    print("records: " + ", ".join(f"{s} {len(r)}" for s, r in records.items()))

    model = None
    rows = []
    for stage in args.stages.split(","):
        batch, accum = RECIPE[stage]
        cfg = TrainConfig(stage, "unused", "unused", init_from="default", base_model=args.base_model,
                          batch_size=batch, grad_accum=accum, dropout=False, dtype=dname).resolved()

        def fresh_model(cfg=cfg, stage=stage):
            model = _load_start_model(cfg, None, torch.device("cpu"), dtype)
            prepare_adapters(model, stage, fresh_start=True, seed=0)  # the same start for every path
            model.decoder.to(device)
            model.set_attention("auto")  # as the trainer: Triton varlen attention for CUDA inference passes
            model.decoder.train(False)
            return model

        model = fresh_model()
        body = sum(p.numel() for n, p in model.decoder.get_decoder().named_parameters()
                   if "embed_tokens" not in n and "lora_" not in n)
        paths = {"packed": Trainable(model, stage, autocast=dtype != torch.float32, packed=True)}
        if not args.no_baseline:
            paths = {"baseline": Trainable(model, stage, autocast=dtype != torch.float32, packed=False), **paths}
        one_pass = {"trainer"} if stage in ONE_PASS_STAGES else set()  # paths that run a step in one pass
        if not args.no_compile:  # its own copy of the model: compiling changes the blocks in place
            compiled = fresh_model()
            compile_layers(compiled, fall_back=False)
            paths["compiled"] = Trainable(compiled, stage, autocast=dtype != torch.float32, packed=True)
        # what `clara train` runs: (every stage but retrieval) a step's micro-batches in one pass;
        # on a CPU also compiled blocks, and in bf16 the matmul attention backward (on CUDA: not compiled)
        cpu_compiled = device.type == "cpu" and not args.no_compile
        if stage in ONE_PASS_STAGES or cpu_compiled:  # else it is the packed path again
            base = compiled if cpu_compiled else model
            paths["trainer"] = Trainable(base, stage, autocast=dtype != torch.float32, packed=True,
                                         **trainer_speedups(base, device, dtype, cpu_compiled))
        if stage in ("e2e", "generator"):  # the frozen memories are built once per run, outside the steps
            docs = [d for r in records[stage] for d in r.docs]
            cache = None
            for tm in paths.values():
                if cache is None:
                    tm.cache_documents(docs)
                    cache = tm.doc_cache
                tm.doc_cache = cache
        recs = records[stage]
        per_token: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}  # (wall, busy) s/token
        losses: dict[str, list[float]] = {k: [] for k in paths}
        peaks: list[tuple[float, float]] = []
        for s in range(args.steps + 1):  # step 0 warms up (code paths, compiling, allocator)
            size = batch if s else (args.warmup_batch or batch)
            for name, tm in paths.items():
                (wall, busy), tok, loss = one_step(tm, recs, cfg, size, accum, s * batch * accum, name in one_pass)
                if s:
                    per_token[name].append((wall / tok, busy / tok))
                    losses[name] += loss
                print(f"  {stage} {name} step {s}{' (warm-up)' if not s else ''}: {accum} x {size} examples"
                      f"{' in one pass' if name in one_pass else ''}, {tok} tokens, {wall:.1f} s wall, "
                      f"{busy:.1f} s busy, losses {' '.join(f'{x:.5f}' for x in loss)}", flush=True)
            if s:
                peaks.append(probe(dtype, args.peak_n))
                print(f"  matmul {args.peak_n}^3 {dname}: {peaks[-1][0]:.0f} GFLOP/s on all threads, "
                      f"{peaks[-1][1]:.0f} one per thread side by side", flush=True)
        line = {}
        first, others = next(iter(paths)), list(paths)[1:]  # ratios against the first path measured
        peak = statistics.median(max(p) for p in peaks)
        for clock, i in (("busy", 1), ("wall", 0)):
            for name in paths:
                tps = 1 / statistics.median(t[i] for t in per_token[name])
                line[name, clock] = tps
                frac = 4 * body * tps / 1e9 / peak
                print(f"{stage:9s} {name:9s} {clock}  {tps:7.0f} tokens/s  {100 * frac:5.1f}% of the {dname} "
                      f"matmul peak ({peak:.0f} GFLOP/s, n={args.peak_n})  [{machine}, {dname}]")
            for name in others:
                print(f"{stage:9s} {name} / {first}  {clock}  {line[name, clock] / line[first, clock]:.2f}x")
        for name in others:
            diff = max(abs(a - b) for a, b in zip(losses[first], losses[name], strict=True))
            print(f"{stage:9s} max loss difference {first} vs {name} {diff:.2e} over "
                  f"{len(losses[name])} micro-batches", flush=True)
        rows.append((stage, line))
        del paths, model
    print(f"(tokens: non-pad tokens through compressor / query reasoner + generator; FLOPs 4 x {body / 1e6:.1f} M "
          "per token)")


if __name__ == "__main__":
    main()
