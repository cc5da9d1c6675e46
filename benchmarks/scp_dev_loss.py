"""How well memories carry a paragraph the compressor never saw: the `scp` loss on the
development split, for following a compressor pretraining run.

The records are the scp records (`clara synth --split train --seed 0`: QA lines and
paraphrases) whose paragraph is in the development split of the training paragraphs
(`corpora.is_dev`), which every training stage leaves out. The loss is the stage's own
teacher-forced LM loss (no MSE term, no gradient, no dropout), paraphrase templates drawn as
in epoch 0 with seed 0, so two models are scored on exactly the same tokens. Held-out
paragraphs are not read.

    python benchmarks/scp_dev_loss.py MODEL [MODEL ...] [--records 200] [--dtype auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clara_cli.checkpoint import load_model
from clara_cli.model import cpu_name, resolve_dtype
from clara_cli.train import TrainConfig
from clara_cli.train.data import dev_texts, read_records
from clara_cli.train.stages import Trainable, prepare_adapters

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT / ".cache" / "train-default" / "data" / "pretrain.jsonl"


def dev_records(path: Path, n: int) -> list:
    dev = dev_texts()
    return [r for r in read_records(path, "scp") if set(r.docs) <= dev][:n]


def dev_loss(spec: str, records: list, dtype_name: str) -> dict:
    """Mean over records of each record's per-token LM loss: per kind (qa, paraphrase) and all."""
    dtype = resolve_dtype(dtype_name, torch.device("cpu"))
    model = load_model(spec, device="cpu", dtype=dtype)
    prepare_adapters(model, "scp", fresh_start=False, seed=0)
    model.set_attention("auto")  # as the trainer: SDPA on a CPU
    model.decoder.eval()
    tm = Trainable(model, "scp", autocast=dtype != torch.float32, packed=False)  # one record a pass: no padding
    cfg = TrainConfig("scp", "unused.jsonl", "unused").resolved()
    losses: dict[str, list[float]] = {"qa": [], "paraphrase": []}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, r in enumerate(records):
            _, stats = tm.step([r], [(0, i)], cfg)
            losses[r.data_type].append(stats.lm)
    out = {kind: round(sum(v) / len(v), 4) for kind, v in losses.items() if v}
    every = [x for v in losses.values() for x in v]
    out.update(all=round(sum(every) / len(every), 4), model=spec, records=len(records),
               dtype=str(dtype).replace("torch.", ""), seconds=round(time.perf_counter() - t0, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders, or 'default'")
    ap.add_argument("--data", type=Path, default=DATA, help="the synth scp file (pretrain.jsonl)")
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = dev_records(args.data, args.records)
    for spec in args.models:
        row = {**dev_loss(spec, records, args.dtype), "cpu": cpu_name(), "threads": args.threads}
        print(json.dumps(row) if args.json else
              f"{spec}: scp dev loss {row['all']:.3f} (qa {row.get('qa', float('nan')):.3f}, paraphrase "
              f"{row.get('paraphrase', float('nan')):.3f}) over {row['records']} records "
              f"[{row['cpu']}, {row['dtype']}, {args.threads} thread(s), {row['seconds']} s]", flush=True)


if __name__ == "__main__":
    main()
