"""The training and data commands of `clara`: convert, eval, synth, train. They are registered on
the `clara` group in cli.py; heavy imports (torch, transformers, faiss) stay inside the commands."""

from __future__ import annotations

import json
import sys

import click

from .cli_options import (
    emit,
    expand_option,
    json_option,
    load_model,
    model_options,
    open_store,
    retrieval_options,
    slow_dtype_warning,
)
from .errors import UsageError
from .progress import notice


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path())
@click.option("--base-model", default=None, metavar="PATH", help="Base LM folder, if the checkpoint's is not found.")
@json_option
def convert(src, dst, base_model, as_json):
    """Convert a CLaRa checkpoint (Apple's format) into clara's safetensors format.

    \b
    Example:
      clara convert CLaRa-7B-Instruct/compression-16 ./clara-7b-16
    """
    from .checkpoint import convert as run_convert

    out = run_convert(src, dst, base_model=base_model)
    meta = json.loads((out / "clara.json").read_text())
    if as_json:
        emit({"src": str(src), "dst": str(out), "fingerprint": meta["fingerprint"]})
    else:
        click.echo(f"wrote {out} (fingerprint {meta['fingerprint']})")


@click.command("eval")
@click.argument("data")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1), help="Chunks read per answer.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--baseline", "baseline", default="bm25,minilm", show_default=True, metavar="LIST",
              help="Text-RAG retrievers to compare with: bm25, minilm, gold (the gold chunks: the "
                   "reader's ceiling), comma-separated, or none.")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also write report.md, PNG plots, summary.jsonl and predictions.jsonl here.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N questions.")
@expand_option
@retrieval_options
@model_options
@json_option
@click.pass_context
def eval_cmd(ctx, data, k, max_new_tokens, baseline, report_dir, limit, expand, retriever_mode, nprobe, ef_search, rerank,
             model_spec, base_model, device, dtype, as_json, attn="auto"):
    """Score CLaRa on the store against text RAG with the same base LM.

    DATA is JSON Lines (- for stdin): {"question", "answers": [..], "gold_chunk_ids"?: [..],
    "gold_titles"?: [..]}. Reports EM, F1, Cover-EM, Recall@k, context tokens, prefill/decode
    time and cost per correct answer for clara and for each baseline retriever. --retriever
    picks the chunks clara's generator reads (latent: the query reasoner; bm25; hybrid).

    \b
    Example:
      clara eval data/heldout_qa.jsonl -k 5 --report eval-report/
      clara eval data/heldout_qa.jsonl --retriever hybrid --baseline none --json
    """
    from .answer import Retriever
    from .evaluate import evaluate, format_table, load_questions, parse_baselines, write_report

    baselines = parse_baselines(baseline)
    questions = load_questions(data, limit=limit, stdin=sys.stdin if data == "-" else None)
    snapshot = open_store(ctx).snapshot()
    model = load_model(snapshot, model_spec, base_model, device, dtype, attn)
    retriever = Retriever(snapshot, retriever_mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    report = evaluate(snapshot, model, questions, k=k, max_new_tokens=max_new_tokens, baselines=baselines,
                      progress=not as_json, retriever=retriever, expand=expand)
    if as_json:
        for s in report.systems:
            emit({**report.meta(), **s.to_dict()})
    else:
        click.echo(format_table(report))
    if report_dir:
        files = write_report(report, report_dir)
        notice(f"report written to {report_dir} ({len(files)} files)")


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Where pretrain.jsonl, instruct.jsonl, e2e.jsonl and synth.json go.")
@click.option("--split", type=click.Choice(["train"]), default=None,
              help="Read the Wikipedia training split directly instead of the store's chunks.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Use N documents (a seeded sample).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--candidates", default=20, show_default=True, type=click.IntRange(1),
              help="Documents per end-to-end example (1 positive + BM25 hard negatives).")
@click.option("--top-k", "top_k", default=5, show_default=True, type=click.IntRange(1),
              help="Documents per instruction-tuning example.")
@click.option("--max-qa", default=6, show_default=True, type=click.IntRange(1), help="QA pairs per document.")
@click.option("--filter-model", is_flag=True,
              help="Keep only pairs the base instruct LM answers from the document (slow).")
@click.option("--questions", type=click.Choice(["all", "natural", "cloze", "written"]), default="all",
              show_default=True,
              help="Natural questions (wh-word first: 'Who wrote Dracula?'; --written ones too) only, cloze "
                   "ones only, the --written ones only, or all.")
@click.option("--written", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="Questions people wrote about the documents (clara eval's JSON Lines, the document's "
                   "title first in gold_titles, answers verbatim in it), used beside the rules' pairs.")
@model_options
@json_option
@click.pass_context
def synth(ctx, out_dir, split, limit, seed, candidates, top_k, max_qa, filter_model, questions, written,
          model_spec, base_model, device, dtype, as_json, attn="auto"):
    """Build CLaRa training data (official JSONL formats) from the store or Wikipedia.

    QA pairs come from rules over names, numbers and dates whose answers occur verbatim in the
    document; reconstruction targets; instruction and end-to-end examples with BM25 hard
    negatives. Held-out paragraphs are never used. Deterministic for a seed.

    \b
    Example:
      clara synth --split train --limit 2000 --out data/synth
      clara synth --split train --questions natural --out data/synth-natural
      clara synth --split train --questions natural --written data/train_qa_written.jsonl --out data/synth-nw
    """
    from .synth import SynthConfig, docs_from_snapshot, docs_from_wiki, synthesize

    if questions == "written" and not written:
        raise UsageError("--questions written needs --written FILE")
    snapshot = None
    if split:
        docs, source = docs_from_wiki(split), f"wikipedia:{split}"
    else:
        snapshot = open_store(ctx).snapshot()
        docs, source = docs_from_snapshot(snapshot), f"store:{snapshot.root}@{snapshot.version}"
        if not docs:
            raise UsageError("the store has no chunks (ingest documents, or use --split train)")
    model = (load_model(snapshot, model_spec, base_model, device, dtype, attn, warn_untrained=False)
             if filter_model else None)
    config = SynthConfig(seed=seed, limit=limit, max_qa=max_qa, top_k=top_k, candidates=candidates,
                         filter_model=filter_model, questions=questions, written=written)
    report = synthesize(docs, out_dir, config, source=source, model=model, progress=not as_json)
    if report.written_unmatched:
        notice(f"{report.written_unmatched} written questions name no document of the source (or a held-out one)")
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"{report.documents} documents ({report.held_out_skipped} held-out skipped): "
                   f"{report.qa_pairs} QA pairs; wrote {report.pretrain} pretraining, {report.instruct} "
                   f"instruction and {report.e2e} end-to-end records to {out_dir}")


