"""The host's share of a GPU training step, measured where no GPU is. A 135M model's pass is a
few ms of a GPU's arithmetic; what sizes the recipe on one GPU is what the host does for every
pass whatever the GPU's speed: Python (transformers' and peft's modules, our step), autograd, the
dispatcher, and one launch per kernel (issue 12, docs/TRAINING.md "Time per machine").

The step is the one `clara train` runs on CUDA (packed, a step's micro-batches in one pass, LoRA
linears fused in one autograd node each, blocks not compiled), run here on the CPU over a base of the default base's
depth, heads and vocabulary but a narrow width (--width), twice per stage:

    real      the benchmark's records: counts the step's kernel calls (innermost aten calls that
              compute; views and allocations left out: about the kernels CUDA would launch) and
              its host syncs (values or data-dependent sizes read back: .item(), nonzero, unique),
              each of which on a GPU makes the host wait for the queue to drain
    tiny      the same records cut to their first --words words: the same code on tensors too
              small to matter. Its wall time less the self time of aten's computing calls (each
              step profiled; the profiler adds ~1%) is the framework's: Python, autograd, views

The host floor of the real step = its calls x (the tiny step's framework seconds per call + a
launch cost per kernel). The launch cost (cudaLaunchKernel with its aten dispatch, --launch-us,
5-10 us on current hosts) is not measured here; the framework part is, on this CPU, which may be
slower or faster than a GPU machine's host. (The real step's seconds at the narrow width, in
--json, are the CPU's arithmetic, for scale only.) Results: docs/TRAINING.md, "The host's share of
a GPU step".

    python benchmarks/gpu_host_floor.py                          # scp, instruct, e2e, generator, retrieval
    python benchmarks/gpu_host_floor.py --stages scp --compiled  # also with compiled blocks
    python benchmarks/gpu_host_floor.py --peft-lora              # also with peft's LoRA linears
    python benchmarks/gpu_host_floor.py --one-kernel-attention   # attention's calls as on CUDA now
    python benchmarks/gpu_host_floor.py --stages scp --steps 2 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

# inductor's fused kernels appear in the profile as calls of their own (read at inductor's import)
os.environ.setdefault("TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import RECIPE, one_step, synth_records  # noqa: E402  (the same records, recipe, step)

#: the retrieval stage's step as scripts/train_written.sh runs it: 32 questions, no accumulation,
#: padded (not packed; its step is not one pass)
RETRIEVAL_RECIPE = (32, 1)

#: aten calls that launch no kernel on CUDA (views, metadata, allocation)
NO_KERNEL = {"aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::transpose",
             "aten::t", "aten::permute", "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze",
             "aten::squeeze", "aten::alias", "aten::detach", "aten::detach_", "aten::empty", "aten::empty_like",
             "aten::empty_strided", "aten::lift_fresh", "aten::split", "aten::split_with_sizes",
             "aten::unbind", "aten::chunk", "aten::narrow", "aten::resolve_conj", "aten::resolve_neg",
             "aten::result_type", "aten::broadcast_tensors", "aten::contiguous", "aten::flatten",
             "aten::unflatten", "aten::view_as", "aten::expand_as", "aten::movedim", "aten::_reshape_alias",
             "aten::set_", "aten::requires_grad_", "aten::retain_grad", "aten::resize_", "aten::as_strided_",
             "aten::to", "aten::dropout", "aten::feature_dropout",  # to, dropout: calls with no work beneath
             "aten::numpy_T", "aten::mT", "aten::mH", "aten::adjoint"}
#: one kernel on CUDA (a GEMM with beta), which a CPU runs as a copy and a product beneath it
ONE_KERNEL = {"aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_", "aten::addbmm"}


def narrow_base(src: Path, dst: Path, width: int) -> Path:
    """A base folder like src (tokenizer, depth, heads, vocabulary) with hidden size `width`, MLP
    width 8/3 of it, random weights (seed 0)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    heads = config.num_attention_heads
    if width % (2 * heads):
        raise SystemExit(f"--width must be a multiple of 2 x {heads} heads")
    config.hidden_size, config.head_dim = width, width // heads
    config.intermediate_size = width * 8 // 3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(dst)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja") and f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def shortened(record, words: int):
    """The record with every text (documents, questions, answers) cut to its first `words` words."""
    def cut(value):
        if isinstance(value, str):
            return " ".join(value.split()[:words])
        return [cut(v) for v in value]

    return dataclasses.replace(record, **{f.name: cut(getattr(record, f.name)) for f in dataclasses.fields(record)
                                          if f.name in ("docs", "questions", "answers", "question", "answer")})


