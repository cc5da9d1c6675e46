"""`clara update` (incremental ingest + compress + index), writer concurrency and exit codes,
`clara verify` and `clara gc`, readers refusing damaged files."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample_docs import write_corpus

from clara_cli.cli import cli
from clara_cli.errors import CorruptDataError
from clara_cli.store import Store

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture()
def env(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "corpus")
    store = tmp_path / "store"
    runner = CliRunner()

    def run(*args, code=0, input=None):
        result = runner.invoke(cli, ["--store", str(store), *args], input=input, catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.output, result.stderr)
        return result

    def update(*args, code=0):
        return run("update", str(corpus), "--model", str(tiny_model_dir), *args, code=code)

    return {"run": run, "update": update, "corpus": corpus, "store": store, "model": str(tiny_model_dir)}


def version(store: Path) -> int:
    return json.loads((store / "manifest.json").read_text())["version"]


def test_update_is_incremental(env):
    out = json.loads(env["update"]("--json").stdout)
    assert (out["added"], out["changed"], out["removed"], out["unchanged"]) == (4, 0, 0, 0)
    assert out["chunks_added"] == out["compressed"] == out["indexed"] == 4 and out["rejected"] == 0
    assert out["seconds"] > 0 and set(out["stage_seconds"]) == {"ingest", "compress", "index"}
    v = version(env["store"])

    again = json.loads(env["update"]("--json").stdout)  # unchanged input: no work, no new version
    assert (again["added"], again["unchanged"], again["compressed"], again["index_added"]) == (0, 4, 0, 0)
    assert version(env["store"]) == v == again["version"]

    corpus = env["corpus"]
    (corpus / "eiffel.txt").write_text("The Louvre is the world's most-visited museum, in Paris.")
    (corpus / "lovelace.txt").unlink()
    (corpus / "new.md").write_text("Mount Fuji is the highest volcano in Japan. " * 12)  # several chunks
    out = json.loads(env["update"]("--delete-missing", "--json").stdout)
    assert (out["added"], out["changed"], out["removed"], out["unchanged"]) == (1, 1, 1, 2)
    assert out["compressed"] == out["chunks_added"] > 2  # only the new content is compressed
    assert out["indexed"] == 3 + out["chunks_added"] - 1
    verify = json.loads(env["run"]("verify", "--json").stdout)
    assert verify["ok"] and verify["chunks"] == verify["compressed"] == verify["indexed"] == out["indexed"]
    hits = [json.loads(x)["text"] for x in env["run"]("search", "museum", "-k", "8", "--json").stdout.splitlines()]
    assert any("Louvre" in t for t in hits) and not any("Lovelace" in t or "wrought" in t for t in hits)


def test_quiet_and_partial_failure(env):
    r = env["update"]("--quiet")
    assert r.stdout == "" and r.stderr == ""  # cron mails nothing when all is well
    (env["corpus"] / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (env["corpus"] / "good.txt").write_text("A good new document about glaciers.")
    r = env["update"]("--quiet", code=3)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0] == f"clara: rejected: {env['corpus'] / 'binary.txt'}: binary file (contains NUL bytes)"
    assert lines[1].startswith("clara: error: 1 input was rejected") and len(lines) == 2
    assert json.loads(env["run"]("info", "--json").stdout)["compressed"] == 5  # the good one is in


def test_update_help_documents_exit_codes_and_cron(env):
    out = env["run"]("update", "--help").stdout
    assert "Example:" in out and "crontab" in out and "--no-wait" in out
    for code in ("0 done", "3 some inputs rejected", "4 store busy"):
        assert code in " ".join(out.split())


HOLDER = r"""
import sys
from clara_cli.store import Store
import pyarrow as pa
from clara_cli.store import CHUNK_SCHEMA, DOCUMENT_SCHEMA
store = Store.open(sys.argv[1])
docs = pa.Table.from_pylist([{"doc_id": "held", "source": "held", "content_hash": "h", "n_chars": 4,
                              "metadata": "{}", "ingested_at": 0.0}], schema=DOCUMENT_SCHEMA)
with store.writer() as txn:
    txn.add_documents(docs, CHUNK_SCHEMA.empty_table())
    print("holding", flush=True)
    sys.stdin.readline()
