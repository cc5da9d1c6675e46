"""Hybrid retrieval: the store's incremental BM25 (bm25s), `--retriever latent|bm25|hybrid` on
search and ask, reciprocal rank fusion; and int8 memory's effect on answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_index import add_docs  # tests/ is on sys.path (pytest's rootdir-relative import)

from clara_cli.answer import Retriever, rrf
from clara_cli.cli import cli
from clara_cli.index import IndexOptions, update_index
from clara_cli.store import Store, dequantize_int8, quantize_int8

DOCS = {
    "eiffel.txt": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889.",
    "kilimanjaro.txt": "Mount Kilimanjaro is the highest mountain in Africa, a dormant volcano in Tanzania.",
    "lovelace.txt": "Ada Lovelace wrote the first computer program for Charles Babbage's Analytical Engine.",
    "reef.txt": "The Great Barrier Reef lies off Queensland, Australia, and is visible from space.",
    "amazon.txt": "The Amazon river carries more water than any other river on Earth.",
    "sahara.txt": "The Sahara is the largest hot desert, covering much of North Africa.",
}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


def test_bm25_incremental_and_hybrid(store):
    add_docs(store, 1, 200)
    update_index(store, IndexOptions(kind="flat"), progress=False)
    rec = store.snapshot().manifest["index"]["bm25"]
    assert rec["rows"] == 200 and len(rec["segments"]) == 1
    r = Retriever(store.snapshot(), mode="bm25")
    hits = r.search(None, ["w17 castle"], 3)[0]
    assert hits[0][0] == 17
    add_docs(store, 301, 20)
    with store.writer() as tx:
        tx.remove_documents(["d17"])
    update_index(store, progress=False)
    rec2 = store.snapshot().manifest["index"]["bm25"]
    assert rec2["rows"] == 219 and len(rec2["segments"]) == 2 and rec2["segments"][0] == rec["segments"][0]
    r = Retriever(store.snapshot(), mode="bm25")
    assert 17 not in [k for k, _ in r.search(None, ["w17 castle"], 5)[0]]
    assert r.search(None, ["w305"], 1)[0][0][0] == 305
    # unchanged store: no new files
    version = store.snapshot().version
    update_index(store, progress=False)
    assert store.snapshot().version == version
    manifest = json.loads((store.root / "manifest.json").read_text())
    names = {e["name"] for e in manifest["files"]}
    assert set(rec2["files"]) <= names


def test_rrf_fuses_ranks():
    a = [(1, 0.9), (2, 0.8), (3, 0.7)]
    b = [(3, 12.0), (4, 11.0), (1, 10.0)]
    fused = rrf([a, b], 3)
    assert [k for k, _ in fused] == [1, 3, 2]


def test_rrf_weights_decide_order_and_ties():
    latent = [(1, 0.9), (2, 0.8), (3, 0.7)]
    lexical = [(2, 9.0), (1, 8.0), (4, 7.0)]
    # equal weights: keys 1 and 2 sum the same, the first ranking breaks the tie
    assert [k for k, _ in rrf([latent, lexical], 4)] == [1, 2, 3, 4]
    # hybrid's weights: BM25 leads the ties and the order, the query reasoner's ranks only nudge
    assert [k for k, _ in rrf([latent, lexical], 4, weights=(0.1, 1.0))] == [2, 1, 4, 3]
    # a paragraph BM25 ranks a little lower rises into the top k when the query reasoner ranks it first
    lexical = [(k, 10.0 - k) for k in range(10, 20)] + [(1, 0.5)]
    latent = [(1, 0.9)]
    assert 1 in [k for k, _ in rrf([latent, lexical], 5, weights=(0.1, 1.0))]
    assert 1 not in [k for k, _ in rrf([[], lexical], 5, weights=(0.1, 1.0))]
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        rrf([latent], 5, weights=(0.1, 1.0))


def cli_store(tmp_path, tiny_model_dir, memory_dtype: str = "fp32"):
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    store = tmp_path / f"store-{memory_dtype}"
    runner = CliRunner()

    def run(*args, code=0):
        result = runner.invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.output, result.stderr)
        return result

    run("ingest", str(corpus), "--model", str(tiny_model_dir))
    run("compress", "--dtype", "fp32", "--memory-dtype", memory_dtype)
    run("index")
    return run, store


def test_cli_retrievers(tmp_path, tiny_model_dir):
    run, store = cli_store(tmp_path, tiny_model_dir)
    info = Store(store).snapshot().manifest["index"]
    assert info["kind"] == "flat" and info["bm25"]["rows"] == len(DOCS)
    hits = [json.loads(x) for x in run("search", "Babbage Analytical Engine", "--retriever", "bm25", "-k", "2",
                                        "--json").stdout.splitlines()]
    assert "Lovelace" in hits[0]["text"] and len(hits) == 1  # the only chunk sharing a term
    fused = [json.loads(x) for x in run("search", "Babbage Analytical Engine", "--retriever", "hybrid", "-k", "3",
                                         "--json").stdout.splitlines()]
    assert len(fused) == 3 and fused[0]["score"] >= fused[1]["score"] >= fused[2]["score"]
    assert "Lovelace" in fused[0]["text"]  # BM25's only match, so first in any fusion
    out = json.loads(run("ask", "Who wrote the first program?", "--retriever", "hybrid", "-k", "2",
                         "--max-new-tokens", "3", "--json").stdout)
    assert len(out["sources"]) == 2


def test_int8_memory_answers_agree_with_fp32(tiny_model):
    """int8 (per-token scales) vs fp32 memory: the same retrieval and near-identical greedy
    answers on the tiny model (its weights are random: this bounds the numerical effect; the
    default model's figures are in the README)."""
    texts = list(DOCS.values())
    m32 = tiny_model.compress(texts)
    m8 = dequantize_int8(*quantize_int8(m32))
    assert float((m8 - m32).norm() / m32.norm()) < 0.01
    questions = ["Where is the Eiffel Tower?", "Which river carries the most water?", "What is the Sahara?"]
    q = torch.nn.functional.normalize(tiny_model.encode_queries(questions).reshape(3, -1), dim=-1)
    x32 = torch.nn.functional.normalize(m32.reshape(len(texts), -1), dim=-1)
    x8 = torch.nn.functional.normalize(m8.reshape(len(texts), -1), dim=-1)
    top32, top8 = (q @ x32.T).topk(3).indices, (q @ x8.T).topk(3).indices
    assert torch.equal(top32, top8)
    agree = []
    for qi, question in enumerate(questions):
        ta = tiny_model.generate([question], [m32[top32[qi]]], max_new_tokens=8, return_ids=True)[1][0].tolist()
        tb = tiny_model.generate([question], [m8[top32[qi]]], max_new_tokens=8, return_ids=True)[1][0].tolist()
        agree.append(sum(x == y for x, y in zip(ta, tb, strict=False)) / max(len(ta), len(tb), 1))
    assert np.mean(agree) >= 0.75, agree
