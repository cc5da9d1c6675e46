"""The retrieval stage (contrastive query reasoner against frozen, centred memories) and the
retrieval center it records: saved with the model, left in the store at bind time, and applied
identically by training, the flat scan, the ANN indexes and the exact rerank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clara_cli.checkpoint import load_model, read_adapter_tensors
from clara_cli.compress import compress_store
from clara_cli.index import IndexOptions, VectorSearch, store_center, update_index
from clara_cli.model import ClaraModel, retrieval_scores
from clara_cli.store import Store
from clara_cli.train import TrainConfig, train
from clara_cli.train.stages import drop_words
from tests.test_train import DOCS as TRAIN_DOCS

DOCS = [*TRAIN_DOCS,  # the trainer tests' six documents, and two more
        "The Amazon rainforest covers much of the Amazon basin of South America.",
        "Johann Sebastian Bach was a German composer of the late Baroque period."]
QUESTIONS = ["When was the Eiffel Tower completed?", "How high is Kilimanjaro?", "Who wrote the first program?",
             "Where does the Danube end?", "Who won two Nobel Prizes in sciences?", "How long is the Great Wall?",
             "What does the Amazon rainforest cover?", "Which period did Bach compose in?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("retrieval-data") / "retrieval.jsonl"
    rows = [{"question": q, "docs": [d], "answer": "x", "pos_index": [0]} for q, d in zip(QUESTIONS, DOCS, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(data: Path, out: Path, init: Path, **kw) -> TrainConfig:
    base = {"steps": 30, "batch_size": 8, "dtype": "fp32", "device": "cpu", "save_every": 100, "lr": 3e-3,
            "dropout": False, "tau": 0.1}
    return TrainConfig("retrieval", str(data), str(out), init_from=str(init), **{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, data):
    out = tmp_path_factory.mktemp("retrieval") / "model"
    return out, train(config(data, out, tiny_model_dir), progress=False)


def recall_at_1(model: ClaraModel) -> float:
    scores = retrieval_scores(model.encode_queries(QUESTIONS), model.compress(DOCS), model.retrieval_center)
    return float((scores.argmax(1) == torch.arange(len(DOCS))).float().mean())


def test_contrastive_stage_learns_to_find_the_document(trained, tiny_model_dir):
    out, result = trained
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    before = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    after = load_model(str(out), device="cpu", dtype="fp32")
    assert recall_at_1(after) == 1.0 > recall_at_1(before)


def test_only_the_query_reasoner_changes_and_the_center_is_recorded(trained, tiny_model_dir):
    out, _ = trained
    old, new = read_adapter_tensors(tiny_model_dir), read_adapter_tensors(out)
    for key, t in new.items():
        same = torch.equal(t.float(), old[key].float())
        assert same == (not key.startswith("query_reasoner_adapter/")), key
    meta = json.loads((out / "clara.json").read_text())
    assert meta["config"]["retrieval_center"] is True
    model = load_model(str(out), device="cpu", dtype="fp32")
    mean = model.compress(DOCS).reshape(len(DOCS), -1).mean(0)
    assert torch.allclose(model.retrieval_center, mean, atol=1e-5)  # the pool's mean memory


def test_a_new_query_reasoner_keeps_the_fingerprint(trained, tmp_path, tiny_model_dir, data):
    """The fingerprint covers what shapes memory and index (compressor, rows, center), so stores
    compressed before a query reasoner is retrained stay valid; Apple-style models (no center)
    get another fingerprint than centred ones."""
    out, first = trained
    again = train(config(data, tmp_path / "more", out, lr=1e-3, steps=3), progress=False)
    assert again.fingerprint == first.fingerprint
    plain = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    assert plain.retrieval_center is None and plain.fingerprint != first.fingerprint


def test_a_compressor_stage_drops_the_center_and_retrieval_computes_it_anew(trained, tmp_path, data):
    """scp changes the compressor, so the center (its mean memory) and the query reasoner go;
    the next retrieval stage records the new compressor's mean memory."""
    out, _ = trained
    scp_data = tmp_path / "scp.jsonl"
    scp_data.write_text("".join(json.dumps({"data_type": "paraphrase", "answers": [d], "docs": [d]}) + "\n"
                                for d in DOCS))
    scp = train(TrainConfig("scp", str(scp_data), str(tmp_path / "scp"), init_from=str(out), steps=2, batch_size=4,
                            dtype="fp32", device="cpu", lr=3e-3, dropout=False), progress=False)
    meta = json.loads((tmp_path / "scp" / "clara.json").read_text())
    assert meta["config"]["retrieval_center"] is False and "query_reasoner_adapter" not in meta["config"]["adapters"]
    assert load_model(str(tmp_path / "scp"), device="cpu", dtype="fp32").retrieval_center is None
    train(config(data, tmp_path / "again", tmp_path / "scp", steps=1), progress=False)
    model = load_model(str(tmp_path / "again"), device="cpu", dtype="fp32")
    assert scp.fingerprint != load_model(str(out), device="cpu", dtype="fp32").fingerprint
    assert torch.allclose(model.retrieval_center, model.compress(DOCS).reshape(len(DOCS), -1).mean(0), atol=1e-5)