"""


def hold_writer(store: Path) -> subprocess.Popen:
    """Another process in the middle of a transaction, holding the writer lock."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert child.stdout.readline().strip() == "holding"
    return child


def test_busy_store_readers_and_a_killed_writer(env):
    env["update"]()
    store = env["store"]
    before = env["run"]("search", "Eiffel", "-k", "2", "--json").stdout
    child = hold_writer(store)
    try:
        r = env["update"]("--no-wait", code=4)
        assert f"busy: another writer (pid {child.pid} on " in r.stderr and r.stderr.count("\n") == 1
        for command in (["index", "--no-wait"], ["compress", "--no-wait"], ["gc", "--no-wait"]):
            env["run"](*command, code=4)
        # Readers do not wait for the writer, and see the last committed snapshot.
        t0 = time.perf_counter()
        assert env["run"]("search", "Eiffel", "-k", "2", "--json").stdout == before
        assert json.loads(env["run"]("info", "--json").stdout)["documents"] == 4
        assert time.perf_counter() - t0 < 30
    finally:
        child.send_signal(signal.SIGKILL)  # dies mid-transaction: its lock must not outlive it
        child.wait()
    out = json.loads(env["update"]("--no-wait", "--json").stdout)
    assert out["unchanged"] == 4 and json.loads(env["run"]("verify", "--json").stdout)["ok"]


def test_a_second_writer_waits_and_says_for_whom(env, capfd):
    env["update"]()
    child = hold_writer(env["store"])
    store = Store.open(env["store"])
    t0 = time.perf_counter()
    import threading

    threading.Timer(1.0, lambda: (child.stdin.write("go\n"), child.stdin.flush())).start()
    with store.writer() as txn:  # blocks until the child commits
        assert "held" in txn.base.documents().column("doc_id").to_pylist()
    assert time.perf_counter() - t0 >= 0.9
    assert child.wait() == 0
    assert f"waiting for the store {env['store']}: another writer (pid {child.pid}" in capfd.readouterr().err


def flip_byte(path: Path, offset: int | None = None) -> bytes:
    data = path.read_bytes()
    at = len(data) // 2 if offset is None else offset
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:])
    return data


