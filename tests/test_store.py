"""The store: atomic commits, snapshot isolation, the writer lock, crashes, memory shards, deletions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from clara_cli.errors import (
    ClaraError,
    CorruptDataError,
    MissingMemoryError,
    ModelMismatchError,
    StoreBusyError,
)
from clara_cli.store import (
    CHUNK_SCHEMA,
    DOCUMENT_SCHEMA,
    Store,
    chunk_id_from_key,
    chunk_ids_to_keys,
)

REPO = Path(__file__).resolve().parents[1]
MODEL = {"fingerprint": "fp-a", "spec": "tiny:a", "n_mem": 2, "hidden": 4, "doc_max_length": 32}


def tables(doc_ids: list[str], chunks_per_doc: int = 2, first_key: int = 1, tag: str = "") -> tuple[pa.Table, pa.Table]:
    """Documents plus chunks with keys first_key, first_key+1, ... in order."""
    docs = pa.Table.from_pylist([
        {"doc_id": d, "source": f"/src/{d}", "content_hash": f"h-{d}{tag}", "n_chars": 10,
         "metadata": "{}", "ingested_at": 1.0} for d in doc_ids], schema=DOCUMENT_SCHEMA)
    rows, key = [], first_key
    for d in doc_ids:
        for i in range(chunks_per_doc):
            rows.append({"chunk_id": chunk_id_from_key(key), "doc_id": d, "source": f"/src/{d}",
                         "chunk_index": i, "start": i * 5, "end": i * 5 + 5, "text": f"{d} part {i}{tag}",
                         "content_hash": "x", "n_tokens": 3})
            key += 1
    return docs, pa.Table.from_pylist(rows, schema=CHUNK_SCHEMA)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


def data_files(store: Store) -> set[str]:
    return {p.name for p in (store.root / "data").iterdir()}


def test_open_missing_and_create(tmp_path):
    with pytest.raises(ClaraError, match="no store at .*clara ingest"):
        Store.open(tmp_path / "nothing")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ClaraError, match="not empty"):
        Store.open(tmp_path / "busy", create=True)
    store = Store.open(tmp_path / "new", create=True)
    snap = store.snapshot()
    assert snap.version == 0 and snap.model is None
    assert snap.documents().num_rows == 0 and snap.chunks(["chunk_id"]).num_rows == 0
    assert len(snap.memory_keys()) == 0
    assert Store.open(tmp_path / "new").snapshot().version == 0


def test_commit_is_atomic_and_snapshots_are_isolated(store):
    before = store.snapshot()
    with store.writer() as txn:
        txn.add_documents(*tables(["a", "b"]))
        assert txn.view.documents().num_rows == 2  # the writer sees its own changes
        assert store.snapshot().version == 0  # readers do not, until commit
    after = store.snapshot()
    assert after.version == 1
    assert after.chunks(["chunk_id"]).column("chunk_id").to_pylist() == [chunk_id_from_key(k) for k in (1, 2, 3, 4)]
    assert before.documents().num_rows == 0  # an old snapshot keeps its state

    with store.writer() as txn:
        txn.remove_documents(["a"])
    assert store.snapshot().documents().column("doc_id").to_pylist() == ["b"]
    assert after.documents().column("doc_id").to_pylist() == ["a", "b"]  # still readable: no file rewritten
    history = sorted(p.name for p in (store.root / "manifests").glob("v*.json"))
    assert history == ["v00000000.json", "v00000001.json", "v00000002.json"]
    assert json.loads((store.root / "manifest.json").read_text())["version"] == 2


def test_unchanged_writer_makes_no_version_and_exception_commits_nothing(store):
    with store.writer():
        pass
    assert store.snapshot().version == 0
    with pytest.raises(RuntimeError), store.writer() as txn:
        txn.add_documents(*tables(["a"]))
        raise RuntimeError("boom")
    assert store.snapshot().version == 0
    assert data_files(store) == set()  # the failed writer's files are gone
    with store.writer(wait=False) as txn:  # and the lock was released
        txn.add_documents(*tables(["a"]))


def test_several_commits_in_one_writer(store):
    with pytest.raises(RuntimeError), store.writer() as txn:
        txn.add_documents(*tables(["a"], first_key=1))
        assert txn.commit() == 1
        txn.add_documents(*tables(["b"], first_key=10))
        assert txn.commit() == 2
        assert txn.commit() == 2  # nothing new
        txn.add_documents(*tables(["c"], first_key=20))
        raise RuntimeError("killed between batches")
    snap = store.snapshot()
    assert snap.version == 2 and snap.documents().column("doc_id").to_pylist() == ["a", "b"]


CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[2])
from tests.test_store import tables
from clara_cli.store import Store
store = Store.open(sys.argv[1])
with store.writer() as txn:
    txn.add_documents(*tables(["child"], first_key=100))
    print("ready", flush=True)
    sys.stdin.readline()
"""


