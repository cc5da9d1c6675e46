"""`clara`: thin click commands over the library. Results on stdout (text, or JSON Lines with
--json); notices, progress and errors on stderr; documented exit codes (errors.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import ClaraError, PartialFailure, UsageError
from .progress import notice

DEFAULT_STORE = "./clara-store"


class ClaraGroup(click.Group):
    """Turns library errors into one line on stderr and their exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClaraError as err:
            click.echo(f"clara: error: {err}", err=True)
            ctx.exit(err.exit_code)
        except OSError as err:  # a full disk, a folder we may not write: one line, not a traceback
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"clara: error: {where}{err.strerror or err} (the last committed snapshot is intact)",
                       err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("clara: interrupted", err=True)
            ctx.exit(130)


def emit(obj: dict) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


def model_options(f):
    """--model/--base-model/--device/--dtype/--attn, the same on every command that loads a model."""
    f = click.option("--attn", type=click.Choice(["auto", "triton", "sdpa"]), default="auto", show_default=True,
                     help="Attention: clara_kernels' Triton varlen kernel (packed batches) or SDPA; "
                          "auto = Triton on CUDA.")(f)
    f = click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
                     show_default=True, help="Compute precision (auto: bf16 where the CPU/GPU is fast at it).")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    f = click.option("--base-model", default=None, metavar="PATH",
                     help="Base LM folder, overriding the checkpoint's decoder_model_name.")(f)
    f = click.option("--model", "model_spec", default=None, metavar="PATH",
                     help="Checkpoint folder (ours or Apple's CLaRa format). Default: the store's model, "
                          "else the embedded default.")(f)
    return f


def retrieval_options(f):
    """--retriever and the index's search-time knobs (default: what `clara index` recorded)."""
    f = click.option("--rerank", default=None, type=click.IntRange(1), metavar="N",
                     help="ANN candidates reranked exactly (default: the index's).")(f)
    f = click.option("--ef-search", default=None, type=click.IntRange(1), metavar="N", help="HNSW efSearch.")(f)
    f = click.option("--nprobe", default=None, type=click.IntRange(1), metavar="N", help="IVF lists probed.")(f)
    f = click.option("--retriever", "retriever_mode", type=click.Choice(["latent", "bm25", "hybrid"]),
                     default="latent", show_default=True,
                     help="latent: CLaRa memory cosine; bm25: the store's BM25; hybrid: both, rank-fused.")(f)
    return f


def compression_options(f):
    """--batch-size and --memory-dtype, shared by compress and update."""
    f = click.option("--memory-dtype", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default=None,
                     help="Shard dtype (default: the store's existing memory dtype, else the compute dtype, "
                          "which is lossless; int8: per-token scales, half of bf16).")(f)
    return click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1),
                        help="Chunks per compressor batch.")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="JSON Lines on stdout, for scripts.")(f)


def no_wait_option(f):
    """--no-wait on every command that writes the store."""
    return click.option("--no-wait", is_flag=True,
                        help="If another writer holds the store, fail at once (exit code 4) instead of waiting.")(f)


def open_store(ctx, create: bool = False):
    from .store import Store

    return Store.open(ctx.obj["store"], create=create)


def slow_dtype_warning(dtype: str, device: str) -> None:
    from .model import slow_dtype_notice

    line = slow_dtype_notice(dtype, device)
    if line:
        notice(line)


def load_model(snapshot, model_spec, base_model, device, dtype, attn="auto", warn_untrained: bool = True):
    """The model named by --model, else the one the store is bound to, else the default."""
    from .model import ClaraModel

    bound = snapshot.model if snapshot is not None else None
    spec = model_spec or (bound.get("spec") if bound else None) or "default"
    slow_dtype_warning(dtype, device)
    model = ClaraModel.from_pretrained(None if spec == "default" else spec, device=device, dtype=dtype,
                                       base_model=base_model, attn=attn)
    if warn_untrained and not model.trained:
        notice("the default model has fresh, untrained adapters: retrieval and answers are not meaningful "
               "until trained adapters ship (see README)")
    return model


@click.group(cls=ClaraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store", envvar="CLARA_STORE", default=DEFAULT_STORE, show_default=True,
              type=click.Path(file_okay=False), help="Store directory (env CLARA_STORE).")