def test_verify_names_damage_and_readers_refuse_it(env):
    env["update"]()
    run, data = env["run"], env["store"] / "data"
    assert run("verify").stdout.startswith("ok: version")

    table = next(data.glob("chunks-*.parquet"))
    good = flip_byte(table)
    r = run("verify", code=6)
    assert f"damaged: {table}: sha256 differs" in r.stdout and table.name in r.stderr
    assert r.stderr.count("\n") == 1
    r = run("search", "Eiffel", "--model", env["model"], code=6)  # refused, not searched
    assert table.name in r.stderr and r.stderr.count("\n") == 1
    table.write_bytes(good)

    shard = next(data.glob("memory-*.safetensors"))
    good = shard.read_bytes()
    shard.write_bytes(good[:-5])  # truncated
    r = run("verify", code=6)
    assert shard.name in r.stdout and "truncated" in r.stdout
    # One flipped bit inside a memory row: same size, so only a checksum can tell.
    header_len = struct.unpack("<Q", good[:8])[0]
    start, _ = json.loads(good[8:8 + header_len])["memory"]["data_offsets"]
    shard.write_bytes(good)
    flip_byte(shard, 8 + header_len + start + 5)
    assert shard.name in run("verify", code=6).stdout
    r = run("ask", "Who wrote a program?", "-k", "4", "--max-new-tokens", "2", code=6)
    assert shard.name in r.stderr and r.stderr.count("\n") == 1
    # rows read by key (what the generator reads) are checked by their own CRCs
    with Store.open(env["store"]).snapshot() as snap, pytest.raises(CorruptDataError, match=f"{shard.name}.*CRC"):
        snap.read_memory(snap.memory_keys())
    # the search scan reads every row: each shard's sha256 is checked before it is scored
    r = run("search", "Eiffel", "--retriever", "latent", "--model", env["model"], code=6)
    assert shard.name in r.stderr and "sha256" in r.stderr and r.stderr.count("\n") == 1
    shard.write_bytes(good)

    info = json.loads((env["store"] / "manifest.json").read_text())["index"]
    index_file = data / (info.get("keys_file") or info["file"])
    good = index_file.read_bytes()
    index_file.write_bytes(good[: len(good) // 2])
    assert index_file.name in run("verify", code=6).stdout
    if info.get("file"):  # a FAISS index is read by search (a flat index's keys file only by updates)
        assert index_file.name in run("search", "Eiffel", "--model", env["model"], code=6).stderr
    index_file.write_bytes(good)
    assert run("verify").stdout.startswith("ok:")


def test_gc_removes_leftovers_and_old_snapshots_no_reader_holds(env):
    env["update"]()
    store_dir, data = env["store"], env["store"] / "data"
    reader = Store.open(store_dir).snapshot()  # a long-running reader of this version
    (env["corpus"] / "eiffel.txt").write_text("The Louvre is the world's most-visited museum, in Paris.")
    env["update"]()
    (data / "memory-0123456789abcdef.safetensors").write_bytes(b"left by a killed run")
    (store_dir / ".manifest.json.0badf00d.tmp").write_text("{")
    removed = json.loads(env["run"]("gc", "--json").stdout)["files"]
    assert "memory-0123456789abcdef.safetensors" in removed and ".manifest.json.0badf00d.tmp" in removed
    held = {e["name"] for e in reader.files()}
    assert all((data / name).exists() for name in held)  # the reader's files stay
    assert reader.chunks(["text"]).num_rows == 4 and len(reader.read_memory(reader.memory_keys())) == 4

    reader.close()
    out = json.loads(env["run"]("gc", "--json").stdout)
    assert out["removed"] > 0 and out["bytes_freed"] > 0
    current = {e["name"] for e in Store.open(store_dir).snapshot().files()}
    assert {p.name for p in data.iterdir()} == current  # nothing but the current snapshot
    assert run_ok(env, "verify").startswith("ok:")
    assert "Louvre" in env["run"]("search", "museum", "-k", "4", "--json").stdout


def run_ok(env, *args) -> str:
    return env["run"](*args).stdout


def test_update_from_stdin_and_ingest_no_wait(env):
    lines = "\n".join(json.dumps({"id": f"r{i}", "text": f"Record {i} about lighthouses and tides."}) for i in range(3))
    out = json.loads(env["run"]("update", "-", "--model", env["model"], "--json", input=lines).stdout)
    assert out["added"] == 3 and out["compressed"] == 3
    child = hold_writer(env["store"])
    try:
        r = env["run"]("ingest", str(env["corpus"]), "--model", env["model"], "--no-wait", code=4)
        assert "busy" in r.stderr
    finally:
        child.kill()
        child.wait()
    assert os.path.exists(env["store"] / "manifest.json")


def memory_dtypes(store: Path) -> set[str]:
    manifest = json.loads((store / "manifest.json").read_text())
    return {e["dtype"] for e in manifest["files"] if e["kind"] == "memory"}


def test_store_keeps_its_memory_dtype_whatever_machine_compresses(env):
    """Shards written in bf16 (an AMX machine) stay bf16 when an fp32 machine adds to the store."""
    env["update"]("--dtype", "bf16")
    assert memory_dtypes(env["store"]) == {"bfloat16"}
    (env["corpus"] / "new.md").write_text("Mount Fuji is the highest volcano in Japan. " * 12)
    out = json.loads(env["update"]("--dtype", "fp32", "--json").stdout)
    assert out["compressed"] > 0 and memory_dtypes(env["store"]) == {"bfloat16"}


def test_explicit_bf16_on_a_cpu_without_it_prints_one_notice(env, monkeypatch):
    monkeypatch.setattr("clara_cli.model.cpu_supports_bf16", lambda: False)
    slow = env["update"]("--dtype", "bf16").stderr
    assert sum("very slow" in line for line in slow.splitlines()) == 1
    (env["corpus"] / "new.md").write_text("Mount Fuji is the highest volcano in Japan.")
    assert "very slow" not in env["update"]("--dtype", "auto").stderr  # auto picks fp32 there
    assert memory_dtypes(env["store"]) == {"bfloat16"}  # and keeps the store's dtype