def start_child(store: Store) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(store.root), str(REPO)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def test_lock_busy_then_killed_holder_crash_leaves_orphans_only(store):
    with store.writer() as txn:
        txn.add_documents(*tables(["a"]))
    committed = data_files(store)
    child = start_child(store)
    try:
        with pytest.raises(StoreBusyError, match=f"busy: another writer \\(pid {child.pid} on "), \
                store.writer(wait=False):
            pass
    finally:
        child.send_signal(signal.SIGKILL)  # a crash in the middle of a transaction
        child.wait()
    # The kernel dropped the dead holder's lock: the next writer takes over at once.
    with store.writer(wait=False) as txn:
        assert txn.base.version == 1
    snap = store.snapshot()
    assert snap.version == 1 and snap.documents().column("doc_id").to_pylist() == ["a"]
    orphans = data_files(store) - committed
    assert len(orphans) == 2  # the child's documents and chunks files, referenced by nothing
    assert store.gc() == []  # younger than the grace period: kept
    assert sorted(store.gc(grace_seconds=0)) == sorted(orphans)
    assert data_files(store) == committed
    assert snap.verify() == []


def test_second_writer_waits_and_sees_first_writers_commit(store):
    child = start_child(store)
    child.stdin.write("go\n")
    child.stdin.flush()
    with store.writer(wait=True) as txn:  # blocks until the child commits and exits
        assert txn.base.documents().column("doc_id").to_pylist() == ["child"]
    assert child.wait() == 0


def test_writer_in_same_process_is_refused_not_deadlocked(store):
    with store.writer(), pytest.raises(StoreBusyError, match="this process"), store.writer():
        pass


def bind(txn, **over):
    txn.bind_model({**MODEL, **over})