@click.version_option(__version__, prog_name="clara")
@click.pass_context
def cli(ctx, store):
    """Compress a corpus into CLaRa memory tokens and answer questions from them.

    \b
    Example:
      clara ingest docs/            # read and chunk documents
      clara compress                # documents -> memory tokens
      clara index                   # FAISS index over the memory
      clara ask "Who built the Eiffel Tower?"
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx.ensure_object(dict)
    ctx.obj["store"] = Path(store)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--overlap", default=0, show_default=True, type=click.IntRange(0), help="Tokens shared by consecutive chunks.")
@click.option("--delete-missing", is_flag=True, help="Drop chunks whose source file is gone.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks that leave the folder given.")
@no_wait_option
@model_options
@json_option
@click.pass_context
def ingest(ctx, paths, overlap, delete_missing, follow_symlinks, no_wait, model_spec, base_model, device, dtype, attn,
           as_json):
    """Read documents into the store, chunked to the model's doc_max_length.

    PATHS are files, folders (recursive), globs, or - for JSON Lines on stdin
    ({"text": ..., "id"?: ..., "metadata"?: {...}}). Formats: .txt .md .html .jsonl .csv .parquet.
    Unchanged input adds nothing; a changed file replaces its chunks.

    \b
    Example:
      clara ingest notes/ 'papers/*.md'
      cat docs.jsonl | clara ingest -
    """
    from .compress import model_info
    from .ingest import ingest as run_ingest

    store = open_store(ctx, create=True)
    model = load_model(store.snapshot(), model_spec, base_model, "cpu", "fp32" if dtype == "auto" else dtype,
                       warn_untrained=False)
    stdin = sys.stdin if "-" in paths else None
    report = run_ingest(store, list(paths), model.tokenizer, max_tokens=model.config.doc_max_length,
                        overlap=overlap, delete_missing=delete_missing, stdin=stdin,
                        model_info=model_info(model), progress=not as_json, follow_symlinks=follow_symlinks,
                        wait=not no_wait)
    for bad in report.rejected:
        click.echo(f"clara: rejected: {bad.message}", err=True)
    for skip in report.skipped:
        click.echo(f"clara: skipped: {skip.message}", err=True)
    summary = {"added": report.added, "changed": report.changed, "removed": report.removed,
               "unchanged": report.unchanged, "chunks_added": report.chunks_added,
               "rejected": len(report.rejected)}
    if as_json:
        emit(summary)
    else:
        click.echo(f"{report.added} added, {report.changed} changed, {report.removed} removed, "
                   f"{report.unchanged} unchanged documents; {report.chunks_added} new chunks"
                   + (f"; {len(report.rejected)} inputs rejected" if report.rejected else ""))
    if report.rejected:
        raise PartialFailure(f"{len(report.rejected)} of the inputs were rejected (the rest is committed)")


@cli.command()
@compression_options
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run as a Ray Data job (model-holding actors); ADDRESS of a cluster, or a local one.")
@click.option("--ray-actors", default=None, type=click.IntRange(1), metavar="N",
              help="Ray actors (default: one per GPU, else one per 2 CPUs of the cluster).")
@no_wait_option
@model_options
@json_option
@click.pass_context
def compress(ctx, batch_size, memory_dtype, ray_address, ray_actors, no_wait, model_spec, base_model, device, dtype,
             attn, as_json):
    """Compress every chunk that has no memory yet into memory tokens.

    Commits after every batch: a killed run loses at most the batch in flight, a rerun continues.

    \b
    Example:
      clara compress --batch-size 64 --dtype bf16
    """
    from .compress import compress_store

    store = open_store(ctx)
    model = load_model(store.snapshot(), model_spec, base_model, device, dtype, attn)
    if ray_address:
        from .compress_ray import compress_store_ray

        report = compress_store_ray(store, model, address=ray_address, batch_size=batch_size,
                                    memory_dtype=memory_dtype, actors=ray_actors, progress=not as_json,
                                    wait=not no_wait, base_model=base_model)
    else:
        report = compress_store(store, model, batch_size=batch_size, memory_dtype=memory_dtype,
                                progress=not as_json, wait=not no_wait)
    if as_json:
        emit(report.to_dict())
    else:
        rate = report.compressed / report.seconds if report.seconds else 0.0
        click.echo(f"compressed {report.compressed} chunks in {report.seconds:.1f} s ({rate:.1f} chunks/s), "
                   f"{report.batches} batches, memory stored as {report.memory_dtype}")


@cli.command()
@click.option("--rebuild", is_flag=True, help="Build from scratch instead of updating.")
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True,
              help="flat: exact scan; ivf/hnsw: ANN on a compact vector + exact rerank; auto: flat for "
                   "small stores (an explicit kind sticks until changed).")
@click.option("--nlist", default=None, type=click.IntRange(1), help="IVF lists (default ~4*sqrt(rows)).")
@click.option("--nprobe", default=None, type=click.IntRange(1), help="IVF lists probed per query [64].")
@click.option("--ef-search", default=None, type=click.IntRange(1), help="HNSW efSearch [128].")
@click.option("--hnsw-m", default=None, type=click.IntRange(2), help="HNSW links per node [32].")
@click.option("--rerank", default=None, type=click.IntRange(1), help="Candidates reranked exactly [100].")
@click.option("--compact-dim", default=None, type=click.IntRange(1), help="PCA dims of the ANN vector [256].")
@click.option("--no-bm25", is_flag=True, help="Do not build or update the BM25 index.")
@no_wait_option
@json_option
@click.pass_context
def index(ctx, rebuild, kind, nlist, nprobe, ef_search, hnsw_m, rerank, compact_dim, no_bm25, no_wait, as_json):
    """Build or update the vector index (and the BM25 index) over the compressed chunks.

    Parameters are recorded in the store; search-time ones (nprobe, ef-search, rerank)
    change without a rebuild.

    \b
    Example:
      clara index
      clara index --kind hnsw --ef-search 256 --rerank 200
    """
    from .index import IndexOptions, update_index

    options = IndexOptions(kind=kind, nlist=nlist, nprobe=nprobe, ef_search=ef_search, hnsw_m=hnsw_m,
                           rerank=rerank, compact_dim=compact_dim)
    report = update_index(open_store(ctx), options, progress=not as_json, rebuild=rebuild, wait=not no_wait,
                          bm25=not no_bm25)
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"index ({report.kind}): {report.added} added, {report.removed} removed, "
                   f"{report.total} chunks indexed" + (" (rebuilt)" if report.rebuilt else "")
                   + (f", {report.tombstones} tombstones" if report.tombstones else ""))


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--overlap", default=0, show_default=True, type=click.IntRange(0), help="Tokens shared by consecutive chunks.")
@click.option("--delete-missing", is_flag=True,
              help="Drop documents whose file (or JSONL/CSV/Parquet record) under PATHS is gone.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks that leave the folder given.")
@compression_options
@click.option("-q", "--quiet", is_flag=True,
              help="No progress, notes or summary: only rejected inputs and errors, on stderr (for cron).")
@no_wait_option
@model_options
@json_option
@click.pass_context
def update(ctx, paths, overlap, delete_missing, follow_symlinks, batch_size, memory_dtype, quiet, no_wait, model_spec,
           base_model, device, dtype, attn, as_json):
    """Ingest, compress and index PATHS in one incremental run (made for cron).

    Only new or changed content is compressed; unchanged input writes nothing. One writer lock
    for the whole run; a killed run leaves the last committed snapshot intact and the next run
    continues. Exit codes: 0 done, 3 some inputs rejected (each named on stderr; the rest is
    committed), 4 store busy (with --no-wait), 1 error, 5 model mismatch, 6 corrupt data.

    \b
    Example:
      clara update docs/ --delete-missing
      # crontab: every night at 02:00, silent unless something is wrong
      0 2 * * * clara --store /srv/kb update /srv/docs --delete-missing --quiet --no-wait
    """
    from .update import update as run_update

    store = open_store(ctx, create=True)
    model = load_model(store.snapshot(), model_spec, base_model, device, dtype, attn, warn_untrained=not quiet)
    report = run_update(store, list(paths), model, overlap=overlap, delete_missing=delete_missing,
                        follow_symlinks=follow_symlinks, stdin=sys.stdin if "-" in paths else None,
                        batch_size=batch_size, memory_dtype=memory_dtype, progress=not (quiet or as_json),
                        wait=not no_wait)
    for bad in report.rejected:
        click.echo(f"clara: rejected: {bad.message}", err=True)
    if not quiet:
        for skip in report.skipped:
            click.echo(f"clara: skipped: {skip.message}", err=True)
    if as_json:
        emit(report.summary())
    elif not quiet:
        click.echo(f"{report.added} added, {report.changed} changed, {report.removed} removed, "
                   f"{report.unchanged} unchanged documents; {report.chunks_added} new chunks, "
                   f"{report.compressed} compressed, {report.indexed} indexed; version {report.version} "
                   f"in {report.seconds:.1f} s"
                   + (f"; {len(report.rejected)} inputs rejected" if report.rejected else ""))
    if report.rejected:
        raise PartialFailure(f"{len(report.rejected)} of the inputs were rejected (the rest is committed)")


@cli.command()
@json_option
@click.pass_context
def verify(ctx, as_json):
    """Check every store file against the size and sha256 in the manifest, then the store's
    logic (ids, one memory row per chunk, the index); exit code 6 names what is damaged.

    \b
    Example:
      clara verify || echo "store damaged"
    """
    from .errors import CorruptDataError
    from .update import check_store

    with open_store(ctx).snapshot() as snapshot:
        report = check_store(snapshot)
    if as_json:
        emit(report.to_dict())
    else:
        for problem in report.problems:
            click.echo(f"damaged: {problem}")
        for note in report.notes:
            click.echo(f"note: {note}")
        if report.ok:
            counts = ", ".join(f"{v} {k}" for k, v in report.counts.items())
            click.echo(f"ok: version {report.version}: {counts}")
    if not report.ok:
        raise CorruptDataError(f"store {snapshot.root} (version {report.version}) has {len(report.problems)} "
                               f"problem(s): {report.problems[0]}")


@cli.command()
@click.option("--grace", default=0.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="Also keep files of snapshots replaced in the last SECONDS (readers that hold no lease, "
                   "e.g. on another host over a network file system).")
@no_wait_option
@json_option
@click.pass_context
def gc(ctx, grace, no_wait, as_json):
    """Remove files no snapshot in use needs: leftovers of killed runs, and files of old
    snapshots that no running reader holds (readers lease their snapshot).

    \b
    Example:
      clara gc --json
    """
    store = open_store(ctx)
    data = store.root / "data"
    before = {p.name: p.stat().st_size for p in data.iterdir()} if data.is_dir() else {}
    removed = store.gc(grace_seconds=grace, wait=not no_wait)
    freed = sum(before.get(name, 0) for name in removed)
    if as_json:
        emit({"removed": len(removed), "bytes_freed": freed, "files": removed})
    else:
        click.echo(f"removed {len(removed)} files ({freed / 2**20:.1f} MiB)")


def read_questions(arg: str, key: str = "question") -> list[str]:
    """One argument, or `-`: JSON Lines objects with `key` (plain lines also accepted) on stdin."""
    if arg != "-":
        return [arg]
    out = []
    for n, line in enumerate(sys.stdin, start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"<stdin>:{n}: malformed JSON ({err.msg})") from None
            if not isinstance(obj.get(key), str):
                raise UsageError(f'<stdin>:{n}: expected {{"{key}": "..."}}')
            out.append(obj[key])
        else:
            out.append(line)
    if not out:
        raise UsageError("no questions on stdin")
    return out


def print_sources(hits) -> None:
    for h in hits:
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        where = h.doc_id if h.source in ("", "<stdin>") else h.source  # records from stdin have only ids
        click.echo(f"  [{h.rank}] {where}:{h.start}-{h.end} (score {h.score:.3f})\n      {snippet}")


@cli.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1))
@retrieval_options
@model_options
@json_option
@click.pass_context
def search(ctx, query, k, retriever_mode, nprobe, ef_search, rerank, model_spec, base_model, device, dtype, attn,
           as_json):
    """Find the chunks closest to QUERY (- reads JSON Lines queries from stdin).

    \b
    Example:
      clara search "tallest building in Paris" -k 3 --json
    """
    from .answer import Retriever
    from .answer import search as run_search

    snapshot = open_store(ctx).snapshot()
    model = None if retriever_mode == "bm25" else load_model(snapshot, model_spec, base_model, device, dtype, attn)
    queries = read_questions(query, key="query") if query == "-" else [query]
    retriever = Retriever(snapshot, retriever_mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    results = run_search(snapshot, model, queries, k, retriever)
    for q, hits in zip(queries, results, strict=True):
        if as_json:
            for h in hits:
                emit(h.to_dict() if len(queries) == 1 else {"query": q, **h.to_dict()})
        else:
            if len(queries) > 1:
                click.echo(q)
            print_sources(hits)


@cli.command()
@click.argument("question")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1), help="Chunks read per answer.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@retrieval_options
@model_options
@json_option
@click.pass_context
def ask(ctx, question, k, max_new_tokens, retriever_mode, nprobe, ef_search, rerank, model_spec, base_model, device,
        dtype, attn, as_json):
    """Answer QUESTION from the compressed store, with sources (- reads JSON Lines from stdin).

    \b
    Example:
      clara ask "When was the Eiffel Tower completed?"
      echo '{"question": "Who wrote Hamlet?"}' | clara ask - --json
    """
    from .answer import Retriever
    from .answer import ask as run_ask

    snapshot = open_store(ctx).snapshot()
    model = load_model(snapshot, model_spec, base_model, device, dtype, attn)
    retriever = Retriever(snapshot, retriever_mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    for q in read_questions(question):
        answer = run_ask(snapshot, model, [q], k, max_new_tokens, retriever)[0]
        if as_json:
            emit(answer.to_dict())
        else:
            click.echo(answer.answer or "(empty answer)")
            click.echo("Sources:")
            print_sources(answer.sources)


@cli.command()
@json_option
@click.pass_context
def info(ctx, as_json):
    """Model, counts, sizes and compression ratio of the store.

    \b
    Example:
      clara info --json
    """
    snapshot = open_store(ctx).snapshot()
    stats = snapshot.stats()
    model = snapshot.model or {}
    chunks = snapshot.chunks(columns=["n_tokens"]) if stats.get("chunks") else None
    text_tokens = int(sum(chunks.column("n_tokens").to_pylist())) if chunks is not None else 0
    n_mem = int(model.get("n_mem", 0))
    ratio = (text_tokens / (stats.get("chunks", 0) * n_mem)) if n_mem and stats.get("chunks") else None
    out = {"store": str(snapshot.root), "version": snapshot.version,
           "model": model.get("spec"), "fingerprint": model.get("fingerprint"),
           "documents": stats.get("documents", 0), "chunks": stats.get("chunks", 0),
           "compressed": stats.get("compressed", 0), "bytes": stats["total_bytes"],
           "bytes_by_kind": stats["bytes"],
           "text_tokens": text_tokens, "memory_tokens": stats.get("compressed", 0) * n_mem,
           "compression_ratio": round(ratio, 2) if ratio else None,
           "indexed": (snapshot.manifest.get("index") or {}).get("ntotal", 0)}
    if as_json:
        emit(out)
    else:
        for key, value in out.items():
            click.echo(f"{key:>18}: {value}")


@cli.command()
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


@cli.command("eval")
@click.argument("data")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1), help="Chunks read per answer.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--baseline", "baseline", default="bm25,minilm", show_default=True, metavar="LIST",
              help="Text-RAG retrievers to compare with: bm25, minilm, gold (the gold chunks: the "
                   "reader's ceiling), comma-separated, or none.")
@click.option("--report", "report_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Also write report.md, PNG plots, summary.jsonl and predictions.jsonl here.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N questions.")
@retrieval_options
@model_options
@json_option
@click.pass_context
def eval_cmd(ctx, data, k, max_new_tokens, baseline, report_dir, limit, retriever_mode, nprobe, ef_search, rerank,
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
                      progress=not as_json, retriever=retriever)
    if as_json:
        for s in report.systems:
            emit({**report.meta(), **s.to_dict()})
    else:
        click.echo(format_table(report))
    if report_dir:
        files = write_report(report, report_dir)
        notice(f"report written to {report_dir} ({len(files)} files)")


@cli.command()
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
@model_options
@json_option
@click.pass_context
def synth(ctx, out_dir, split, limit, seed, candidates, top_k, max_qa, filter_model, model_spec, base_model,
          device, dtype, as_json, attn="auto"):
    """Build CLaRa training data (official JSONL formats) from the store or Wikipedia.

    QA pairs come from rules over names, numbers and dates whose answers occur verbatim in the
    document; reconstruction targets; instruction and end-to-end examples with BM25 hard
    negatives. Held-out paragraphs are never used. Deterministic for a seed.

    \b
    Example:
      clara synth --split train --limit 2000 --out data/synth
    """
    from .synth import SynthConfig, docs_from_snapshot, docs_from_wiki, synthesize

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
                         filter_model=filter_model)
    report = synthesize(docs, out_dir, config, source=source, model=model, progress=not as_json)
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"{report.documents} documents ({report.held_out_skipped} held-out skipped): "
                   f"{report.qa_pairs} QA pairs; wrote {report.pretrain} pretraining, {report.instruct} "
                   f"instruction and {report.e2e} end-to-end records to {out_dir}")


@cli.command("train")
@click.argument("stage", type=click.Choice(["scp", "instruct", "e2e"]))
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
@click.option("--top-k", "top_k", default=5, show_default=True, type=click.IntRange(1),
              help="Documents per question: read (instruct) or selected (e2e).")
@click.option("--dropout/--no-dropout", default=True, show_default=True,
              help="LoRA dropout 0.1 as the paper; --no-dropout is faster on CPU.")
@click.option("--pack/--no-pack", default=True, show_default=True,
              help="Run each micro-batch's sequences back to back without padding (the same "
                   "computation, fewer tokens); --no-pack pads to the longest, as before.")
@click.option("--doc-max-length", default=256, show_default=True, type=click.IntRange(1),
              help="Fresh start only: document tokens per memory.")
@click.option("--compr-rate", default=16, show_default=True, type=click.IntRange(1),
              help="Fresh start only: doc_max_length / memory tokens.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Base weight precision (LoRA weights stay fp32); auto: bf16 where fast.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-examples", default=None, type=click.IntRange(1), help="Use only the first N records.")
@click.option("--stop-at-step", default=None, type=click.IntRange(1), metavar="N",
              help="Stop at step N with a checkpoint, as an interruption would (the schedule keeps its "
                   "full length); rerun without it to continue. For time-boxed runs.")
@json_option
def train(stage, data, out, init_from, base_model, steps, epochs, batch_size, grad_accum, lr, warmup_ratio,
          schedule, save_every, top_k, dropout, pack, doc_max_length, compr_rate, dtype, device, seed,
          max_examples, stop_at_step, as_json):
    """Train one CLaRa stage on DATA (official JSONL): scp, then instruct, then e2e.

    Writes a model to --out that every command loads with --model. Checkpoints every
    --save-every steps; rerunning the same command after a crash or kill resumes, and a
    finished run does nothing. Records whose documents are held-out Wikipedia paragraphs
    are dropped.

    \b
    Example:
      clara train scp data/pretrain.jsonl --out ckpt/scp
      clara train instruct data/instruct.jsonl --init-from ckpt/scp --out ckpt/instruct
      clara train e2e data/e2e.jsonl --init-from ckpt/instruct --out ckpt/e2e
    """
    from .train import TrainConfig
    from .train import train as run_train

    slow_dtype_warning(dtype, device)
    cfg = TrainConfig(stage=stage, data=data, out=out, init_from=init_from, base_model=base_model,
                      doc_max_length=doc_max_length, compr_rate=compr_rate, steps=steps, epochs=epochs,
                      batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
                      schedule=schedule, save_every=save_every, top_k=top_k, dropout=dropout, dtype=dtype,
                      device=device, seed=seed, max_examples=max_examples, pack=pack)
    result = run_train(cfg, progress=not as_json, stop_at=stop_at_step)
    if as_json:
        emit(result.to_dict())
    else:
        click.echo(f"{stage}: step {result.step}/{result.total_steps}, loss {result.loss_first} -> "
                   f"{result.loss_last}, {result.examples_per_s} examples/s, {result.tokens_per_s} tokens/s; "
                   f"model in {result.out}" + ("" if result.done else " (not finished: rerun to resume)"))


def main() -> None:
    cli(prog_name="clara")


if __name__ == "__main__":
    sys.exit(main())