#: calls that wait for the device on CUDA: a value or a data-dependent size read back to the host
SYNCS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim", "aten::masked_select"}


def computes(name: str) -> bool:
    """An aten call that computes, or one of inductor's fused kernels (compiled blocks)."""
    return (name.startswith("aten::") and name not in NO_KERNEL) or "cpp_fused" in name


def kernel_calls(prof) -> tuple[int, float, int]:
    """(innermost aten calls that compute, the self seconds of every aten call that computes,
    calls that sync a GPU with its host). Calls are counted innermost, so that a composite (linear -> matmul
    -> mm, _to_copy -> copy_) counts once; time is taken at every level, since a kernel such as
    SDPA's backward has calls (its allocations) beneath it."""
    below: dict[int, bool] = {}

    def computing_below(e) -> bool:
        key = id(e)
        if key not in below:
            below[key] = any(computes(c.name) or computing_below(c) for c in e.cpu_children)
        return below[key]

    def within_one_kernel(e) -> bool:
        parent = e.cpu_parent
        while parent is not None:
            if parent.name in ONE_KERNEL:
                return True
            parent = parent.cpu_parent
        return False

    calls, kernel_us, syncs = 0, 0.0, 0
    for e in prof.events():
        syncs += e.name in SYNCS
        if computes(e.name):
            kernel_us += e.self_cpu_time_total
            if e.name in ONE_KERNEL:
                calls += 1
            elif not computing_below(e) and not within_one_kernel(e):
                calls += 1
    return calls, kernel_us / 1e6, syncs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="scp,instruct,e2e,generator,retrieval")
    ap.add_argument("--width", type=int, default=18, help="hidden size of the narrow base (a multiple of 18)")
    ap.add_argument("--words", type=int, default=3, help="words kept of every text in the tiny step")
    ap.add_argument("--steps", type=int, default=3, help="measured steps (the same examples) per stage and kind, after one warm-up")
    ap.add_argument("--docs", type=int, default=40, help="Wikipedia paragraphs to synthesize records from")
    ap.add_argument("--launch-us", type=float, nargs=2, default=(5.0, 10.0), metavar=("LOW", "HIGH"),
                    help="a CUDA kernel launch with its aten dispatch, microseconds (assumed, not measured)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a GPU's host runs one Python thread)")
    ap.add_argument("--peft-lora", action="store_true",
                    help="also the step with peft's own LoRA linears (the CUDA trainer's before 2026-12-08)")
    ap.add_argument("--compiled", action="store_true",
                    help="also the step with compiled blocks (clara train --compile; inductor's kernels counted too)")
    ap.add_argument("--one-kernel-attention", action="store_true",
                    help="attention with gradients as on CUDA since 2026-12-08: one call forward and one backward "
                         "(PyTorch's flash varlen kernel), counted through a stand-in that computes nothing")
    ap.add_argument("--json", action="store_true", help="one JSON line per stage and path as well")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_kernel_attention:
        stand_in_torch_varlen()

    from clara_cli.base_models import smollm2_base_dir
    from clara_cli.model import cpu_name, resolve_dtype
    from clara_cli.train.loop import TrainConfig, _load_start_model
    from clara_cli.train.stages import ONE_PASS_STAGES, Trainable, compile_layers, prepare_adapters

    dtype = resolve_dtype("auto")
    dname = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    machine = f"{cpu_name()}, {args.threads} thread(s), {dname}"
    print(f"CPU: {machine}; torch {torch.__version__}; narrow base: width {args.width}; attention with gradients: "
          + ("one call forward, one backward (a stand-in of the CUDA kernel's calls)" if args.one_kernel_attention
             else "the torch path (bucketed SDPA)"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = synth_records(args.docs, tmp / "records")
        base = narrow_base(smollm2_base_dir(), tmp / "base", args.width)
        for stage in args.stages.split(","):
            batch, accum = RETRIEVAL_RECIPE if stage == "retrieval" else RECIPE[stage]
            one_pass = stage in ONE_PASS_STAGES
            cfg = TrainConfig(stage, "unused", "unused", init_from=None, base_model=str(base),
                              batch_size=batch, grad_accum=accum, dropout=False, dtype=dname).resolved()
            stage_records = records["e2e" if stage == "retrieval" else stage]  # retrieval: QA records too
            tiny_records = [shortened(r, args.words) for r in stage_records]
            paths = ["fused"] + (["peft"] if args.peft_lora else []) + (["compiled"] if args.compiled else [])
            for path in paths:
                model = _load_start_model(cfg, None, torch.device("cpu"), dtype)
                prepare_adapters(model, stage, fresh_start=True, seed=0)
                model.set_attention("auto")  # as the trainer (on CUDA: Triton for the frozen memories)
                model.decoder.train(False)
                if path == "compiled":
                    compile_layers(model, fall_back=False)
                # the CUDA trainer's settings: packed, LoRA linears fused (peft's own with --peft-lora)
                tm = Trainable(model, stage, autocast=dtype != torch.float32, packed=True,
                               fused_lora=path != "peft")
                seen = {kind: measure(tm, recs, cfg, one_pass, args.steps)
                        for kind, recs in (("real", stage_records), ("tiny", tiny_records))}
                real, tiny = seen["real"], seen["tiny"]
                framework_us = tiny["framework_seconds"] / tiny["kernel_calls"] * 1e6
                floors = [real["kernel_calls"] * (framework_us + c) / 1e6 for c in args.launch_us]
                passes = 1 if one_pass else accum
                print(f"{stage:9s} {path:8s} step of {accum} x {batch} in {passes} pass(es), {real['tokens']} tokens: "
                      f"{real['kernel_calls']} kernel calls, {real['syncs']} host syncs; framework {framework_us:.1f} us a call (tiny step: "
                      f"{tiny['kernel_calls']} calls, {tiny['seconds']:.3f} s, {tiny['framework_seconds']:.3f} s "
                      f"outside them); host floor {floors[0]:.3f}-{floors[1]:.3f} s a step at {args.launch_us[0]:g}-"
                      f"{args.launch_us[1]:g} us a launch  [{machine}]", flush=True)
                if args.json:
                    print(json.dumps({"stage": stage, "path": path, "passes": passes, "real": real, "tiny": tiny,
                                      "framework_us_per_call": framework_us, "launch_us": list(args.launch_us),
                                      "host_floor_s": floors, "machine": machine}))
                del tm, model


class _OneKernelAttention(torch.autograd.Function):
    """One call forward, one backward: the call structure of PyTorch's flash varlen kernel, which
    `clara_kernels` uses for CUDA attention with gradients and a CPU cannot run. Not attention:
    only its calls are counted."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.kv = k.shape, v.shape
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.clone(), grad.new_zeros(ctx.kv[0]), grad.new_zeros(ctx.kv[1])


def stand_in_torch_varlen() -> None:
    """Route attention with gradients as on CUDA, through a stand-in of varlen_attn's calls."""
    from clara_kernels import attention

    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        return _OneKernelAttention.apply(q, k, v)

    attention._torch_varlen_applies = lambda q: True
    attention._load_torch_varlen = lambda: varlen_attn
    attention._TORCH_VARLEN["state"] = "on"  # no first-call comparison: the stand-in computes nothing


def measure(tm, records: list, cfg, one_pass: bool, steps: int) -> dict:
    """Median wall seconds, kernel calls and framework seconds of `steps` profiled steps on the
    same examples, after a warm-up on them (which compiles, for compiled blocks)."""
    from torch.profiler import ProfilerActivity, profile

    batch, accum = cfg.batch_size, cfg.grad_accum
    if tm.stage in ("e2e", "generator", "retrieval"):  # frozen memories: built once per run, outside the steps
        tm.doc_cache = {}
        tm.cache_documents([d for r in records for d in r.docs])
    if tm.stage == "retrieval":  # its negatives: every cached document
        tm.build_pool(center=True)
    one_step(tm, records, cfg, batch, accum, 0, one_pass)
    rows = []
    for _ in range(steps):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            (wall, _), tokens, _ = one_step(tm, records, cfg, batch, accum, 0, one_pass)
        calls, kernel_s, syncs = kernel_calls(prof)
        rows.append((wall, calls, wall - kernel_s, syncs))
    return {"tokens": tokens, "seconds": statistics.median(r[0] for r in rows),
            "kernel_calls": round(statistics.median(r[1] for r in rows)),
            "framework_seconds": statistics.median(r[2] for r in rows), "syncs": max(r[3] for r in rows)}


if __name__ == "__main__":
    main()