def test_model_binding(store):
    with store.writer() as txn:
        bind(txn)
    assert store.snapshot().model["fingerprint"] == "fp-a"
    with store.writer() as txn:
        bind(txn)  # the same model again: no change
    assert store.snapshot().version == 1
    with pytest.raises(ModelMismatchError) as err, store.writer() as txn:
        bind(txn, fingerprint="fp-b", spec="tiny:b")
    message = str(err.value)
    assert "fp-a" in message and "fp-b" in message and "\n" not in message
    with pytest.raises(ModelMismatchError):
        store.snapshot().check_model("fp-b")
    store.snapshot().check_model("fp-a")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_memory_round_trip(store, dtype):
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables(["a", "b", "c"]))  # keys 1..6
    mem1 = torch.randn(3, 2, 4).to(dtype)
    mem2 = torch.randn(2, 2, 4).to(dtype)
    with store.writer() as txn:
        name = txn.add_memory(np.array([5, 1, 3]), mem1)
        txn.add_memory(np.array([2, 6]), mem2)
    assert name.startswith("memory-") and name.endswith(".safetensors")
    snap = store.snapshot()
    assert snap.memory_keys().tolist() == [5, 1, 3, 2, 6]
    out = snap.read_memory([6, 5, 3], dtype=dtype)
    assert out.dtype == dtype
    assert torch.equal(out, torch.stack([mem2[1], mem1[0], mem1[2]]))
    assert torch.equal(snap.read_memory(np.array([1])), mem1[1:2].float())  # default fp32
    keys, mem = zip(*snap.iter_memory(batch_rows=2), strict=True)
    assert np.concatenate(keys).tolist() == [5, 1, 3, 2, 6]
    assert torch.equal(torch.cat(mem), torch.cat([mem1, mem2]))
    with pytest.raises(MissingMemoryError, match="no memory") as err:
        snap.read_memory([1, 4])
    assert isinstance(err.value, KeyError) and chunk_id_from_key(4) in str(err.value)

    from safetensors import safe_open
    with safe_open(str(snap.data_path(name)), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("chunk_keys").dtype == torch.int64
        assert f.get_tensor("row_crc").shape == (3,)  # one CRC per row: readers check what they read
    assert meta.pop("keys_crc").isdigit()
    assert meta == {"model_fingerprint": "fp-a", "n_mem": "2", "hidden": "4",
                    "dtype": {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]}


def test_add_memory_refusals(store):
    with store.writer() as txn:
        with pytest.raises(ClaraError, match="bind the store"):
            txn.add_memory(np.array([1]), torch.zeros(1, 2, 4))
        bind(txn)
        txn.add_documents(*tables(["a"]))  # keys 1, 2
        txn.add_memory(np.array([1]), torch.zeros(1, 2, 4))
        with pytest.raises(ClaraError, match="already has memory"):
            txn.add_memory(np.array([2, 1]), torch.zeros(2, 2, 4))
        with pytest.raises(ClaraError, match="not a live chunk"):
            txn.add_memory(np.array([99]), torch.zeros(1, 2, 4))
        with pytest.raises(ClaraError, match="twice"):
            txn.add_memory(np.array([2, 2]), torch.zeros(2, 2, 4))
        with pytest.raises(ClaraError, match="shape"):
            txn.add_memory(np.array([2]), torch.zeros(1, 3, 4))
        with pytest.raises(ClaraError, match="dtype"):
            txn.add_memory(np.array([2]), torch.zeros(1, 2, 4, dtype=torch.float64))
        with pytest.raises(ClaraError, match="already in the store"):
            txn.add_documents(*tables(["a"], first_key=50))
    with store.writer() as txn:  # refused across commits too
        with pytest.raises(ClaraError, match="already has memory"):
            txn.add_memory(np.array([1]), torch.zeros(1, 2, 4))


def test_removed_documents_lose_memory_and_can_come_back(store):
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables(["a", "b"]))  # a: 1, 2   b: 3, 4
        txn.add_memory(np.array([1, 2, 3]), torch.randn(3, 2, 4))
    with store.writer() as txn:
        txn.remove_documents(["a", "not-there"])
        assert txn.view.memory_keys().tolist() == [3]
        # A changed document comes back under the same id (and here the same chunk ids).
        txn.add_documents(*tables(["a"], tag="v2"))
        view = txn.view
        assert view.documents().column("doc_id").to_pylist() == ["b", "a"]
        assert view.chunks(["text"]).column("text").to_pylist() == ["b part 0", "b part 1", "a part 0v2", "a part 1v2"]
        assert view.memory_keys().tolist() == [3]  # the old rows stay dead
        txn.add_memory(np.array([1]), torch.ones(1, 2, 4))
    snap = store.snapshot()
    assert sorted(snap.memory_keys().tolist()) == [1, 3]
    assert torch.equal(snap.read_memory([1]), torch.ones(1, 2, 4))
    assert snap.stats()["documents"] == 2 and snap.stats()["compressed"] == 2
    deletion_files = [e for e in snap.files("deletions")]
    assert len(deletion_files) == 1


def test_compact_rewrites_live_rows_and_gc_waits_for_old_readers(store):
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables(["a", "b"]))
        txn.add_memory(np.array([1, 3]), torch.randn(2, 2, 4))
        txn.add_memory(np.array([4]), torch.randn(1, 2, 4, dtype=torch.float32).to(torch.bfloat16))
    with store.writer() as txn:
        txn.remove_documents(["a"])
    old = store.snapshot()
    expect_chunks = old.chunks()
    expect_mem = old.read_memory([3, 4])
    with store.writer() as txn:
        txn.compact()
    snap = store.snapshot()
    assert snap.files("deletions") == []
    assert len(snap.files("documents")) == 1 and len(snap.files("chunks")) == 1
    assert len(snap.files("memory")) == 2  # one per dtype
    assert snap.chunks().equals(expect_chunks)
    assert torch.equal(snap.read_memory([3, 4]), expect_mem)
    assert snap.verify() == []
    # The old files are unreferenced now, but a reader of the old snapshot may still use them:
    # its lease keeps them even without a grace period, until it lets go.
    assert store.gc() == []
    assert store.gc(grace_seconds=0) == []
    assert old.chunks(["chunk_id"]).num_rows == 2
    old.close()
    assert sorted(store.gc(grace_seconds=0)) == sorted(e["name"] for e in old.files())
    assert {e["name"] for e in snap.files()} == data_files(store)


