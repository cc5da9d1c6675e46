"""Helpers shared by the `clara` commands (cli.py, cli_train.py): JSON output, the shared option
decorators, opening the store and loading the model. No heavy imports at module level."""

from __future__ import annotations

import json
import sys

import click

from .errors import ClaraError, NoSourcesError, PartialFailure, UsageError
from .jsonl import BadJsonLine, json_lines, parse_json_line
from .progress import notice


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


def expand_option(f):
    """--expand N: selective expansion (ours), shared by ask and eval."""
    return click.option("--expand", default=None, type=click.IntRange(0), metavar="N",
                        help="Read the raw text of the N best chunks and the memory tokens of the others "
                             "[the model's setting: see `clara info`; 0 for Apple's checkpoints].")(f)


# ---------------------------------------------------------------------------------------------
# search and ask: questions from stdin, the batch exit code, sources as people name them


def read_questions(arg: str, what: str = "question") -> tuple[list[tuple[str, str]], int]:
    """([(where, text)], rejected): one argument, or `-`: JSON Lines with "question" or "query"
    (plain lines also accepted) on stdin. A bad line is named on stderr and skipped; a blank
    argument is a usage error."""
    if arg != "-":
        if not arg.strip():
            raise UsageError(f"empty {what}")
        return [("", arg)], 0
    out, rejected = [], 0
    for where, line in json_lines(sys.stdin, "<stdin>"):
        line = line.strip()
        text, why = line, None
        if line.startswith("{"):
            try:
                obj = parse_json_line(line, where)
            except BadJsonLine as err:
                obj, why = None, str(err).removeprefix(f"{where}: ")
            if isinstance(obj, dict):
                text = next((obj[key] for key in ("question", "query") if isinstance(obj.get(key), str)), None)
                if text is None:
                    why = 'expected {"question": "..."} or {"query": "..."}'
                elif not text.strip():
                    why = f"empty {what}"
            elif why is None:
                why = "expected a JSON object"
        if why:
            click.echo(f"clara: rejected: {where}: {why}", err=True)
            rejected += 1
        else:
            out.append((where, text))
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