def test_resumed_retrieval_run_equals_uninterrupted(tmp_path, tiny_model_dir, data):
    straight = train(config(data, tmp_path / "a", tiny_model_dir, steps=6, query_word_dropout=0.3), progress=False)
    train(config(data, tmp_path / "b", tiny_model_dir, steps=6, query_word_dropout=0.3), progress=False, stop_after=3)
    resumed = train(config(data, tmp_path / "b", tiny_model_dir, steps=6, query_word_dropout=0.3), progress=False)
    assert resumed.resumed_from == 3 and resumed.loss_last == pytest.approx(straight.loss_last, abs=1e-6)
    a, b = read_adapter_tensors(tmp_path / "a"), read_adapter_tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_word_dropout_is_seeded_and_keeps_three_words():
    q = "In which year was the wrought iron lattice tower in Paris completed"
    assert drop_words(q, 0.5, 0, 1, 7) == drop_words(q, 0.5, 0, 1, 7)
    assert {drop_words(q, 0.5, 0, e, 7) for e in range(5)} != {q}
    assert len(drop_words(q, 0.99, 0, 0, 0).split()) >= 3 and drop_words(q, 0.0, 0, 0, 0) == q


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_store_search_scores_the_centred_cosine(trained, tmp_path, kind):
    """compress leaves the center in the store; every index kind returns the exact centred
    cosine of the model (brute force here), and verify accepts the store."""
    from clara_cli.compress import model_info
    from clara_cli.ingest import ingest
    from clara_cli.update import check_store

    out, _ = trained
    model = load_model(str(out), device="cpu", dtype="fp32")
    store = Store.open(tmp_path / "s", create=True)
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(DOCS * 3)))
    ingest(store, [str(rows)], model.tokenizer, 64, model_info=model_info(model), progress=False)
    compress_store(store, model, progress=False)
    update_index(store, IndexOptions(kind=kind, nlist=2, compact_dim=16), progress=False)
    snap = store.snapshot()
    center = store_center(snap)
    assert center is not None and np.allclose(center, model.retrieval_center.numpy())
    keys = np.asarray(snap.memory_keys(), dtype=np.int64)
    memory = snap.read_memory(keys)
    search = VectorSearch(snap)
    q = model.encode_queries(QUESTIONS)
    expect = retrieval_scores(q, memory, model.retrieval_center)  # [Q, N]
    for qi, hits in enumerate(search.search(search.query_vectors(q), k=3)):
        top = torch.topk(expect[qi], 3)
        assert [s for _, s in hits] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert check_store(store.snapshot()).ok


def test_scp_qa_lines_become_retrieval_examples(tmp_path):
    from clara_cli.train import read_records

    path = tmp_path / "pretrain.jsonl"
    path.write_text(json.dumps({"data_type": "qa", "question": QUESTIONS[:2], "answers": ["1889", "5,895"],
                                "docs": [DOCS[0]]}) + "\n"
                    + json.dumps({"data_type": "paraphrase", "question": [""], "answers": [DOCS[1]],
                                  "docs": [DOCS[1]]}) + "\n")
    records = read_records(path, "retrieval")
    assert [(r.question, r.docs, r.pos_index) for r in records] == [(q, [DOCS[0]], [0]) for q in QUESTIONS[:2]]


def test_model_identity_from_files_is_what_the_loaded_model_says(trained, tiny_model_dir):
    """`clara ingest` binds the store from the model's files alone (checkpoint.model_identity):
    the same record and tokenizer as the loaded model's, center included."""
    from clara_cli.checkpoint import model_identity
    from clara_cli.compress import model_info

    for path in (tiny_model_dir, trained[0]):
        info, tokenizer = model_identity(str(path))
        model = load_model(str(path), device="cpu", dtype="fp32")
        want = model_info(model)
        center, want_center = info.pop("retrieval_center", None), want.pop("retrieval_center", None)
        assert info == want
        assert (center is None) == (want_center is None) and (center is None or torch.equal(center, want_center))
        text = "The <MEM0> tower, <SEP> completed in 1889."
        assert tokenizer(text).input_ids == model.tokenizer(text).input_ids
    assert model_identity(str(trained[0]))[0]["retrieval_center"] is not None


def test_official_checkpoints_are_identified_by_their_weights(fixture_dir):
    from clara_cli.checkpoint import model_identity

    assert model_identity(str(fixture_dir)) is None  # ingest loads the model for these
