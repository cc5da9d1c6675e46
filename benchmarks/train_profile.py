"""Where a training step spends its CPU time: torch.profiler over one step of a stage as
`clara train` runs it on a CPU (packed, compiled blocks, in bf16 the matmul attention backward; every
stage but retrieval: the step's micro-batches in one pass) with `make train-default`'s settings, after two
warm-up steps (the first compiles), operators sorted by self CPU time. It names what to speed up next
(issue 12); train_throughput.py measures the speed itself.

    python benchmarks/train_profile.py --stage scp --threads 2
    python benchmarks/train_profile.py --stage scp --threads 2 --shapes aten::mm,aten::copy_
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import RECIPE, one_step, synth_records  # noqa: E402  (the same records, recipe, step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="scp", choices=sorted(RECIPE))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--no-compile", action="store_true", help="profile the eager packed step")
    ap.add_argument("--rows", type=int, default=25, help="operators to list")
    ap.add_argument("--shapes", default="",
                    help="comma-separated operators (e.g. aten::mm,aten::copy_) to list again by input shapes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from clara_cli.model import cpu_name, dtype_name, resolve_dtype
    from clara_cli.train.loop import TrainConfig, _load_start_model
    from clara_cli.train.stages import (
        ONE_PASS_STAGES,
        Trainable,
        compile_layers,
        prepare_adapters,
        trainer_speedups,
    )

    dtype = resolve_dtype(args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        records = synth_records(40, Path(tmp))[args.stage]
    batch, accum = RECIPE[args.stage]
    cfg = TrainConfig(args.stage, "unused", "unused", init_from="default", batch_size=batch, grad_accum=accum,
                      dropout=False, dtype=dtype_name(dtype)).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), dtype)
    prepare_adapters(model, args.stage, fresh_start=True, seed=0)
    model.decoder.train(False)
    if not args.no_compile:
        compile_layers(model, fall_back=False)
    tm = Trainable(model, args.stage, autocast=dtype != torch.float32, packed=True,
                   **trainer_speedups(model, torch.device("cpu"), dtype, not args.no_compile))
    one_pass = args.stage in ONE_PASS_STAGES
    if args.stage == "e2e":
        tm.cache_documents([d for r in records for d in r.docs])

    for s in range(2):
        one_step(tm, records, cfg, batch, accum, s * batch * accum, one_pass)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(args.shapes)) as prof:
        _, tokens, _ = one_step(tm, records, cfg, batch, accum, 2 * batch * accum, one_pass)
    print(f"{args.stage}: {accum} x {batch} examples{' in one pass' if one_pass else ''}, {tokens} tokens; {cpu_name()}, {torch.get_num_threads()} threads, "
          f"{dtype_name(dtype)}{' autocast' if dtype != torch.float32 else ''}, "
          f"{'eager' if args.no_compile else 'compiled'} packed")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    by_shape = prof.key_averages(group_by_input_shape=True) if args.shapes else []
    for name in filter(None, args.shapes.split(",")):
        for e in sorted((e for e in by_shape if e.key == name), key=lambda e: -e.self_cpu_time_total)[:8]:
            print(f"{name} {e.count} calls {e.self_cpu_time_total / 1e3:.1f} ms {e.input_shapes}")


if __name__ == "__main__":
    main()
