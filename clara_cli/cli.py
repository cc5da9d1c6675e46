"""`clara`: thin click commands over the library. Results on stdout (text, or JSON Lines with
--json); notices, progress and errors on stderr; documented exit codes (errors.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .cli_options import (  # noqa: F401  (shared helpers, re-exported from here as before)
    compression_options,
    emit,
    expand_option,
    finish_batch,
    json_option,
    load_model,
    max_file_size_option,
    min_score_option,
    model_options,
    no_wait_option,
    open_store,
    plural,
    print_sources,
    read_questions,
    refuse_missing_inputs,
    rejected_error,
    retrieval_options,
    slow_dtype_warning,
    source_label,
)
from .errors import ClaraError, NoSourcesError
from .progress import notice

DEFAULT_STORE = "./clara-store"
STORELESS_COMMANDS = {"convert", "train"}  # every other command takes --store after its name too


def _set_store(ctx, param, value):
    """`clara CMD --store DIR` overrides `clara --store DIR CMD` and CLARA_STORE."""
    if value is not None:
        ctx.ensure_object(dict)["store"] = Path(value)
    return value


def store_option() -> click.Option:
    return click.Option(["--store"], expose_value=False, callback=_set_store, metavar="DIR",
                        type=click.Path(file_okay=False),
                        help="Store directory (also accepted before the command; env CLARA_STORE).")


class ClaraGroup(click.Group):
    """Turns library errors into one line on stderr and their exit code."""

    def add_command(self, cmd, name=None):
        """Commands that use a store also take --store after their name (as llm's commands do)."""
        if (name or cmd.name) not in STORELESS_COMMANDS and not any(p.name == "store" for p in cmd.params):
            cmd.params.append(store_option())
        super().add_command(cmd, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClaraError as err:  # "no matching sources" is an outcome, not an error
            click.echo(f"clara: {'' if isinstance(err, NoSourcesError) else 'error: '}{err}", err=True)
            ctx.exit(err.exit_code)
        except BrokenPipeError:  # `clara ... | head`: the reader has all it wanted, not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail again
            ctx.exit(0)
        except OSError as err:  # a full disk, a folder we may not write: one line, not a traceback
            where = f"{err.filename}: " if err.filename else ""
            click.echo(f"clara: error: {where}{err.strerror or err} (the last committed snapshot is intact)",
                       err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("clara: interrupted", err=True)
            ctx.exit(130)


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
    # Set here, read when transformers is imported (lazily: commands without a model never import it).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx.ensure_object(dict)
    ctx.obj["store"] = Path(store)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--overlap", default=0, show_default=True, type=click.IntRange(0), help="Tokens shared by consecutive chunks.")
@click.option("--delete-missing", is_flag=True, help="Drop chunks whose source file is gone.")
@click.option("--follow-symlinks", is_flag=True, help="Follow symlinks that leave the folder given.")
@max_file_size_option
@no_wait_option
@model_options
@json_option
@click.pass_context
def ingest(ctx, paths, overlap, delete_missing, follow_symlinks, max_file_size, no_wait, model_spec, base_model, device,
           dtype, attn, as_json):
    """Read documents into the store, chunked to the model's doc_max_length.

    PATHS are files, folders (recursive), globs, or - for JSON Lines on stdin
    ({"text": ..., "id"?: ..., "metadata"?: {...}}). Formats: text (.txt .md .rst .org .tex,
    source code; legacy encodings detected), .html, .pdf (per page), .docx, .jsonl .csv
    .parquet; other files are skipped by name. Unchanged input adds nothing; a changed file
    replaces its chunks.

    \b
    Example:
      clara ingest notes/ 'papers/*.md'
      cat docs.jsonl | clara ingest -
    """
    from .api import model_spec_of
    from .checkpoint import model_identity
    from .compress import model_info
    from .ingest import ingest as run_ingest

    refuse_missing_inputs(ctx, paths)
    store = open_store(ctx, create=True)
    spec = model_spec_of(store.snapshot(), model_spec)
    found = model_identity(None if spec == "default" else spec, base_model)  # a tokenizer, not the weights
    if found is None:  # Apple's format: only the weights tell its identity
        model = load_model(store.snapshot(), model_spec, base_model, "cpu", "fp32" if dtype == "auto" else dtype,
                           warn_untrained=False)
        found = model_info(model), model.tokenizer
    info, tokenizer = found
    stdin = sys.stdin if "-" in paths else None
    report = run_ingest(store, list(paths), tokenizer, max_tokens=info["doc_max_length"],
                        overlap=overlap, delete_missing=delete_missing, stdin=stdin,
                        model_info=info, progress=not as_json, follow_symlinks=follow_symlinks,
                        wait=not no_wait, max_file_size=max_file_size)
    for bad in report.rejected:
        click.echo(f"clara: rejected: {bad.message}", err=True)
    for skip in report.skipped:
        click.echo(f"clara: skipped: {skip.message}", err=True)
    summary = {"added": report.added, "changed": report.changed, "removed": report.removed,
               "unchanged": report.unchanged, "chunks_added": report.chunks_added,
               "rejected": len(report.rejected), "skipped": len(report.skipped)}
    if as_json:
        emit(summary)
    else:
        click.echo(f"{report.added} added, {report.changed} changed, {report.removed} removed, "
                   f"{report.unchanged} unchanged documents; {report.chunks_added} new chunks"
                   + (f"; {plural(len(report.rejected), 'input')} rejected" if report.rejected else "")
                   + (f"; {len(report.skipped)} skipped" if report.skipped else ""))
    if report.rejected:
        raise rejected_error(len(report.rejected))


@cli.command()
@compression_options
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Run as a Ray Data job (model-holding actors); ADDRESS of a cluster, or a local one.")
@click.option("--ray-actors", default=None, type=click.IntRange(1), metavar="N",
              help="Ray actors (default: one per GPU, else one per 2 CPUs of the cluster).")
@click.option("--recompress", is_flag=True,
              help="Drop every memory row and the indexes, bind the store to --model (default: the "
                   "default model) and compress all chunks again, then index: after a model upgrade.")
@no_wait_option
@model_options
@json_option
@click.pass_context
def compress(ctx, batch_size, memory_dtype, ray_address, ray_actors, recompress, no_wait, model_spec, base_model,
             device, dtype, attn, as_json):
    """Compress every chunk that has no memory yet into memory tokens.

    Commits after every batch: a killed run loses at most the batch in flight, a rerun continues.
    --recompress moves a store to another model (its chunks are kept, not re-read).

    \b
    Example:
      clara compress --batch-size 64 --dtype bf16
      clara compress --recompress          # after an upgrade changed the default model (exit 5)
    """
    from .compress import compress_store, forget_memory
    from .model import device_name, dtype_name

    store = open_store(ctx)
    model = load_model(None if recompress else store.snapshot(), model_spec, base_model, device, dtype, attn)
    if recompress:
        dropped = forget_memory(store, wait=not no_wait)
        notice(f"recompressing: {dropped} memory rows and the indexes dropped; the store follows "
               f"model {model.fingerprint} ({model.source})")
    if ray_address:
        from .compress_ray import compress_store_ray

        report = compress_store_ray(store, model, address=ray_address, batch_size=batch_size,
                                    memory_dtype=memory_dtype, actors=ray_actors, progress=not as_json,
                                    wait=not no_wait, base_model=base_model)
    else:
        report = compress_store(store, model, batch_size=batch_size, memory_dtype=memory_dtype,
                                progress=not as_json, wait=not no_wait)
    if recompress:
        from .index import update_index

        update_index(store, progress=not as_json, wait=not no_wait)
    if as_json:
        emit(report.to_dict())
    else:
        rate = report.compressed / report.seconds if report.seconds else 0.0
        # whose speed: this machine's in the compute dtype (Ray actors may run elsewhere)
        where = "" if ray_address else f" [{device_name(model.device)}, {dtype_name(model.dtype)}]"
        click.echo(f"compressed {report.compressed} chunks in {report.seconds:.1f} s ({rate:.1f} chunks/s{where}), "
                   f"{report.batches} batches, memory stored as {report.memory_dtype}")


@cli.command()
@click.option("--rebuild", is_flag=True, help="Build from scratch instead of updating.")
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf", "hnsw"]), default="auto", show_default=True,
              help="flat: exact scan; ivf/hnsw: ANN on a compact vector + exact rerank; auto: flat for "
                   "small stores (an explicit kind sticks until changed).")
@click.option("--nlist", default=None, type=click.IntRange(1), help="IVF lists (default ~2*sqrt(rows)).")
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
@max_file_size_option
@compression_options
@click.option("-q", "--quiet", is_flag=True,
              help="No progress, notes or summary: only rejected inputs and errors, on stderr (for cron).")
@no_wait_option
@model_options
@json_option
@click.pass_context
def update(ctx, paths, overlap, delete_missing, follow_symlinks, max_file_size, batch_size, memory_dtype, quiet, no_wait,
           model_spec, base_model, device, dtype, attn, as_json):
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

    refuse_missing_inputs(ctx, paths)
    store = open_store(ctx, create=True)
    model = load_model(store.snapshot(), model_spec, base_model, device, dtype, attn, warn_untrained=not quiet)
    report = run_update(store, list(paths), model, overlap=overlap, delete_missing=delete_missing,
                        follow_symlinks=follow_symlinks, stdin=sys.stdin if "-" in paths else None,
                        batch_size=batch_size, memory_dtype=memory_dtype, progress=not (quiet or as_json),
                        wait=not no_wait, max_file_size=max_file_size, notify=not quiet)
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
                   f"{report.compressed} compressed"
                   + (f" ({report.duplicates} duplicates: memory reused)" if report.duplicates else "")
                   + f", {report.indexed} indexed; version {report.version} in {report.seconds:.1f} s"
                   + (f"; {plural(len(report.rejected), 'input')} rejected" if report.rejected else "")
                   + (f"; {len(report.skipped)} skipped" if report.skipped else ""))
    if report.rejected:
        raise rejected_error(len(report.rejected))


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


@cli.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1))
@min_score_option
@retrieval_options
@model_options
@json_option
@click.pass_context
def search(ctx, query, k, min_score, retriever_mode, nprobe, ef_search, rerank, model_spec, base_model, device, dtype,
           attn, as_json):
    """Find the chunks closest to QUERY (- reads JSON Lines queries from stdin).

    Exit code 7 when nothing matches (bm25 finds no query word; or no hit reaches --min-score).

    \b
    Example:
      clara search "tallest building in Paris" -k 3 --json
      printf '{"query": "reef"}\\n{"query": "tower"}\\n' | clara search - --json
    """
    from .answer import Retriever, select_sources
    from .answer import search as run_search

    queries, rejected = read_questions(query, "query")
    snapshot = open_store(ctx).snapshot()
    model = None if retriever_mode == "bm25" else load_model(snapshot, model_spec, base_model, device, dtype, attn)
    retriever = Retriever(snapshot, retriever_mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    results = run_search(snapshot, model, [q for _, q in queries], k, retriever) if queries else []
    unmatched = []
    for (where, q), hits in zip(queries, results, strict=True):
        hits = select_sources(hits, min_score)
        if not hits:
            unmatched.append(where)
        if as_json:
            for h in hits:
                emit({"query": q, **h.to_dict()} if query == "-" else h.to_dict())
        elif hits:
            if query == "-":
                click.echo(q)
            print_sources(hits)
    finish_batch(query == "-", rejected, unmatched, min_score)


@cli.command()
@click.argument("question")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1), help="Chunks read per answer.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@expand_option
@min_score_option
@retrieval_options
@model_options
@json_option
@click.pass_context
def ask(ctx, question, k, max_new_tokens, expand, min_score, retriever_mode, nprobe, ef_search, rerank, model_spec, base_model,
        device, dtype, attn, as_json):
    """Answer QUESTION from the compressed store, with sources (- reads JSON Lines from stdin).

    Without matching sources (see --min-score) nothing is generated: "no matching sources"
    on stderr, exit code 7 (--json: "answer": null). A question too long for the generator's
    context is cut to fit, with a notice.

    \b
    Example:
      clara ask "When was the Eiffel Tower completed?"
      echo '{"question": "Who wrote Hamlet?"}' | clara ask - --json
    """
    from .answer import Retriever, iter_answers

    questions, rejected = read_questions(question)
    snapshot = open_store(ctx).snapshot()
    model = load_model(snapshot, model_spec, base_model, device, dtype, attn)
    retriever = Retriever(snapshot, retriever_mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
    unmatched = []
    wheres = [where for where, _ in questions]
    answers = iter_answers(snapshot, model, [q for _, q in questions], k, max_new_tokens, retriever,
                           min_score=min_score, expand=expand)
    for where, answer in zip(wheres, answers, strict=True):
        if answer.answer is None:
            unmatched.append(where)
        if as_json:
            emit(answer.to_dict())
        elif answer.answer is not None:
            if question == "-":
                click.echo(answer.question)
            click.echo(answer.answer or "(empty answer)")
            click.echo("Sources:")
            print_sources(answer.sources)
    finish_batch(question == "-", rejected, unmatched, min_score)


@cli.command()
@json_option
@click.pass_context
def info(ctx, as_json):
    """Model, counts, sizes and compression ratio of the store.

    \b
    Example:
      clara info --json
    """
    from .api import store_info

    with open_store(ctx).snapshot() as snapshot:
        out = store_info(snapshot)
    if as_json:
        emit(out)
    else:
        for key, value in out.items():
            click.echo(f"{key:>23}: {value}")


def document_label(doc) -> str:
    """The id, and the file a record came from when its id does not say."""
    plain = doc.doc_id == doc.source or doc.doc_id.startswith(doc.source + "#") or doc.source in ("", "<stdin>")
    return doc.doc_id if plain else f"{doc.doc_id}  ({doc.source})"


@cli.command("ls")
@click.argument("names", nargs=-1, metavar="[ID|PATH]...")
@json_option
@click.pass_context
def ls_cmd(ctx, names, as_json):
    """List the store's documents with their chunk counts, or those chosen by id or path prefix.

    A PATH chooses every document read from it or from under it (JSONL/CSV/Parquet records of a
    file included): `clara ls NAME` shows what `clara rm NAME` would remove. Exit code 1 when a
    name chooses nothing.

    \b
    Example:
      clara ls docs/
      clara ls --json | jq -r .doc_id
    """
    from .documents import list_documents

    with open_store(ctx).snapshot() as snapshot:
        docs, unmatched = list_documents(snapshot, list(names) or None)
    for doc in docs:
        if as_json:
            emit(doc.to_dict())
        else:
            done = "" if doc.compressed == doc.chunks else f" ({doc.compressed} compressed)"
            click.echo(f"{doc.chunks:>6}{done}  {document_label(doc)}")
    if not as_json:
        click.echo(f"{plural(len(docs), 'document')}, {plural(sum(d.chunks for d in docs), 'chunk')}")
    if unmatched:
        for name in unmatched:
            click.echo(f"clara: no document matches {name}", err=True)
        raise ClaraError(f"{plural(len(unmatched), 'name')} matched no document")


@cli.command("rm")
@click.argument("names", nargs=-1, metavar="[ID|PATH]...")
@click.option("--all", "everything", is_flag=True,
              help="Allow removing every document (needed when the names choose them all, or none are given).")
@no_wait_option
@json_option
@click.pass_context
def rm_cmd(ctx, names, everything, no_wait, as_json):
    """Remove documents by id or path prefix, with their chunks and memory; the index follows.

    One committed write, like every write (the previous snapshot stays readable until `clara gc`).
    Removing every document needs --all. Exit codes: 0 removed, 1 a name matched no document
    (the others are removed), 2 everything chosen without --all, 4 store busy (--no-wait).

    \b
    Example:
      clara ls notes/2023/          # what would go
      clara rm notes/2023/
      clara rm 'journal.jsonl#12' entry-42
    """
    from .documents import remove_documents

    report = remove_documents(open_store(ctx), list(names), everything=everything, wait=not no_wait)
    if as_json:
        emit(report.to_dict())
    else:
        click.echo(f"removed {plural(report.removed, 'document')} ({plural(report.chunks_removed, 'chunk')}); "
                   f"index: {report.index_removed} removed, {report.indexed} indexed; version {report.version}")
    if report.unmatched:
        for name in report.unmatched:
            click.echo(f"clara: no document matches {name}", err=True)
        raise ClaraError(f"{plural(len(report.unmatched), 'name')} matched no document (the others were removed)")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: a free one, announced on stderr).")
