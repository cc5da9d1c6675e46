"""How well memories carry a paragraph the compressor never saw: the `scp` loss on the
development split, for following a compressor pretraining run.

The records are the scp records (`clara synth --split train --seed 0`: QA lines and
paraphrases) whose paragraph is in the development split of the training paragraphs
(`corpora.is_dev`), which every training stage leaves out. The loss is the stage's own
teacher-forced LM loss (no MSE term, no gradient, no dropout), paraphrase templates drawn as
in epoch 0 with seed 0, so two models are scored on exactly the same tokens. Held-out
paragraphs are not read.

With --control each record is scored a second time with another paragraph's memory (the next
record's about a different paragraph): the gap between the two losses is what the memories
carry, apart from what the decoder guesses without them (the loss form of
benchmarks/memory_control.py).

    python benchmarks/scp_dev_loss.py MODEL [MODEL ...] [--records 200] [--control] [--dtype auto] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def with_other_memories(records: list) -> list:
    """Each record with the paragraph of the next record about a different one (cyclic)."""
    out = []
    for i, r in enumerate(records):
        j = next((j % len(records) for j in range(i + 1, i + len(records))
                  if records[j % len(records)].docs != r.docs), i)
        out.append(dataclasses.replace(r, docs=list(records[j].docs)))
    return out


def dev_loss(spec: str, records: list, dtype_name: str, control: bool = False) -> dict:
    """Mean over records of each record's per-token LM loss: per kind (qa, paraphrase) and all;
    with `control`, also the same with another paragraph's memory (keys ending `_other`)."""
    dtype = resolve_dtype(dtype_name, torch.device("cpu"))
    model = load_model(spec, device="cpu", dtype=dtype)
    prepare_adapters(model, "scp", fresh_start=False, seed=0)
    model.set_attention("auto")  # as the trainer: SDPA on a CPU
    model.decoder.eval()
    tm = Trainable(model, "scp", autocast=dtype != torch.float32, packed=False)  # one record a pass: no padding
    cfg = TrainConfig("scp", "unused.jsonl", "unused").resolved()
    t0 = time.perf_counter()
    out: dict = {}
    for suffix, recs in [("", records)] + ([("_other", with_other_memories(records))] if control else []):
        losses: dict[str, list[float]] = {"qa": [], "paraphrase": []}
        with torch.no_grad():
            for i, r in enumerate(recs):
                _, stats = tm.step([r], [(0, i)], cfg)
                losses[r.data_type].append(stats.lm)
        out.update({kind + suffix: round(sum(v) / len(v), 4) for kind, v in losses.items() if v})
        every = [x for v in losses.values() for x in v]
        out["all" + suffix] = round(sum(every) / len(every), 4)
    out.update(model=spec, records=len(records), dtype=str(dtype).replace("torch.", ""),
               seconds=round(time.perf_counter() - t0, 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model folders, or 'default'")
    ap.add_argument("--data", type=Path, default=DATA, help="the synth scp file (pretrain.jsonl)")
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--control", action="store_true", help="also score with another paragraph's memory")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = dev_records(args.data, args.records)
    for spec in args.models:
        row = {**dev_loss(spec, records, args.dtype, args.control), "cpu": cpu_name(), "threads": args.threads}
        other = (f"; another paragraph's memory {row['all_other']:.3f} (qa {row.get('qa_other', float('nan')):.3f})"
                 if args.control else "")
        print(json.dumps(row) if args.json else
              f"{spec}: scp dev loss {row['all']:.3f} (qa {row.get('qa', float('nan')):.3f}, paraphrase "
              f"{row.get('paraphrase', float('nan')):.3f}){other} over {row['records']} records "
              f"[{row['cpu']}, {row['dtype']}, {args.threads} thread(s), {row['seconds']} s]", flush=True)


if __name__ == "__main__":
    main()
