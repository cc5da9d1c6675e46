"""Index kinds (flat scan, IVF and HNSW on a compact vector + exact rerank), incremental updates,
memory dtypes, and the store's BM25. Synthetic clustered memory: no model needed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from clara_cli import index as index_mod
from clara_cli.index import IndexOptions, VectorSearch, flatten_normalized, update_index
from clara_cli.store import (
    CHUNK_SCHEMA,
    DOCUMENT_SCHEMA,
    Store,
    chunk_id_from_key,
    dequantize_int8,
    quantize_int8,
)

N_MEM, HIDDEN = 4, 32
MODEL = {"fingerprint": "synthetic", "spec": "synthetic", "n_mem": N_MEM, "hidden": HIDDEN, "doc_max_length": 64}
WORDS = ("river mountain castle violin comet harbor glacier orchard lantern meadow falcon copper "
         "desert island temple canyon").split()


def clustered_memory(n: int, seed: int = 0, clusters: int = 24) -> torch.Tensor:
    """Topic clusters around a shared direction, low-rank spread plus noise (like real memory)."""
    g = torch.Generator().manual_seed(seed)
    d = N_MEM * HIDDEN
    common = torch.randn(d, generator=torch.Generator().manual_seed(99)) * 2.0
    centres = torch.randn(clusters, d, generator=torch.Generator().manual_seed(98))
    basis = torch.linalg.qr(torch.randn(d, 16, generator=torch.Generator().manual_seed(97)))[0]
    which = torch.randint(0, clusters, (n,), generator=g)
    x = common + centres[which] + torch.randn(n, 16, generator=g) @ basis.T * 0.6 + 0.15 * torch.randn(n, d, generator=g)
    return x.reshape(n, N_MEM, HIDDEN)


def add_docs(store: Store, first: int, n: int, memory: torch.Tensor | None = None, dtype=torch.float32,
             seed: int = 0, shard_rows: int = 512) -> np.ndarray:
    """n one-chunk documents with keys first..first+n-1, text naming words, and their memory."""
    keys = np.arange(first, first + n, dtype=np.int64)
    docs = pa.Table.from_pylist([{"doc_id": f"d{k}", "source": f"/src/d{k}", "content_hash": f"h{k}", "n_chars": 10,
                                  "metadata": "{}", "ingested_at": 1.0} for k in keys], schema=DOCUMENT_SCHEMA)
    chunks = pa.Table.from_pylist([
        {"chunk_id": chunk_id_from_key(k), "doc_id": f"d{k}", "source": f"/src/d{k}", "chunk_index": 0, "start": 0,
         "end": 10, "text": f"doc {k} about the {WORDS[k % len(WORDS)]} and the {WORDS[(k // 7) % len(WORDS)]} w{k}",
         "content_hash": f"c{k}", "n_tokens": 8} for k in keys], schema=CHUNK_SCHEMA)
    memory = clustered_memory(n, seed) if memory is None else memory
    with store.writer() as tx:
        tx.bind_model(MODEL)
        tx.add_documents(docs, chunks)
        for lo in range(0, n, shard_rows):
            part = memory[lo:lo + shard_rows]
            if dtype == torch.int8:
                tx.add_memory(keys[lo:lo + shard_rows], *quantize_int8(part))
            else:
                tx.add_memory(keys[lo:lo + shard_rows], part.to(dtype))
            tx.commit()  # one commit per shard, like compress (small shards get merged)
    return keys


def exact(store: Store, queries: np.ndarray, k: int) -> list[list[int]]:
    snap = store.snapshot()
    keys = snap.memory_keys()
    x = flatten_normalized(snap.read_memory(keys))
    top = np.argsort(-(queries @ x.T), axis=1, kind="stable")[:, :k]
    return [keys[t].tolist() for t in top]


def queries(n: int = 40, seed: int = 1) -> np.ndarray:
    return flatten_normalized(clustered_memory(n, seed=seed + 1000))


def recall(got: list[list[tuple[int, float]]], want: list[list[int]]) -> float:
    return float(np.mean([len({k for k, _ in g} & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


def test_flat_scan_is_exact_and_scores_are_cosines(store):
    add_docs(store, 1, 700)
    report = update_index(store, IndexOptions(kind="flat"), progress=False)
    assert report.kind == "flat" and report.total == 700
    q = queries()
    got = VectorSearch(store.snapshot()).search(q, 10)
    want = exact(store, q, 10)
    assert [[k for k, _ in g] for g in got] == want
    snap = store.snapshot()
    for (key, score), qi in zip([g[0] for g in got], q, strict=True):
        ref = float(flatten_normalized(snap.read_memory([key]))[0] @ qi)
        assert abs(score - ref) < 1e-5


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_equal_scores_come_in_key_order(store, kind):
    """Chunks with identical text share one memory, so they tie: every index returns them by
    chunk key, the same order in every run, whatever order the scan or the graph found them in."""
    memory = clustered_memory(300)
    memory[[250, 40, 170, 5]] = memory[250].clone()  # four chunks, one memory
    keys = add_docs(store, 1, 300, memory=memory)
    update_index(store, IndexOptions(kind=kind), progress=False)
    q = flatten_normalized(memory[250:251])
    got = VectorSearch(store.snapshot()).search(q, 4)[0]
    assert [k for k, _ in got] == sorted(keys[[250, 40, 170, 5]].tolist())
    assert len({s for _, s in got}) == 1


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_with_rerank_recall_and_params_in_manifest(store, kind):
    add_docs(store, 1, 1500)
    opts = IndexOptions(kind=kind, compact_dim=48, nlist=32, nprobe=8, ef_search=64, rerank=60)
    report = update_index(store, opts, progress=False)
    assert report.kind == kind and report.total == 1500 and report.rebuilt
    info = store.snapshot().manifest["index"]
    assert info["kind"] == kind and info["params"]["compact_dim"] == 48 and info["params"]["rerank"] == 60
    assert info["params"].get("nlist" if kind == "ivf" else "ef_search") == (32 if kind == "ivf" else 64)
    q = queries()
    got = VectorSearch(store.snapshot()).search(q, 10)
    assert recall(got, exact(store, q, 10)) >= 0.95
    snap = store.snapshot()
    key, score = got[0][0]
    assert abs(score - float(flatten_normalized(snap.read_memory([key]))[0] @ q[0])) < 1e-5  # exact rerank
    # search-time parameters change the record, not the file
    before = info["file"]
    update_index(store, IndexOptions(rerank=30, nprobe=4, ef_search=40), progress=False)
    info = store.snapshot().manifest["index"]
    assert info["file"] == before and info["params"]["rerank"] == 30 and info["kind"] == kind


def test_incremental_add_delete_ivf(store):
    add_docs(store, 1, 1200)
    update_index(store, IndexOptions(kind="ivf", compact_dim=48, nlist=16), progress=False)
    add_docs(store, 5001, 300, seed=5)
    with store.writer() as tx:
        tx.remove_documents([f"d{k}" for k in range(1, 101)])
    report = update_index(store, progress=False)
    assert (report.kind, report.added, report.removed, report.total, report.rebuilt) == ("ivf", 300, 100, 1400, False)
    q = queries()
    got = VectorSearch(store.snapshot()).search(q, 10)
    assert all(k > 100 for g in got for k, _ in g)
    assert recall(got, exact(store, q, 10)) >= 0.95


def test_hnsw_tombstones_hidden_then_rebuilt(store, monkeypatch):
    add_docs(store, 1, 1000)
    update_index(store, IndexOptions(kind="hnsw", compact_dim=48), progress=False)
    q = queries(10)
    top = [k for k, _ in VectorSearch(store.snapshot()).search(q, 5)[0]]
    with store.writer() as tx:
        tx.remove_documents([f"d{k}" for k in top])
    report = update_index(store, progress=False)
    assert report.tombstones == 5 and not report.rebuilt
    got = VectorSearch(store.snapshot()).search(q, 10)
    assert not set(top) & {k for g in got for k, _ in g}
    assert recall(got, exact(store, q, 10)) >= 0.95
    with store.writer() as tx:
        tx.remove_documents([f"d{k}" for k in range(1, 200) if k not in top])
    report = update_index(store, progress=False)
    assert report.kind == "hnsw" and report.rebuilt and report.tombstones == 0
    assert report.total == len(store.snapshot().memory_keys()) < 1000 - 150


def test_unindexed_rows_are_searched_exactly(store):
    add_docs(store, 1, 1200)
    update_index(store, IndexOptions(kind="ivf", compact_dim=48, nlist=16), progress=False)
    extra = clustered_memory(5, seed=77)
    add_docs(store, 9001, 5, memory=extra)
    q = flatten_normalized(extra)
    got = VectorSearch(store.snapshot()).search(q, 1)
    assert [g[0][0] for g in got] == list(range(9001, 9006))


def test_auto_picks_flat_small_and_ann_large(store, monkeypatch):
    add_docs(store, 1, 600)
    assert update_index(store, progress=False).kind == "flat"
    monkeypatch.setattr(index_mod, "AUTO_ANN_ROWS", 500)
    add_docs(store, 1001, 10)
    report = update_index(store, IndexOptions(compact_dim=48), progress=False)
    assert report.kind == index_mod.AUTO_KIND and store.snapshot().manifest["index"]["auto"] is True


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flat_scan_over_half_precision_shards(store, dtype):
    add_docs(store, 1, 800, dtype=dtype)
    q = queries()
    got = VectorSearch(store.snapshot()).search(q, 10)
    assert [[k for k, _ in g] for g in got] == exact(store, q, 10)


def test_int8_shards_with_per_token_scales(store):
    memory = clustered_memory(900, seed=3)
    add_docs(store, 1, 900, memory=memory, dtype=torch.int8, shard_rows=100)  # 9 shards: merged
    snap = store.snapshot()
    shards = snap.files("memory")
    assert all(e["dtype"] == "int8" for e in shards) and len(shards) < 9
    expect = dequantize_int8(*quantize_int8(memory))
    assert torch.equal(snap.read_memory(np.arange(1, 901)), expect)
    assert (expect - memory).norm() / memory.norm() < 0.01
    # bytes per chunk: int8 values + an fp32 scale per token + key and CRC (+ a small header)
    assert sum(e["bytes"] for e in shards) < 900 * (N_MEM * HIDDEN + 4 * N_MEM + 16) + 1024 * len(shards)
    q = queries()
    want = exact(store, q, 10)
    assert recall(VectorSearch(snap).search(q, 10), want) >= 0.99  # exact up to float ties
    update_index(store, IndexOptions(kind="ivf", compact_dim=48, nlist=8), progress=False)
    assert recall(VectorSearch(store.snapshot()).search(q, 10), want) >= 0.95
    with store.writer() as tx:
        tx.remove_documents(["d5"])
        tx.compact()
    snap = store.snapshot()
    assert all(e["dtype"] == "int8" for e in snap.files("memory"))
    keys = np.array([k for k in range(1, 901) if k != 5])
    assert torch.equal(snap.read_memory(keys), expect[keys - 1])
    assert snap.verify() == []
