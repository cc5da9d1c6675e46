"""The Python API: a store with its model loaded once, for scripts, `clara serve` and MCP.

    import clara_cli
    s = clara_cli.open_store("clara-store")
    for hit in s.search("tallest tower in Paris", k=3, retriever="bm25"):
        print(hit.score, hit.source, hit.text)
    answer = s.ask("When was the Eiffel Tower completed?")
    print(answer.answer, [h.source for h in answer.sources])
    s.update(["docs/"])

Every call reads the store's last committed snapshot (a `clara update` running meanwhile is
seen by the next call, never half-way); the retrievers of a snapshot are kept while it is
current. The model loads at the first call that needs it (or `load_model()`); one call at a
time uses it, bm25 searches run alongside. Errors are `clara_cli.errors.ClaraError`s with the
CLI's exit codes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answer import DEFAULT_RETRIEVER, RETRIEVER_MODES, Answer, Hit, Retriever, iter_answers
from .answer import search as search_snapshot
from .errors import UsageError
from .progress import notice

if TYPE_CHECKING:
    from .model import ClaraModel
    from .store import Snapshot, Store
    from .update import UpdateReport

__all__ = ["ClaraStore", "open_store", "load_model", "store_info", "Hit", "Answer"]


def model_spec_of(snapshot: Snapshot | None, model_spec: str | None = None) -> str:
    """The model a command uses: --model, else the one the store is bound to, else the default."""
    bound = snapshot.model if snapshot is not None else None
    return model_spec or (bound.get("spec") if bound else None) or "default"


def load_model(snapshot: Snapshot | None, model_spec: str | None = None, base_model: str | None = None,
               device: str = "auto", dtype: str = "auto", attn: str = "auto",
               warn_untrained: bool = True) -> ClaraModel:
    """The model named by model_spec, else the one the store is bound to, else the default."""
    from transformers.utils import logging as hf_logging

    from .checkpoint import load_model as load_checkpoint

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    spec = model_spec_of(snapshot, model_spec)
    model = load_checkpoint(None if spec == "default" else spec, device=device, dtype=dtype,
                            base_model=base_model, attn=attn)
    if attn == "triton":
        from clara_kernels import backend

        if backend(model.device) != "triton":
            notice(f"--attn triton: Triton needs a CUDA GPU; on {model.device.type} its torch fallback runs "
                   "instead (slower than --attn sdpa)")
    if warn_untrained and not model.trained:
        notice("the default model has fresh, untrained adapters: retrieval and answers are not meaningful "
               "until trained adapters ship (see README)")
    return model


def base_model_name(record: dict) -> str | None:
    """The base LM of the store's model: as recorded at compression, else read from the
    checkpoint's metadata (no weights loaded); None when the checkpoint is gone."""
    if record.get("base_model"):
        return record["base_model"]
    from .checkpoint import DEFAULT_MODEL_DIR

    spec = record.get("spec") or "default"
    folder = DEFAULT_MODEL_DIR if spec == "default" else Path(spec)
    try:
        if (folder / "clara.json").is_file():
            return json.loads((folder / "clara.json").read_text())["config"]["base_model"]
        return json.loads((folder / "config.json").read_text())["decoder_model_name"]  # Apple's format
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_info(snapshot: Snapshot) -> dict:
    """Model, counts, sizes and compression ratio of one snapshot (`clara info --json`)."""
    stats = snapshot.stats()
    model = snapshot.model or {}
    chunks = snapshot.chunks(columns=["n_tokens"]) if stats.get("chunks") else None
    text_tokens = int(sum(chunks.column("n_tokens").to_pylist())) if chunks is not None else 0
    n_mem = int(model.get("n_mem", 0))
    ratio = (text_tokens / (stats.get("chunks", 0) * n_mem)) if n_mem and stats.get("chunks") else None
    doc_len = int(model.get("doc_max_length", 0))
    dtypes = sorted({e.get("dtype", "?") for e in snapshot.files("memory")})
    return {"store": str(snapshot.root), "version": snapshot.version,
            "model": model.get("spec"), "fingerprint": model.get("fingerprint"),
            "base_model": base_model_name(model) if model else None,
            "compression_rate": doc_len // n_mem if n_mem and doc_len else None,
            "memory_tokens_per_chunk": n_mem or None,
            "memory_dtype": ",".join(dtypes) if dtypes else None,
            "documents": stats.get("documents", 0), "chunks": stats.get("chunks", 0),
            "compressed": stats.get("compressed", 0), "bytes": stats["total_bytes"],
            "bytes_by_kind": stats["bytes"],
            "text_tokens": text_tokens, "memory_tokens": stats.get("compressed", 0) * n_mem,
            "compression_ratio": round(ratio, 2) if ratio else None,
            "indexed": (snapshot.manifest.get("index") or {}).get("ntotal", 0)}


@dataclass
class _Reader:
    snapshot: Snapshot
    retriever: Retriever
    users: int = 0


