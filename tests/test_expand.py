"""Selective expansion (`ask --expand N`, ours): the generator reads the raw text of the N best
sources and the memory tokens of the others, through the one question pipeline."""

from __future__ import annotations

import json

import pytest

from clara_cli.answer import Retriever, ask
from clara_cli.compress import compress_store, model_info
from clara_cli.evaluate import EvalQuestion, evaluate
from clara_cli.ingest import ingest
from clara_cli.store import Store

DOCS = ["The Eiffel Tower in Paris was completed in 1889.",
        "Mount Kilimanjaro is the highest mountain in Africa.",
        "The Danube empties into the Black Sea.",
        "Marie Curie won Nobel Prizes in physics and chemistry."]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("expand")
    rows = root / "docs.jsonl"
    rows.write_text("".join(json.dumps({"id": f"d{i}", "text": d}) + "\n" for i, d in enumerate(DOCS)))
    s = Store.open(root / "store", create=True)
    ingest(s, [str(rows)], tiny_model.tokenizer, 64, model_info=model_info(tiny_model), progress=False)
    compress_store(s, tiny_model, progress=False)
    return s


def test_expanded_sources_are_read_as_text(store, tiny_model):
    snap = store.snapshot()
    retriever = Retriever(snap, "bm25")
    q = "When was the Eiffel Tower completed?"
    plain = ask(snap, tiny_model, [q], k=3, max_new_tokens=3, retriever=retriever)[0]
    one = ask(snap, tiny_model, [q], k=3, max_new_tokens=3, retriever=retriever, expand=1)[0]
    assert [h.chunk_id for h in one.sources] == [h.chunk_id for h in plain.sources]  # same retrieval
    top = one.sources[0].text
    assert "Eiffel" in top
    tok = tiny_model.tokenizer
    rest = len(one.sources) - 1  # BM25 returns only chunks sharing a word with the question
    expect = len(tok(tiny_model.prompt(q, rest, [top]), add_special_tokens=False).input_ids)
    assert one.context_tokens == expect != plain.context_tokens  # the other memory slots + the top text
    assert tiny_model.prompt(q, rest, [top]).count(top) == 1 and top not in tiny_model.prompt(q, rest + 1)
    everything = ask(snap, tiny_model, [q], k=3, max_new_tokens=3, retriever=retriever, expand=5)[0]
    assert "<MEM0>" not in tok.decode(tok(tiny_model.prompt(q, 0, [h.text for h in everything.sources])).input_ids)


def test_eval_reports_expansion_as_its_own_system(store, tiny_model):
    questions = [EvalQuestion(question="When was the Eiffel Tower completed?", answers=["1889"],
                              gold_titles=["d0"])]
    report = evaluate(store.snapshot(), tiny_model, questions, k=2, max_new_tokens=2, baselines=[],
                      progress=False, retriever=Retriever(store.snapshot(), "bm25"), expand=1)
    (clara,) = report.systems
    slot = tiny_model.config.n_mem + 1
    assert clara.system == "clara-bm25-expand1" and "1 raw" in clara.reader
    assert clara.passage_tokens > slot  # one slot of memory plus the text of the best chunk


def test_the_models_setting_is_the_default(store, tiny_model):
    """config.expand (0 for Apple's checkpoints) is what ask does without expand=."""
    snap = store.snapshot()
    retriever = Retriever(snap, "bm25")
    q = "When was the Eiffel Tower completed?"
    one = ask(snap, tiny_model, [q], k=3, max_new_tokens=3, retriever=retriever, expand=1)[0]
    assert tiny_model.config.expand == 0
    tiny_model.config.expand = 1
    try:
        default = ask(snap, tiny_model, [q], k=3, max_new_tokens=3, retriever=retriever)[0]
    finally:
        tiny_model.config.expand = 0
    assert default.context_tokens == one.context_tokens and default.answer == one.answer
