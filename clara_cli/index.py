"""Vector search over flattened memory (docs/design.md §1: cosine of n_mem*hidden vectors, centred
where the store's model has a retrieval center).

Kinds (`clara index --kind`):

* ``flat``: no ANN structure. A search scans the memory-mapped shards in their stored dtype
  (bf16/fp16/int8 are read as they are, never copied to fp32 whole) and reranks the best rows
  exactly in fp32. Nothing to build; every live row is always searched.
* ``ivf`` / ``hnsw``: FAISS over a *compact* vector per chunk gives candidates, which are then
  reranked exactly against the full flattened memory read from the shards. The compact vector
  is an uncentred PCA projection of the L2-normalised flattened memory (its inner products
  approximate the cosine; real CLaRa memory is strongly anisotropic, so a few hundred
  directions hold >99.8% of the energy — measured in benchmarks/index_scale.py, which also
  compares mean pooling and PQ codes).
* ``auto``: flat below ``AUTO_ANN_ROWS`` live rows, ``AUTO_KIND`` above (see the benchmark).

Index files are immutable like every data file: an update loads the current one, removes
deleted ids (IVF) or leaves them as tombstones hidden at search time (HNSW cannot delete;
rebuilt once tombstones pass ``TOMBSTONE_REBUILD``), adds the new rows, and writes a new file
under a new manifest. The PCA basis and IVF centroids are retrained when the store has grown
``RETRAIN_GROWTH``-fold since they were trained.

The scan and the exact rerank over the memory-mapped shards live in index_scan.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np
import torch

from .errors import ClaraError, CorruptDataError, UsageError
from .index_scan import (  # noqa: F401  (re-exported: the shard scan lives in index_scan)
    _centered,
    aligned_stats,
    block_scores,
    dequantize,
    estimate_mu,
    exact_rerank,
    row_stats,
    scan_topk,
)
from .progress import notice, progress_bar
from .store import Snapshot, Store
from .store.reader import MemoryReader

KINDS = ("flat", "ivf", "hnsw")
#: Below this many rows `auto` keeps flat: an exact scan is then within a few ms of the ANN
#: search and there is nothing to train (measured crossover in benchmarks/index_scale.py).
AUTO_ANN_ROWS = 20_000
AUTO_KIND = "ivf"
COMPACT_DIM = 256
TOMBSTONE_REBUILD = 0.10
RETRAIN_GROWTH = 4.0
PCA_SAMPLE_BYTES = 512 << 20
DEFAULTS = {"nprobe": 64, "ef_search": 128, "hnsw_m": 32, "ef_construction": 80, "rerank": 100}
# Options that change the file (a rebuild) vs. ones read at search time only.
BUILD_PARAMS = ("nlist", "hnsw_m", "ef_construction", "compact_dim")
SEARCH_PARAMS = ("nprobe", "ef_search", "rerank")


@dataclass
class IndexReport:
    kind: str
    added: int
    removed: int
    total: int
    rebuilt: bool
    seconds: float
    tombstones: int = 0
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IndexOptions:
    """What `clara index` was asked; None means "keep what the manifest has, else the default"."""

    kind: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    rerank: int | None = None
    compact_dim: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (*KINDS, "auto"):
            raise UsageError(f"unknown index kind {self.kind!r} (use flat, ivf, hnsw or auto)")


def flatten_normalized(memory: torch.Tensor, center: np.ndarray | None = None) -> np.ndarray:
    """[n, n_mem, hidden] -> [n, n_mem*hidden] fp32 rows of unit length (the method's cosine),
    after subtracting the model's retrieval center where it has one (model.retrieval_vectors)."""
    from .model import retrieval_vectors

    c = None if center is None else torch.from_numpy(center)
    return retrieval_vectors(memory, c).numpy()


def store_center(snapshot: Snapshot) -> np.ndarray | None:
    """The retrieval center [n_mem*hidden] fp32 the store's model left in it, or None
    (Apple's checkpoints, and models that score the plain flattened cosine)."""
    name = (snapshot.model or {}).get("center_file")
    if not name:
        return None
    return np.ascontiguousarray(np.load(snapshot.check_file(name), allow_pickle=False), dtype=np.float32)


def default_nlist(n: int) -> int:
    """~2*sqrt(n) lists, at least 39 training points each (FAISS' rule), a power of two.
    (Fewer, larger lists than the usual 4*sqrt(n): the exact rerank forgives coarse lists,
    and k-means training time grows with nlist.)"""
    target = max(1.0, min(2 * math.sqrt(n), n / 39))
    return int(max(1, 2 ** round(math.log2(target))))


# ---------------------------------------------------------------------------------------------
# FAISS structures over the compact vector


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small ops on one thread. An ANN query is ~1 MFLOP plus a rerank of a few hundred
    rows; an OpenMP team spin-waits at every barrier, and on a loaded machine (a preempted team
    member) that cost 10x: measured p50 136 ms with 2 threads vs 15 ms with 1 at 10k chunks."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


def _chain(index: faiss.Index) -> list:
    """The index and every index it wraps, downcast (IDMap2 -> PreTransform -> IVF/HNSW)."""
    out = [faiss.downcast_index(index)]
    while hasattr(out[-1], "index") and out[-1].index is not None:
        out.append(faiss.downcast_index(out[-1].index))
    return out


def index_ids(index: faiss.Index) -> np.ndarray:
    """The chunk keys held by an index (IDMap2's map, or the IVF inverted lists)."""
    if index is None or index.ntotal == 0:
        return np.zeros(0, np.int64)
    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.vector_to_array(top.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    parts = [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy()
             for i in range(ivf.nlist) if inv.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def set_search_params(index: faiss.Index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    for part in _chain(index):
        if nprobe is not None and isinstance(part, faiss.IndexIVF):
            part.nprobe = min(int(nprobe), part.nlist)
        if ef_search is not None and isinstance(part, faiss.IndexHNSW):
            part.hnsw.efSearch = int(ef_search)


def train_projection(sample: np.ndarray, dim: int) -> np.ndarray:
    """[D, dim] orthonormal basis of the top right singular vectors of the (uncentred) sample:
    the rank-dim subspace that best preserves inner products, hence cosines of unit rows."""
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    q = min(dim + 16, min(x.shape))
    _, _, v = torch.svd_lowrank(x, q=q, niter=3, M=None)
    return np.ascontiguousarray(v[:, :dim].numpy())


def _projection_transform(basis: np.ndarray) -> faiss.LinearTransform:
    d_in, d_out = basis.shape
    lt = faiss.LinearTransform(d_in, d_out, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(basis.T, dtype=np.float32).ravel(), lt.A)
    lt.is_trained = True
    return lt


def load_index(snapshot: Snapshot) -> faiss.Index | None:
    info = snapshot.manifest.get("index") or {}
    if not info.get("file") or info.get("kind", "flat") == "flat":
        return None
    path = snapshot.check_file(info["file"])  # size and sha256: a damaged index is refused, not searched
    try:
        return faiss.read_index(str(path))
    except Exception as err:  # faiss raises RuntimeError with a C++ trace: keep one line
        raise CorruptDataError(f"{path}: cannot read FAISS index ({str(err).splitlines()[0][:120]})") from None


def _sample_keys(keys: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    if len(keys) <= n:
        return keys
    return np.sort(np.random.default_rng(seed).choice(keys, n, replace=False))


def _build(view: Snapshot, kind: str, params: dict, live: np.ndarray, dim: int, progress: bool
           ) -> tuple[faiss.Index, dict]:
    """Train the projection (and IVF centroids) on a sample of the live rows; empty index."""
    compact = min(int(params["compact_dim"]), dim)
    pca_rows = max(compact + 16, min(20_000, PCA_SAMPLE_BYTES // (4 * dim)))
    nlist = int(params.get("nlist") or default_nlist(len(live)))
    train_rows = max(pca_rows, min(len(live), 40 * nlist)) if kind == "ivf" else pca_rows
    sample = _sample_keys(live, train_rows)
    x = flatten_normalized(view.read_memory(sample), store_center(view))
    if compact < dim:
        basis = train_projection(x[_sample_keys(np.arange(len(x)), pca_rows)], compact)
        y = x @ basis
    else:
        basis, y = None, x
    y = np.ascontiguousarray(y / np.linalg.norm(y, axis=1, keepdims=True).clip(1e-12), dtype=np.float32)
    if kind == "ivf":
        nlist = max(1, min(nlist, len(y)))
        inner = faiss.IndexIVFFlat(faiss.IndexFlatL2(compact), compact, nlist, faiss.METRIC_L2)
        inner.cp.seed = 1234
        inner.train(y)
        params = {**params, "nlist": nlist}
    else:
        inner = faiss.IndexHNSWFlat(compact, int(params["hnsw_m"]), faiss.METRIC_L2)
        inner.hnsw.efConstruction = int(params["ef_construction"])
    # Normalised compact vectors under L2: the neighbours of the projected cosine. (Inner
    # product would let the dominant shared direction of real memory swamp IVF's clustering.)
    index = faiss.IndexPreTransform(faiss.NormalizationTransform(compact, 2.0), inner)
    if basis is not None:
        index.prepend_transform(_projection_transform(basis))
    if kind == "hnsw":
        index = faiss.IndexIDMap2(index)
    params = {**params, "compact_dim": compact, "trained_on": int(len(live))}
    return index, params


def resolve_kind(kind: str, n_rows: int) -> str:
    if kind != "auto":
        return kind
    return "flat" if n_rows < AUTO_ANN_ROWS else AUTO_KIND


def update_index(store: Store, options: IndexOptions | None = None, progress: bool = True, rebuild: bool = False,
                 wait: bool = True, bm25: bool = True) -> IndexReport:
    """Bring the index (and the BM25 index) in line with the live rows; no work when nothing
    changed. Search-time parameters are recorded without touching the file."""
    options = options or IndexOptions()
    t0 = time.perf_counter()
    with store.writer(wait=wait) as tx:
        view = tx.view
        info = dict(view.manifest.get("index") or {})
        lexical = None
        if bm25:
            from .lexical import update_bm25

            lexical = update_bm25(tx, info.get("bm25"), progress=progress)
        model = view.model
        live = np.asarray(view.memory_keys(), dtype=np.int64) if model else np.zeros(0, np.int64)
        if len(live) == 0:
            if lexical is None:
                raise ClaraError("the store has no compressed chunks yet (run `clara compress` first)")
            if lexical != info.get("bm25"):
                tx.set_index({**info, "bm25": lexical, "files": _files(info, lexical)})
                tx.commit()
            notice("no chunk is compressed yet: only the BM25 index was built")
            return IndexReport("none", 0, 0, 0, False, round(time.perf_counter() - t0, 3))
        dim = int(model["n_mem"]) * int(model["hidden"])
        old_params = dict(info.get("params") or {})
        requested = {k: getattr(options, k) for k in (*BUILD_PARAMS, *SEARCH_PARAMS)
                     if getattr(options, k) is not None}
        auto = options.kind == "auto" and info.get("auto") is not False  # an explicit kind sticks
        kind = info.get("kind") if options.kind == "auto" and not auto else None
        kind = kind or resolve_kind(options.kind, len(live))
        params = {**DEFAULTS, "compact_dim": COMPACT_DIM, **old_params, **requested}
        same = (info.get("kind") == kind and info.get("fingerprint") == model["fingerprint"]
                and info.get("dim") == dim and not rebuild
                and all(old_params.get(k) == params.get(k) for k in BUILD_PARAMS if k in requested))
        index, present, reason, old_stats = None, np.zeros(0, np.int64), "", None
        if same and kind == "flat" and info.get("keys_file"):
            present = np.load(view.check_file(info["keys_file"]), allow_pickle=False)
            if info.get("stats_file") and info.get("mu_file"):
                old_stats = (np.load(view.check_file(info["stats_file"]), allow_pickle=False),
                             np.load(view.check_file(info["mu_file"]), allow_pickle=False))
        elif same and kind != "flat":
            index = load_index(view)
            present = index_ids(index) if index is not None else present
            stale = present[~np.isin(present, live)]
            if kind == "hnsw" and len(stale) > TOMBSTONE_REBUILD * max(1, len(present)):
                index, reason = None, f"{len(stale)} tombstones"
            elif len(live) > RETRAIN_GROWTH * int(params.get("trained_on") or len(live)):
                index, reason = None, "the store outgrew the trained projection"
            if index is None:
                present = np.zeros(0, np.int64)
        if reason:
            notice(f"index: rebuilding ({reason})")
        rebuilt = not same or bool(reason) or (kind != "flat" and index is None)
        stale = present[~np.isin(present, live)]
        new = live[~np.isin(live, present)]
        tombstones = len(stale) if kind == "hnsw" else 0
        unchanged = not rebuilt and len(new) == 0 and len(stale) == tombstones
        public = _public(params, kind)
        if unchanged and all(public[k] == old_params.get(k) for k in SEARCH_PARAMS if k in public) \
                and lexical == info.get("bm25"):
            return IndexReport(kind, 0, 0, int(info.get("ntotal", 0)), False, round(time.perf_counter() - t0, 3),
                               tombstones=tombstones, params=_public(params, kind))
        record = {"kind": kind, "auto": auto, "metric": "cosine", "dim": dim,
                  "fingerprint": model["fingerprint"], "file": info.get("file") if unchanged else None,
                  "keys_file": info.get("keys_file") if unchanged else None,
                  "stats_file": info.get("stats_file") if unchanged else None,
                  "mu_file": info.get("mu_file") if unchanged else None}
        center = store_center(view)
        if not unchanged and kind == "flat":
            mm = view.memory_reader()
            mu = old_stats[1] if old_stats is not None else estimate_mu(mm, center=center)
            stats = aligned_stats(mm, mu, present, old_stats[0] if old_stats is not None else None, center)
            for suffix, array, field_name in ((".keys.npy", mm.keys, "keys_file"),
                                              (".stats.npy", stats, "stats_file"), (".mu.npy", mu, "mu_file")):
                path = tx.new_data_path("index", suffix)
                with open(path, "wb") as f:
                    np.save(f, array)
                record[field_name] = path.name
            ntotal = len(live)
        elif not unchanged:
            if index is None:
                index, params = _build(view, kind, params, live, dim, progress)
            if kind == "ivf" and len(stale):
                index.remove_ids(faiss.IDSelectorBatch(stale))
            add_rows(index, view, new, progress, center=center)
            path = tx.new_data_path("index", ".faiss")
            try:
                faiss.write_index(index, str(path))
            except RuntimeError as err:  # a full disk, say: one line, and the writer removes the file
                raise ClaraError(f"{path}: cannot write the FAISS index ({str(err).splitlines()[0][:160]})") from None
            record["file"], ntotal = path.name, int(index.ntotal)
        else:
            ntotal = int(info.get("ntotal", 0))
        record.update(ntotal=ntotal, live=len(live), tombstones=tombstones, params=_public(params, kind),
                      bm25=lexical)
        record["files"] = _files(record, lexical)
        tx.set_index(record)
        tx.commit()
    removed = 0 if kind == "hnsw" or rebuilt else len(stale)
    return IndexReport(kind, len(new), removed, ntotal, rebuilt, round(time.perf_counter() - t0, 3),
                       tombstones=tombstones, params=record["params"])


def _files(record: dict, lexical: dict | None) -> list[str]:
    names = [record[k] for k in ("file", "keys_file", "stats_file", "mu_file") if record.get(k)]
    return names + list((lexical or {}).get("files", []))


def _public(params: dict, kind: str) -> dict:
    keep = {"flat": ("rerank",), "ivf": ("nlist", "nprobe", "rerank", "compact_dim", "trained_on"),
            "hnsw": ("hnsw_m", "ef_construction", "ef_search", "rerank", "compact_dim", "trained_on")}[kind]
    return {k: params[k] for k in keep if params.get(k) is not None}


def add_rows(index: faiss.Index, view: Snapshot, keys: np.ndarray, progress: bool, block: int = 4096,
             center: np.ndarray | None = None) -> None:
    """Add rows (normalised, centred full vectors; the index projects them), streamed from the
    memory-mapped shards in shard order (sequential reads, no gather)."""
    if len(keys) == 0:
        return
    n_mem = int(view.model["n_mem"])
    with progress_bar(total=len(keys), desc="index", unit="chunk", enabled=progress) as bar:
        for _, part, rows, scales in view.memory_reader().blocks(block):
            mask = np.isin(part, keys)
            if not mask.any():
                continue
            if not mask.all():
                sel = torch.from_numpy(np.nonzero(mask)[0])
                part, rows, scales = part[mask], rows[sel], None if scales is None else scales[sel]
            x = torch.nn.functional.normalize(_centered(dequantize(rows, scales, n_mem), center), dim=-1)
            index.add_with_ids(np.ascontiguousarray(x.numpy()), np.ascontiguousarray(part))
            bar.update(len(part))


# ---------------------------------------------------------------------------------------------
# searching


class VectorSearch:
    """Top-k live rows by the method's cosine, through whatever index the snapshot has.

    Rows compressed after the index was built are searched exactly and merged in; rows deleted
    since (or HNSW tombstones) are never returned. Search parameters default to the manifest's.
    """

    def __init__(self, snapshot: Snapshot, nprobe: int | None = None, ef_search: int | None = None,
                 rerank: int | None = None):
        self.snapshot = snapshot
        info = snapshot.manifest.get("index") or {}
        params = {**DEFAULTS, **(info.get("params") or {})}
        self.rerank = int(rerank or params["rerank"])
        self.kind = info.get("kind") or "flat"
        self.live = np.asarray(snapshot.memory_keys(), dtype=np.int64)
        if len(self.live) == 0:
            raise ClaraError("nothing to search: no chunk is compressed yet (run `clara compress`)")
        model = snapshot.model or {}
        self.dim = int(model["n_mem"]) * int(model["hidden"])
        self.center = store_center(snapshot)
        self.index = None
        if info and info.get("fingerprint") not in (None, model.get("fingerprint")):
            notice("the index was built for another model: searching exactly (run `clara index --rebuild`)")
        elif info.get("dim") not in (None, self.dim):
            notice("the index does not match the memory shape: searching exactly (run `clara index --rebuild`)")
        else:
            self.index = load_index(snapshot)
        self.stale = np.zeros(0, np.int64)
        self.unindexed = np.zeros(0, np.int64)
        if self.index is not None:
            set_search_params(self.index, nprobe or params.get("nprobe"), ef_search or params.get("ef_search"))
            indexed = index_ids(self.index)
            self.stale = indexed[~np.isin(indexed, self.live)]
            self.unindexed = self.live[~np.isin(self.live, indexed)]
            if len(self.unindexed):
                notice(f"{len(self.unindexed)} compressed chunks are not indexed yet (searched exactly; "
                       "run `clara index`)")
        elif not info and len(self.live) > AUTO_ANN_ROWS:
            notice(f"{len(self.live)} chunks and no index: searching exactly (run `clara index`)")
        self._mm: MemoryReader | None = None
        self._stats: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def memory_map(self) -> MemoryReader:
        if self._mm is None:
            self._mm = self.snapshot.memory_reader()
        return self._mm

    @property
    def row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(row stats, mu) for the flat scan: the flat index's files, else computed once."""
        if self._stats is None:
            info = self.snapshot.manifest.get("index") or {}
            if info.get("kind") == "flat" and info.get("keys_file") and info.get("stats_file") \
                    and info.get("mu_file"):
                keys = np.load(self.snapshot.check_file(info["keys_file"]), allow_pickle=False)
                stats = np.load(self.snapshot.check_file(info["stats_file"]), allow_pickle=False)
                mu = np.load(self.snapshot.check_file(info["mu_file"]), allow_pickle=False)
                self._stats = (aligned_stats(self.memory_map, mu, keys, stats, self.center), mu)
            else:
                mu = estimate_mu(self.memory_map, center=self.center)
                self._stats = (aligned_stats(self.memory_map, mu, center=self.center), mu)
        return self._stats

    def _candidates(self, queries: np.ndarray, depth: int) -> list[np.ndarray]:
        """Per query, candidate keys (ANN over the compact vectors, plus every unindexed row)."""
        n = len(queries)
        if self.index is None:
            qn = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
            stats, mu = self.row_stats
            return [k for k, _ in scan_topk(self.memory_map, qn, min(depth, len(self.live)), stats, mu,
                                            center=self.center)]
        fetch = min(int(self.index.ntotal), depth)
        params = None
        if len(self.stale):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.stale))
            params = faiss.SearchParametersHNSW() if self.kind == "hnsw" else faiss.SearchParametersIVF()
            for part in _chain(self.index):
                if isinstance(part, faiss.IndexHNSW):
                    params.efSearch = part.hnsw.efSearch
                if isinstance(part, faiss.IndexIVF):
                    params.nprobe = part.nprobe
            params.sel = sel
        _, keys = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch, params=params)
        out = []
        for qi in range(n):
            got = keys[qi][keys[qi] >= 0]
            out.append(np.concatenate([got, self.unindexed]) if len(self.unindexed) else got)
        return out

    def query_vectors(self, query_memory: torch.Tensor) -> np.ndarray:
        """Query-reasoner memories [Q, n_mem, h] -> the rows `search` takes (centred as the store's model)."""
        return flatten_normalized(query_memory, self.center)

    def search(self, queries: np.ndarray, k: int, depth: int | None = None) -> list[list[tuple[int, float]]]:
        """(key, fp32 cosine) per query, best first; queries are `query_vectors` rows (L2-normalised)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ClaraError(f"queries have shape {list(queries.shape)}, expected [n, {self.dim}]")
        k = min(k, len(self.live))
        # flat: the scan is already near-exact; rerank a margin that absorbs bf16 rounding.
        depth = max(k, depth or (k + 32 if self.index is None else self.rerank))
        results = []
        small = self.index is not None and len(self.unindexed) < 50_000
        with single_thread() if small else contextlib.nullcontext():
            for qi, cand in enumerate(self._candidates(queries, depth)):
                cand = cand[np.isin(cand, self.live)]
                qn = torch.from_numpy(np.ascontiguousarray(queries[qi], dtype=np.float32))
                results.append(exact_rerank(self.memory_map, qn, cand, k, self.center))
        return results
