"""`clara`: thin click commands over the library. Results on stdout (text, or JSON Lines with
--json); notices, progress and errors on stderr; documented exit codes (errors.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import ClaraError, NoSourcesError, PartialFailure, UsageError
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


def plural(n: int, word: str) -> str:
    """"1 input", "3 inputs"."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def rejected_error(n: int, rest: str = "the rest is committed") -> PartialFailure:
    """Exit code 3: n inputs were rejected (each named on stderr), the good ones were done."""
    return PartialFailure(f"{plural(n, 'input')} {'was' if n == 1 else 'were'} rejected ({rest})")


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
    from .answer import DEFAULT_RETRIEVER, RETRIEVER_MODES

    f = click.option("--retriever", "retriever_mode", type=click.Choice(RETRIEVER_MODES),
                     default=DEFAULT_RETRIEVER, show_default=True,
                     help="latent: the query reasoner's (centred) memory cosine; bm25: the store's BM25; "
                          "hybrid: both, rank-fused.")(f)
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


def _size_arg(ctx, param, value):
    if value is None:
        return None
    from .readers import parse_size

    try:
        return parse_size(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def max_file_size_option(f):
    """--max-file-size on the commands that read files."""
    return click.option("--max-file-size", default=None, metavar="SIZE", callback=_size_arg,
                        help="Skip document files larger than SIZE (500K, 20M, 1G; 0: no cap). Default: 10M "
                             "for text/HTML/code, 100M for PDF/DOCX; JSONL/CSV/Parquet are not capped.")(f)


def refuse_missing_inputs(ctx, paths) -> None:
    """Before a store is created: inputs that name nothing are rejected and no store is made."""
    from .ingest import missing_inputs
    from .store import MANIFEST

    if (ctx.obj["store"] / MANIFEST).is_file() or "-" in paths:
        return
    missing = missing_inputs(paths)
    if len(missing) == len(paths):
        for bad in missing:
            click.echo(f"clara: rejected: {bad.message}", err=True)
        raise PartialFailure(f"nothing to read, so no store was created at {ctx.obj['store']}")


def open_store(ctx, create: bool = False):
    """The store of --store/CLARA_STORE; a new one is one folder in an existing folder (as mkdir)."""
    from .store import Store

    root = ctx.obj["store"]
    if create and not root.exists() and not root.parent.is_dir():
        raise ClaraError(f"cannot create a store at {root}: {root.parent} does not exist (create it first)")
    return Store.open(root, create=create)


def slow_dtype_warning(dtype: str, device: str) -> None:
    from .model import slow_dtype_notice

    line = slow_dtype_notice(dtype, device)
    if line:
        notice(line)


def load_model(snapshot, model_spec, base_model, device, dtype, attn="auto", warn_untrained: bool = True):
    """The model named by --model, else the one the store is bound to, else the default."""
    from .api import load_model as load

    slow_dtype_warning(dtype, device)
    return load(snapshot, model_spec, base_model, device, dtype, attn, warn_untrained)


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
    from .compress import model_info
    from .ingest import ingest as run_ingest

    refuse_missing_inputs(ctx, paths)
    store = open_store(ctx, create=True)
    model = load_model(store.snapshot(), model_spec, base_model, "cpu", "fp32" if dtype == "auto" else dtype,
                       warn_untrained=False)
    stdin = sys.stdin if "-" in paths else None
    report = run_ingest(store, list(paths), model.tokenizer, max_tokens=model.config.doc_max_length,
                        overlap=overlap, delete_missing=delete_missing, stdin=stdin,
                        model_info=model_info(model), progress=not as_json, follow_symlinks=follow_symlinks,
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
        click.echo(f"compressed {report.compressed} chunks in {report.seconds:.1f} s ({rate:.1f} chunks/s), "
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


def read_questions(arg: str, what: str = "question") -> tuple[list[tuple[str, str]], int]:
    """([(where, text)], rejected): one argument, or `-`: JSON Lines with "question" or "query"
    (plain lines also accepted) on stdin. A bad line is named on stderr and skipped; a blank
    argument is a usage error."""
    if arg != "-":
        if not arg.strip():
            raise UsageError(f"empty {what}")
        return [("", arg)], 0
    out, rejected = [], 0
    for n, line in enumerate(sys.stdin, start=1):
        line = line.strip()
        if not line:
            continue
        text, why = line, None
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                obj, why = None, f"malformed JSON ({err.msg})"
            if isinstance(obj, dict):
                text = next((obj[key] for key in ("question", "query") if isinstance(obj.get(key), str)), None)
                if text is None:
                    why = 'expected {"question": "..."} or {"query": "..."}'
                elif not text.strip():
                    why = f"empty {what}"
            elif why is None:
                why = "expected a JSON object"
        if why:
            click.echo(f"clara: rejected: <stdin>:{n}: {why}", err=True)
            rejected += 1
        else:
            out.append((f"<stdin>:{n}", text))
    if not out and not rejected:
        raise UsageError(f"no {what}s on stdin")
    return out, rejected


def finish_batch(batch: bool, rejected: int, unmatched: list[str], min_score: float | None) -> None:
    """The exit code once every question was done: 3 when stdin lines were rejected, else 7 when
    a question found no matching sources (in a batch each is named on stderr), else 0."""
    floor = f" scoring at least {min_score:g}" if min_score is not None else ""
    if batch:
        for where in unmatched:
            click.echo(f"clara: no matching sources{floor}: {where}", err=True)
    if rejected:
        raise rejected_error(rejected, "the rest was answered")
    if unmatched:
        raise NoSourcesError(f"no matching sources{floor}" + (f" for {plural(len(unmatched), 'input')}"
                                                              if batch else ""))


def source_label(hit) -> str:
    """Where a hit comes from, as people name it: the file, a record's id or line in its
    JSONL/CSV/Parquet file, or the id of a document read from stdin."""
    if hit.source in ("", "<stdin>"):
        return hit.doc_id
    if hit.doc_id == hit.source or hit.doc_id.startswith(hit.source + "#"):  # a file; a record by line/row
        return hit.doc_id
    return f"{hit.source}[{hit.doc_id}]"


def print_sources(hits) -> None:
    for h in hits:
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 160 else snippet[:157] + "..."
        click.echo(f"  [{h.rank}] {source_label(h)}:{h.start}-{h.end} (score {h.score:.3f})\n      {snippet}")


def min_score_option(f):
    return click.option("--min-score", default=None, type=float, metavar="SCORE",
                        help="Ignore hits scoring below SCORE (latent: cosine; bm25: BM25 score; hybrid: "
                             "fused rank score). None left: no matching sources, exit code 7.")(f)


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


def expand_option(f):
    """--expand N: selective expansion (ours), shared by ask and eval."""
    return click.option("--expand", default=None, type=click.IntRange(0), metavar="N",
                        help="Read the raw text of the N best chunks and the memory tokens of the others "
                             "[the model's setting: see `clara info`; 0 for Apple's checkpoints].")(f)


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
@click.argument("stage", type=click.Choice(["scp", "instruct", "e2e", "retrieval"]))
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
@click.option("--tau", default=0.05, show_default=True, type=click.FloatRange(0, min_open=True),
              help="retrieval: InfoNCE temperature.")
@click.option("--query-word-dropout", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="retrieval: drop each question word with this probability (augmentation).")
@click.option("--stop-at-step", default=None, type=click.IntRange(1), metavar="N",
              help="Stop at step N with a checkpoint, as an interruption would (the schedule keeps its "
                   "full length); rerun without it to continue. For time-boxed runs.")
@json_option
def train(stage, data, out, init_from, base_model, steps, epochs, batch_size, grad_accum, lr, warmup_ratio,
          schedule, save_every, top_k, dropout, pack, doc_max_length, compr_rate, dtype, device, seed,
          max_examples, tau, query_word_dropout, stop_at_step, as_json):
    """Train one CLaRa stage on DATA (official JSONL): scp, then instruct, then e2e.

    `retrieval` (ours, not the paper's) trains the query reasoner alone with a contrastive
    loss against frozen, centred document memories (docs/TRAINING.md, "Retrieval"); it reads
    the e2e format and leaves the development split of the training paragraphs out.

    Writes a model to --out that every command loads with --model. Checkpoints every
    --save-every steps; rerunning the same command after a crash or kill resumes, and a
    finished run does nothing. Records whose documents are held-out Wikipedia paragraphs
    are dropped.

    \b
    Example:
      clara train scp data/pretrain.jsonl --out ckpt/scp
      clara train instruct data/instruct.jsonl --init-from ckpt/scp --out ckpt/instruct
      clara train e2e data/e2e.jsonl --init-from ckpt/instruct --out ckpt/e2e
      clara train retrieval data/retrieval.jsonl --init-from ckpt/e2e --out ckpt/retrieval
    """
    from .train import TrainConfig
    from .train import train as run_train

    slow_dtype_warning(dtype, device)
    cfg = TrainConfig(stage=stage, data=data, out=out, init_from=init_from, base_model=base_model,
                      doc_max_length=doc_max_length, compr_rate=compr_rate, steps=steps, epochs=epochs,
                      batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_ratio=warmup_ratio,
                      schedule=schedule, save_every=save_every, top_k=top_k, dropout=dropout, dtype=dtype,
                      device=device, seed=seed, max_examples=max_examples, pack=pack, tau=tau,
                      query_word_dropout=query_word_dropout)
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
