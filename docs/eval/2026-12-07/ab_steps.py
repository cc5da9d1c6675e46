"""What the A/B scripts of this folder share: a compiled model in the trainer's path and steps run
both ways, interleaved with the order alternating (a shared machine's speed drifts, so each
figure is compared with its neighbour in time). `merged-lora/merged_ab.py`,
`varlen-gather/gather_ab.py`, `head-loss/head_ab.py` and `throughput/one_pass_ab.py` use it."""

import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import train_throughput as tt  # noqa: E402  (the benchmark's records and step)

from clara_cli.train.loop import TrainConfig, _load_start_model  # noqa: E402
from clara_cli.train.stages import Trainable, compile_layers, prepare_adapters  # noqa: E402


def compiled_model(stage: str, dtype: str = "bf16", compile: bool = True):
    """(model, records, config): the default model with fresh adapters for `stage` and compiled
    blocks (eager ones with compile=False), the benchmark's records, the recipe's micro-batches."""
    batch, accum = tt.RECIPE[stage]
    with tempfile.TemporaryDirectory() as tmp:
        records = tt.synth_records(40, Path(tmp))[stage]
    cfg = TrainConfig(stage, "unused", "unused", init_from="default", batch_size=batch, grad_accum=accum,
                      dropout=False, dtype=dtype).resolved()
    model = _load_start_model(cfg, None, torch.device("cpu"), torch.bfloat16 if dtype == "bf16" else torch.float32)
    prepare_adapters(model, stage, fresh_start=True, seed=0)
    model.set_attention("auto")
    model.decoder.train(False)
    if compile:
        compile_layers(model, fall_back=False)
    print(stage, batch, accum, dtype, "compiled" if compile else "eager", "threads", torch.get_num_threads(), flush=True)
    return model, records, cfg


def compiled_trainer(stage: str, dtype: str = "bf16"):
    """(Trainable, records, config): `compiled_model` packed, with the matmul attention backward in
    bf16, as `clara train` runs on a CPU."""
    model, records, cfg = compiled_model(stage, dtype)
    tm = Trainable(model, stage, autocast=dtype == "bf16", packed=True, matmul_attention_backward=dtype == "bf16")
    if stage in ("e2e", "generator"):
        tm.cache_documents([d for r in records for d in r.docs])
    return tm, records, cfg


def interleave(tm, records, cfg, switch: Callable[[bool], None], names: tuple[str, str], n_steps: int) -> None:
    """Steps 1..n_steps (step 0 warms up both), each run with switch(False) and switch(True) in
    alternating order; prints busy tokens/s and losses per step, the medians and their ratio."""
    batch, accum = cfg.batch_size, cfg.grad_accum
    speed: dict[bool, list[float]] = {False: [], True: []}
    losses: dict[bool, list[list[float]]] = {False: [], True: []}
    for s in range(n_steps + 1):
        for on in ((False, True) if s % 2 else (True, False)):
            switch(on)
            (_, busy), tokens, loss = tt.one_step(tm, records, cfg, batch if s else 2, accum, s * batch * accum, True)
            if s:
                speed[on].append(tokens / busy)
                losses[on].append(loss)
        if s:
            print(s, tokens, {names[k]: round(v[-1]) for k, v in speed.items()},
                  "losses", losses[False][-1], losses[True][-1], flush=True)
    ratios = [round(a / b, 3) for a, b in zip(speed[True], speed[False], strict=True)]
    print(f"{names[False]}: median {statistics.median(speed[False]):.0f} tok/s busy; {names[True]}: "
          f"{statistics.median(speed[True]):.0f}; x{statistics.median(speed[True]) / statistics.median(speed[False]):.3f}; "
          f"per step {ratios}")
    print("largest loss difference",
          max(abs(a - b) for x, y in zip(losses[False], losses[True], strict=True) for a, b in zip(x, y, strict=True)))