@click.command("train")
@click.argument("stage", type=click.Choice(["scp", "instruct", "e2e", "retrieval", "generator"]))
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Output model folder (our format), also the resumable checkpoint.")
@click.option("--init-from", "--model", "init_from", default=None, metavar="CKPT",
              help="Checkpoint to start from: the previous stage's --out, an official CLaRa folder, or "
                   "'default' (the embedded model). Default: fresh adapters on the base LM.")
@click.option("--base-model", default=None, metavar="PATH", help="Base LM folder for a fresh start.")
@click.option("--steps", default=None, type=click.IntRange(1), help="Optimizer steps (default: --epochs).")
@click.option("--epochs", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Examples per micro-batch.")
@click.option("--grad-accum", default=1, show_default=True, type=click.IntRange(1), help="Micro-batches per step.")
@click.option("--lr", default=None, type=float, help="Peak learning rate [scp/instruct 1e-4, e2e 5e-6].")
@click.option("--warmup-ratio", default=None, type=click.FloatRange(0, 1),
              help="Share of steps warming up linearly [0.03; e2e 0].")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default=None,
              help="[scp/instruct cosine to 0.1*lr, e2e constant]")
@click.option("--save-every", default=100, show_default=True, type=click.IntRange(1), help="Checkpoint every N steps.")
@click.option("--keep-every", default=None, type=click.IntRange(1), metavar="N",
              help="Also keep the model of every Nth step in OUT-steps/step-N (no optimizer state), to "
                   "choose a step on the development split once the run has gone past it.")
@click.option("--top-k", "top_k", default=5, show_default=True, type=click.IntRange(1),
              help="Documents per question: read (instruct) or selected (e2e).")
@click.option("--dropout/--no-dropout", default=True, show_default=True,
              help="LoRA dropout 0.1 as the paper; --no-dropout is faster on CPU.")
@click.option("--pack/--no-pack", default=True, show_default=True,
              help="Run each micro-batch's sequences back to back without padding (the same "
                   "computation, fewer tokens); --no-pack pads to the longest, as before.")