class _Readers:
    """Retrievers per (snapshot version, options), shared by concurrent calls. A call takes a
    fresh snapshot; when a newer version appears, older readers are closed (their leases given
    back) once no call uses them."""

    def __init__(self, store: Store):
        self.store = store
        self.lock = threading.Lock()
        self.readers: dict[tuple, _Reader] = {}

    @contextlib.contextmanager
    def use(self, mode: str, nprobe: int | None, ef_search: int | None,
            rerank: int | None) -> Iterator[tuple[Snapshot, Retriever]]:
        fresh = self.store.snapshot()
        key = (fresh.version, mode, nprobe, ef_search, rerank)
        with self.lock:
            reader = self.readers.get(key)
            if reader is not None:
                reader.users += 1
        if reader is None:
            try:
                retriever = Retriever(fresh, mode, nprobe=nprobe, ef_search=ef_search, rerank=rerank)
            except BaseException:
                fresh.close()
                raise
            with self.lock:
                reader = self.readers.setdefault(key, _Reader(fresh, retriever))
                reader.users += 1
        if reader.snapshot is not fresh:
            fresh.close()
        try:
            yield reader.snapshot, reader.retriever
        finally:
            with self.lock:
                reader.users -= 1
                newest = max(k[0] for k in self.readers)
                for k, r in list(self.readers.items()):
                    if k[0] < newest and r.users == 0:
                        r.snapshot.close()
                        del self.readers[k]

    def close(self) -> None:
        with self.lock:
            for r in self.readers.values():
                r.snapshot.close()
            self.readers.clear()


def _check_options(k: int, retriever: str) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise UsageError(f"k must be a positive integer, not {k!r}")
    if retriever not in RETRIEVER_MODES:
        raise UsageError(f"unknown retriever {retriever!r} (use {', '.join(RETRIEVER_MODES)})")


class ClaraStore:
    """One store and (lazily) its model: search, ask, update, info."""

    def __init__(self, path: str | Path, model: str | None = None, base_model: str | None = None,
                 device: str = "auto", dtype: str = "auto", attn: str = "auto", create: bool = False):
        from .store import Store

        self.store = Store.open(path, create=create)
        self.path = self.store.root
        self.model_spec, self.base_model, self.device, self.dtype, self.attn = model, base_model, device, dtype, attn
        self._model: ClaraModel | None = None
        self._load_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward pass at a time: adapters are switched per call
        self._readers = _Readers(self.store)

    def __repr__(self) -> str:
        return f"ClaraStore({str(self.path)!r})"

    def __enter__(self) -> ClaraStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Give back the snapshot leases held by cached readers."""
        self._readers.close()

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    def load_model(self) -> ClaraModel:
        """The model (loaded once, at the first call that needs it)."""
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    with self.store.snapshot() as snapshot:
                        self._model = load_model(snapshot, self.model_spec, self.base_model, self.device,
                                                 self.dtype, self.attn)
        return self._model

    def info(self) -> dict:
        """What `clara info --json` prints, for the current snapshot."""
        with self.store.snapshot() as snapshot:
            return store_info(snapshot)

    def search(self, query: str | Sequence[str], k: int = 5, retriever: str = DEFAULT_RETRIEVER,
               nprobe: int | None = None, ef_search: int | None = None,
               rerank: int | None = None) -> list[Hit] | list[list[Hit]]:
        """Top-k chunks (hits with .text, .score, .source, ...) for a query, or a list per query
        for a list of queries. retriever: latent (the query reasoner), bm25 (no model), hybrid."""
        _check_options(k, retriever)
        queries = [query] if isinstance(query, str) else list(query)
        with self._readers.use(retriever, nprobe, ef_search, rerank) as (snapshot, reader):
            if retriever == "bm25":  # as `clara search --retriever bm25`: no model, no model check
                results = search_snapshot(snapshot, None, queries, k, reader)
            else:
                model = self.load_model()
                with self._model_lock:
                    results = search_snapshot(snapshot, model, queries, k, reader)
        return results[0] if isinstance(query, str) else results

    def ask(self, question: str | Sequence[str], k: int = 5, max_new_tokens: int = 64,
            retriever: str = DEFAULT_RETRIEVER, nprobe: int | None = None, ef_search: int | None = None,
            rerank: int | None = None, batch_size: int = 8, min_score: float | None = None,
            expand: int | None = None) -> Answer | list[Answer]:
        """An answer (.answer, .sources, .context_tokens, .timings) read from the top-k memories;
        a list of answers for a list of questions. As `clara ask`: answer None without matching
        sources (min_score), expand N reads the N best sources as text (default: the model's)."""
        _check_options(k, retriever)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be a positive integer, not {max_new_tokens!r}")
        questions = [question] if isinstance(question, str) else list(question)
        model = self.load_model()
        with self._readers.use(retriever, nprobe, ef_search, rerank) as (snapshot, reader), self._model_lock:
            answers = list(iter_answers(snapshot, model, questions, k, max_new_tokens, reader, batch_size,
                                        min_score=min_score, expand=expand))
        return answers[0] if isinstance(question, str) else answers

    def update(self, paths: Sequence[str | Path], delete_missing: bool = False, overlap: int = 0,
               follow_symlinks: bool = False, batch_size: int = 32, memory_dtype: str | None = None,
               wait: bool = True) -> UpdateReport:
        """Ingest, compress and index paths incrementally (`clara update`); readers keep answering
        from the previous snapshot until it commits, and this object's own search/ask calls wait
        for one compression batch at most, not for the whole update."""
        from .update import update as run_update

        if isinstance(paths, (str, Path)):
            paths = [paths]
        model = self.load_model()
        return run_update(self.store, [str(p) for p in paths], model, overlap=overlap,
                          delete_missing=delete_missing, follow_symlinks=follow_symlinks,
                          batch_size=batch_size, memory_dtype=memory_dtype, progress=False, wait=wait,
                          model_lock=self._model_lock)


def open_store(path: str | Path = "clara-store", model: str | None = None, create: bool = False,
               **options: Any) -> ClaraStore:
    """Open a store for search/ask/update. model: a checkpoint folder (default: the model the
    store is bound to, else the embedded default); options: base_model, device, dtype, attn.
    create=True makes an empty store to `update` into."""
    return ClaraStore(path, model=model, create=create, **options)