@click.option("--load-model", is_flag=True, help="Load the model at start instead of at the first request "
                                                 "that needs it.")
@click.option("--mcp", "mcp", is_flag=True, help="Serve MCP tools (search, ask, info) on stdin/stdout instead of HTTP.")
@model_options
@click.pass_context
def serve(ctx, host, port, load_model, mcp, model_spec, base_model, device, dtype, attn):
    """Serve the store over HTTP (JSON) or MCP, keeping the model loaded between requests.

    \b
    Endpoints: POST /search, POST /ask (the fields and JSON objects of `search`/`ask --json`),
    GET /info, GET /health; errors are {"error", "exit_code"} (README "Serving").
    Each request reads the last committed snapshot: `clara update` may run meanwhile.

    \b
    Example:
      clara serve --port 8000 &
      curl -s localhost:8000/ask -d '{"question": "Who built the Eiffel Tower?", "k": 3}'
      clara serve --mcp            # for assistants: MCP over stdio
    """
    from .api import ClaraStore

    store = ClaraStore(ctx.obj["store"], model=model_spec, base_model=base_model, device=device, dtype=dtype,
                       attn=attn)
    if load_model:
        store.load_model()
    if mcp:
        from .mcp_server import serve_mcp

        serve_mcp(store)
    else:
        from .serve import serve_http

        serve_http(store, host=host, port=port)


from .cli_train import convert, eval_cmd, synth, train  # noqa: E402  (the training and data commands)

for _command in (convert, eval_cmd, synth, train):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="clara")


if __name__ == "__main__":
    sys.exit(main())