@click.option("--one-pass/--pass-per-micro-batch", "one_pass", default=True, show_default=True,
              help="Packed, every stage but retrieval: run a step's --grad-accum micro-batches as one forward and "
                   "backward pass (the same losses, longer rows: faster on a CPU, more memory).")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the decoder blocks: the same computation in fewer passes over memory "
                   "(docs/TRAINING.md), after ~1 minute of compiling. Default: on for CPU runs of 20 steps "
                   "or more of a real-sized model when a C++ compiler is there; off on CUDA.")
@click.option("--doc-max-length", default=256, show_default=True, type=click.IntRange(1),
              help="Fresh start only: document tokens per memory.")
@click.option("--compr-rate", default=16, show_default=True, type=click.IntRange(1),
              help="Fresh start only: doc_max_length / memory tokens.")
@click.option("--lora-r", default=16, show_default=True, type=click.IntRange(1),
              help="Fresh start only: LoRA rank of the adapters (alpha 2r, as the official code).")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Base weight precision (LoRA weights stay fp32); auto: bf16 where fast.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-examples", default=None, type=click.IntRange(1), help="Use only the first N records.")
@click.option("--tau", default=0.05, show_default=True, type=click.FloatRange(0, min_open=True),
              help="retrieval: InfoNCE temperature.")
@click.option("--query-word-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="retrieval: drop each question word with this probability (augmentation).")
@click.option("--expand-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="generator: share of examples whose top document is read as raw text (as ask --expand 1).")
@click.option("--stop-at-step", default=None, type=click.IntRange(1), metavar="N",
              help="Stop at step N with a checkpoint, as an interruption would (the schedule keeps its "
                   "full length); rerun without it to continue. For time-boxed runs.")
@json_option
def train(stage, data, out, init_from, base_model, steps, epochs, batch_size, grad_accum, lr, warmup_ratio,
          schedule, save_every, keep_every, top_k, dropout, pack, one_pass, compile_, doc_max_length, compr_rate, lora_r, dtype,
          device, seed, max_examples, tau, query_word_dropout, expand_rate, stop_at_step, as_json):
    """Train one CLaRa stage on DATA (official JSONL): scp, then instruct, then e2e.

    `retrieval` (ours, not the paper's) trains the query reasoner alone with a contrastive
    loss against frozen, centred document memories (docs/TRAINING.md, "Retrieval"); it reads
    the e2e format. `generator` (ours) trains the decoder alone on frozen memories, reading
    the top document as raw text in --expand-rate of the examples (as `ask --expand 1`
    does); it reads the instruct format and keeps stores valid.

    Writes a model to --out that every command loads with --model. Checkpoints every
    --save-every steps; rerunning the same command after a crash or kill resumes, and a
    finished run does nothing. Records whose documents are held-out Wikipedia paragraphs
    are dropped, and every stage leaves the development split of the training paragraphs
    (what recipes are chosen on) out.

    \b
    Example:
      clara train scp data/pretrain.jsonl --out ckpt/scp
      clara train instruct data/instruct.jsonl --init-from ckpt/scp --out ckpt/instruct
      clara train e2e data/e2e.jsonl --init-from ckpt/instruct --out ckpt/e2e
      clara train retrieval data/retrieval.jsonl --init-from ckpt/e2e --out ckpt/retrieval
      clara train generator data/instruct.jsonl --init-from default --expand-rate 0.75 --out ckpt/gen
      clara train generator data/instruct.jsonl --init-from default --keep-every 20 --out ckpt/gen
          # ckpt/gen-steps/step-20, step-40, ...: a model each, to choose one on a dev split
    """
    from .train import TrainConfig
    from .train import train as run_train

    slow_dtype_warning(dtype, device)
    cfg = TrainConfig(stage=stage, data=data, out=out, init_from=init_from, base_model=base_model,
                      doc_max_length=doc_max_length, compr_rate=compr_rate, lora_r=lora_r, steps=steps, epochs=epochs,
                      batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
                      schedule=schedule, save_every=save_every, keep_every=keep_every, top_k=top_k,
                      dropout=dropout, dtype=dtype, device=device, seed=seed, max_examples=max_examples,
                      pack=pack, one_pass=one_pass, compile=compile_, tau=tau, query_word_dropout=query_word_dropout,
                      expand_rate=expand_rate)
    result = run_train(cfg, progress=not as_json, stop_at=stop_at_step)
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(f"{stage}: step {result.step}/{result.total_steps}, loss {result.loss_first} -> "
                   f"{result.loss_last}, {result.examples_per_s} examples/s, {result.tokens_per_s} tokens/s "
                   f"[{result.machine}, {result.dtype}]; "
                   f"model in {result.out}" + ("" if result.done else " (not finished: rerun to resume)"))