def test_truncated_or_garbled_shard_is_corrupt(store):
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables(["a"]))
        name = txn.add_memory(np.array([1, 2]), torch.randn(2, 2, 4))
    path = store.snapshot().data_path(name)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CorruptDataError, match=name):
        store.snapshot().read_memory([1])
    path.write_bytes(b"\xff" * 8 + data[8:])  # right size, header length nonsense
    with pytest.raises(CorruptDataError, match=name):
        store.snapshot().read_memory([1])
    problems = store.snapshot().verify()
    assert len(problems) == 1 and name in problems[0]


def test_verify_detects_a_flipped_byte(store):
    with store.writer() as txn:
        txn.add_documents(*tables(["a"]))
    snap = store.snapshot()
    assert snap.verify() == []
    entry = snap.files("chunks")[0]
    path = snap.data_path(entry["name"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = snap.verify()
    assert len(problems) == 1 and entry["name"] in problems[0] and "sha256" in problems[0]


def test_index_file_tracking(store):
    with store.writer() as txn:
        path = txn.new_data_path("index", ".faiss")
        path.write_bytes(b"index one")
        txn.track_file(path.name)
        txn.set_index({"file": path.name, "kind": "flat"})
    snap = store.snapshot()
    entry = next(e for e in snap.files() if e["name"] == path.name)
    assert entry["bytes"] == 9 and len(entry["sha256"]) == 64
    assert snap.index == {"file": path.name, "kind": "flat"}
    with store.writer() as txn:
        second = txn.new_data_path("index", ".faiss")
        second.write_bytes(b"index two")
        txn.set_index({"file": second.name})  # set_index tracks it; the old file is dropped
    names = {e["name"] for e in store.snapshot().files()}
    assert names == {second.name}
    with pytest.raises(RuntimeError), store.writer() as txn:
        third = txn.new_data_path("index", ".faiss")
        third.write_bytes(b"never committed")
        raise RuntimeError
    assert not third.exists()


def test_read_memory_many_keys_across_shards(store):
    n = 3000
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables([f"d{i}" for i in range(n // 2)]))  # keys 1..n
        for start in range(1, n + 1, 500):
            keys = np.arange(start, start + 500)
            txn.add_memory(keys, torch.arange(start, start + 500, dtype=torch.float32)[:, None, None]
                           .expand(500, 2, 4).contiguous())
    snap = store.snapshot()
    rng = np.random.default_rng(0)
    ask = rng.permutation(np.arange(1, n + 1))[:2500]
    t0 = time.perf_counter()
    out = snap.read_memory(ask)
    assert time.perf_counter() - t0 < 2.0
    assert torch.equal(out[:, 0, 0], torch.from_numpy(ask).float())
    rows = snap.lookup_chunks(ask[:3], ["chunk_id"]).column("chunk_id").to_pylist()
    assert rows == [chunk_id_from_key(k) for k in ask[:3]]
    assert snap.stats()["compressed"] == n


def test_chunk_id_keys():
    assert chunk_ids_to_keys(["7fffffffffffffff", "0000000000000001"]).tolist() == [2**63 - 1, 1]
    for bad in ["8000000000000000", "ABCDEF0123456789", "123"]:
        with pytest.raises(ClaraError, match="chunk_id"):
            chunk_ids_to_keys([bad])


def test_gc_removes_stale_temp_files(store):
    tmp = store.root / ".manifest.json.dead.tmp"
    tmp.write_text("{}")
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    assert store.gc() == [".manifest.json.dead.tmp"]


def test_history_is_pruned_only_beyond_keep_and_grace(store):
    with store.writer() as txn:
        for i in range(5):
            txn.add_documents(*tables([f"d{i}"], first_key=10 * i + 1))
            txn.commit()
    folder = store.root / "manifests"
    assert len(list(folder.glob("v*.json"))) == 6
    assert store.gc(keep_manifests=2) == []  # all within the grace period
    old = time.time() - 3600
    for path in folder.glob("v*.json"):
        os.utime(path, (old, old))
    removed = store.gc(keep_manifests=2)
    assert removed == [f"manifests/v{v:08d}.json" for v in range(4)]
    assert store.snapshot().documents().num_rows == 5


def test_small_shards_merge_so_the_manifest_stays_short(store):
    """A compress run commits one small shard per batch; merging MERGE_FANOUT of a tier into one
    keeps the manifest O(log batches) long. Deleted rows are not carried into merged shards."""
    from clara_cli.store import MERGE_FANOUT

    n = 150
    with store.writer() as txn:
        bind(txn)
        txn.add_documents(*tables([f"d{i}" for i in range(n)], chunks_per_doc=1))  # keys 1..n
        txn.commit()
        for k in range(1, n + 1):
            if k == 60:  # keys 1..30 die after their rows were written (and partly merged)
                txn.remove_documents([f"d{i}" for i in range(30)])
            txn.add_memory(np.array([k]), torch.full((1, 2, 4), float(k)))
            txn.commit()
            shards = txn.view.files("memory")
            assert len(shards) <= MERGE_FANOUT * 3, len(shards)
    snap = store.snapshot()
    assert sorted(snap.memory_keys().tolist()) == list(range(31, n + 1))
    keys = snap.memory_keys()
    assert torch.equal(snap.read_memory(keys)[:, 0, 0], torch.from_numpy(keys).float())
    assert max(int(e.get("tier", 0)) for e in snap.files("memory")) >= 2
    assert snap.verify() == [] and snap.consistency() == []
    manifest_bytes = (store.root / "manifest.json").stat().st_size
    assert manifest_bytes < 20_000, manifest_bytes


STRESS_WRITER = r"""
import sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from tests.test_store import tables, MODEL
from clara_cli.store import Store
store = Store.open(sys.argv[1])
for i in range(24):
    with store.writer() as txn:
        if i == 0:
            txn.bind_model(MODEL)
        txn.add_documents(*tables([f"s{i}"], first_key=100 + 2 * i))
        keys = np.array([100 + 2 * i, 101 + 2 * i])
        txn.add_memory(keys, torch.from_numpy(keys).float()[:, None, None].expand(2, 2, 4).contiguous())
        if i % 4 == 3:
            txn.remove_documents([f"s{i - 1}"])
            txn.compact()  # every file rewritten: the old ones belong to old snapshots only
    store.gc(grace_seconds=0)  # and they go as soon as no reader holds them
print("done", flush=True)
"""


def test_readers_keep_whole_snapshots_while_a_writer_commits_and_collects(store):
    child = subprocess.Popen([sys.executable, "-c", STRESS_WRITER, str(store.root), str(REPO)],
                             stdout=subprocess.PIPE, text=True)
    seen = set()
    try:
        while child.poll() is None or not seen:
            with Store.open(store.root).snapshot() as snap:
                time.sleep(0.01)  # let the writer commit and gc meanwhile
                docs = snap.documents().num_rows
                keys = snap.memory_keys()
                assert len(snap.chunk_keys()) == 2 * docs == len(keys)
                if len(keys):
                    memory = snap.read_memory(keys)  # files of a superseded snapshot still readable
                    assert torch.equal(memory[:, 0, 0], torch.from_numpy(keys).float())
                assert snap.consistency() == []
                seen.add(snap.version)
    finally:
        child.wait(timeout=120)
    assert child.returncode == 0 and child.stdout.read().strip() == "done"
    assert len(seen) >= 3, seen


def test_a_long_writer_cleans_lease_files_as_it_goes(store):
    from clara_cli.store import HOUSEKEEP_EVERY

    with store.writer() as txn:
        for i in range(2 * HOUSEKEEP_EVERY + 5):
            txn.add_documents(*tables([f"d{i}"], chunks_per_doc=1, first_key=i + 1))
            txn.commit()
        assert len(list((store.root / "readers").iterdir())) <= HOUSEKEEP_EVERY + 6
    assert store.snapshot().documents().num_rows == 2 * HOUSEKEEP_EVERY + 5


def test_staged_folder_swaps_in_whole_or_not_at_all(tmp_path):
    from clara_cli.store import staged_folder

    dst = tmp_path / "model"
    with staged_folder(dst) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (dst / "a.txt").read_text() == "one"
    umask = os.umask(0)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    with pytest.raises(RuntimeError), staged_folder(dst) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("killed half way")
    assert (dst / "a.txt").read_text() == "one" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with staged_folder(dst) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in dst.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
