"""The CLI contract, through click's runner and through the installed `clara` command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sample_docs import DOCS, write_corpus

from clara_cli.cli import cli
from clara_cli.ingest import read_inputs
from clara_cli.model import cpu_name


def clara_bin() -> str:
    exe = Path(sys.executable).parent / "clara"
    return str(exe) if exe.exists() else "clara"


@pytest.fixture()
def env(tmp_path, tiny_model_dir):
    corpus = write_corpus(tmp_path / "corpus")
    store = tmp_path / "store"
    runner = CliRunner()

    def run(*args, input=None, code=0):
        result = runner.invoke(cli, ["--store", str(store), *args], input=input, catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.output, result.stderr)
        return result

    return {"run": run, "corpus": corpus, "store": store, "model": str(tiny_model_dir)}


def manifest_version(store: Path) -> int:
    return json.loads((store / "manifest.json").read_text())["version"]


def build(env):
    run, m = env["run"], env["model"]
    run("ingest", str(env["corpus"]), "--model", m)
    out = run("compress", "--model", m, "--dtype", "fp32", "--batch-size", "2").stdout
    assert f"chunks/s [{cpu_name()}, fp32])" in out  # the speed with the machine and dtype it is of
    run("index")


def test_end_to_end_json(env):
    build(env)
    run = env["run"]
    hits = [json.loads(line) for line in run("search", "Eiffel Tower", "-k", "3", "--json").stdout.splitlines()]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert set(hits[0]) == {"rank", "score", "chunk_id", "doc_id", "source", "start", "end", "text"}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    for hit in hits:  # each hit is its document's text at [start, end) (of an HTML page's text)
        doc = next(iter(read_inputs([hit["source"]])))
        assert doc.text[hit["start"]:hit["end"]] == hit["text"]

    questions = "\n".join(json.dumps({"question": q}) for q in ["Where is the reef?", "Who wrote a program?"])
    answers = [json.loads(line) for line in run("ask", "-", "-k", "2", "--max-new-tokens", "4", "--json",
                                                input=questions).stdout.splitlines()]
    assert [a["question"] for a in answers] == ["Where is the reef?", "Who wrote a program?"]
    for a in answers:
        assert set(a) == {"question", "answer", "sources", "context_tokens", "timings"}
        assert len(a["sources"]) == 2 and a["context_tokens"] > 2 * 4

    info = json.loads(run("info", "--json").stdout)
    assert info["documents"] == 4 and info["chunks"] == info["compressed"] == 4
    assert info["bytes"] > 0 and info["compression_ratio"] > 1
    assert info["indexed"] == 4


def test_plain_text_output_and_help(env):
    build(env)
    out = env["run"]("ask", "Where is the Eiffel Tower?", "-k", "2", "--max-new-tokens", "3").stdout
    assert "Sources:" in out and "[1]" in out and "[2]" in out
    for command in ("ingest", "compress", "index", "search", "ask", "info", "convert"):
        assert "Example:" in env["run"](command, "--help").stdout


def test_rerun_on_unchanged_input_does_no_work(env):
    build(env)
    run, m, store = env["run"], env["model"], env["store"]
    version = manifest_version(store)
    out = json.loads(run("ingest", str(env["corpus"]), "--model", m, "--json").stdout)
    assert out["added"] == out["changed"] == 0 and out["unchanged"] == 4
    assert json.loads(run("compress", "--json").stdout)["compressed"] == 0
    assert json.loads(run("index", "--json").stdout)["added"] == 0
    assert manifest_version(store) == version


def test_changed_file_replaces_its_chunks_and_index_follows(env):
    build(env)
    run, m = env["run"], env["model"]
    (env["corpus"] / "eiffel.txt").write_text("The Louvre is the world's most-visited museum, in Paris.")
    out = json.loads(run("ingest", str(env["corpus"]), "--model", m, "--json").stdout)
    assert out["changed"] == 1
    assert json.loads(run("compress", "--json").stdout)["compressed"] == 1
    report = json.loads(run("index", "--json").stdout)
    assert report["added"] == 1 and report["removed"] == 1 and report["total"] == 4
    texts = [json.loads(x)["text"] for x in run("search", "museum", "-k", "4", "--json").stdout.splitlines()]
    assert any("Louvre" in t for t in texts) and not any("wrought-iron" in t for t in texts)


def test_store_bound_to_another_model_refuses(env, fixture_dir):
    build(env)
    result = env["run"]("compress", "--model", str(fixture_dir), code=5)
    bound = json.loads((env["store"] / "manifest.json").read_text())["model"]["fingerprint"]
    assert f"is bound to model {bound}" in result.stderr and result.stderr.count("\n") == 1
    result = env["run"]("search", "x", "--model", str(fixture_dir), code=5)
    assert result.stderr.count("\n") == 1


def test_bad_inputs_are_named_and_good_ones_committed(env):
    run, m, corpus = env["run"], env["model"], env["corpus"]
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02 binary")
    (corpus / "empty.txt").write_text("   \n")
    (corpus / "records.jsonl").write_text('{"text": "good line"}\n{not json\n{"text": 5}\n')
    result = run("ingest", str(corpus), str(corpus / "missing.txt"), "--model", m, code=3)
    for name in ("binary.txt", "empty.txt", "records.jsonl:2", "records.jsonl:3", "missing.txt"):
        assert name in result.stderr, name
    info = json.loads(run("info", "--json").stdout)
    assert info["documents"] == 4 + 1  # the four good files and the good JSONL line


def test_errors_are_one_line_with_exit_codes(env, tmp_path):
    run = env["run"]
    result = run("search", "anything", code=1)  # no store yet
    assert result.stderr.startswith("clara: error:") and result.stderr.count("\n") == 1
    run("ask", "x", "-k", "0", code=2)


def test_corrupted_shard_is_refused(env):
    build(env)
    store = env["store"]
    manifest = json.loads((store / "manifest.json").read_text())
    shard = next(p for p in (store / "data").iterdir() if p.suffix == ".safetensors")
    shard.write_bytes(shard.read_bytes()[:-7])
    result = env["run"]("ask", "Eiffel?", "-k", "1", "--max-new-tokens", "2", code=6)
    assert shard.name in result.stderr
    assert manifest == json.loads((store / "manifest.json").read_text())


def test_installed_command_in_subprocess(env):
    store, m = env["store"], env["model"]
    exe = clara_bin()
    run = lambda *a, **kw: subprocess.run([exe, "--store", str(store), *a], capture_output=True, text=True, **kw)  # noqa: E731
    assert run("--help").returncode == 0
    lines = "\n".join(json.dumps({"text": t, "id": f"doc{i}"}) for i, t in enumerate(DOCS.values()))
    r = run("ingest", "-", "--model", m, "--json", input=lines)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 4
    assert run("compress", "--dtype", "fp32").returncode == 0
    r = run("search", "reef", "-k", "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["doc_id"].startswith("doc")


def test_kill_during_compress_then_rerun(env, tmp_path):
    """kill -9 mid-compress, rerun: every chunk has exactly one memory row, and search equals an
    uninterrupted run's."""
    from clara_cli.store import Store

    m = env["model"]
    lines = "\n".join(json.dumps({"text": f"Paragraph {i} about topic {i % 7}: " + "word " * (i % 30), "id": str(i)})
                      for i in range(300))
    exe = clara_bin()
    stores = {name: tmp_path / name for name in ("killed", "clean")}
    for store in stores.values():
        r = subprocess.run([exe, "--store", str(store), "ingest", "-", "--model", m], input=lines,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    killed = stores["killed"]
    start_version = manifest_version(killed)
    proc = subprocess.Popen([exe, "--store", str(killed), "compress", "--dtype", "fp32", "--batch-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and manifest_version(killed) < start_version + 20:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Store.open(killed).snapshot()
    assert 0 < len(partial.memory_keys()) < 300, "the kill should land mid-run"

    for store in stores.values():
        r = subprocess.run([exe, "--store", str(store), "compress", "--dtype", "fp32", "--batch-size", "16"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert subprocess.run([exe, "--store", str(store), "index"], capture_output=True).returncode == 0
    snap = Store.open(killed).snapshot()
    keys = snap.memory_keys()
    chunk_keys = sorted(int(c, 16) for c in snap.chunks(columns=["chunk_id"]).column("chunk_id").to_pylist())
    assert sorted(keys.tolist()) == chunk_keys and len(set(keys.tolist())) == 300

    def results(store):
        r = subprocess.run([exe, "--store", str(store), "search", "topic 3", "-k", "5", "--json"],
                           capture_output=True, text=True)
        return [(h["chunk_id"], round(h["score"], 4)) for h in map(json.loads, r.stdout.splitlines())]

    assert results(killed) == results(stores["clean"])
    shutil.rmtree(tmp_path / "clean")
