"""Metrics against hand-worked examples; `clara eval` end to end on a tiny store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clara_cli.cli import cli
from clara_cli.errors import UsageError
from clara_cli.evaluate import (
    answer_scores,
    cover_em,
    exact_match,
    load_questions,
    normalize_answer,
    parse_baselines,
    recall_at_k,
    token_f1,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# --------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  An   apple,  a pear and THE plum. ", "apple pear and plum"),
    ("New-York Tribune", "newyork tribune"),  # SQuAD deletes punctuation, it does not space it
    ("Theory of the atom", "theory of atom"),  # only whole words a/an/the go
    ("486,492", "486492"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    assert exact_match("1889", ["in 1889", "1889"]) == 1.0  # max over golds
    assert exact_match("Paris", "paris") == 1.0  # a single gold string is accepted


def test_token_f1_hand_worked():
    # pred {paris, is, in, france}, gold {paris, france}: overlap 2, P = 2/4, R = 2/2, F1 = 2/3
    assert token_f1("Paris is in France", ["Paris, France"]) == pytest.approx(2 / 3)
    # "the" is dropped: pred {cat, sat}, gold {cat}: P = 1/2, R = 1, F1 = 2/3
    assert token_f1("The cat sat", ["cat"]) == pytest.approx(2 / 3)
    # repeated tokens count once per occurrence: "big big dog" vs "big dog": overlap 2, P 2/3, R 1, F1 0.8
    assert token_f1("big big dog", ["big dog"]) == pytest.approx(0.8)
    assert token_f1("nothing shared", ["Paris"]) == 0.0
    # max over golds: 0 for the first, 1 for the second
    assert token_f1("Bram Stoker", ["Mary Shelley", "Bram Stoker"]) == 1.0
    assert token_f1("", ["x"]) == 0.0


def test_cover_em_hand_worked():
    assert cover_em("It was completed in 1889.", ["1889"]) == 1.0
    assert cover_em("The novel was written by Bram Stoker, an Irish author", ["bram stoker"]) == 1.0
    assert cover_em("Stoker", ["Bram Stoker"]) == 0.0  # the gold must be inside the prediction
    assert cover_em("The answer is Paris", ["The"]) == 0.0  # a gold that normalises to "" never counts
    # plain substring, as the literature's "acc": "28" occurs inside "1280"
    assert cover_em("1280", ["28"]) == 1.0
    assert answer_scores("Bram Stoker.", ["Bram Stoker"]) == {"em": 1.0, "f1": 1.0, "cover_em": 1.0}


def test_recall_at_k():
    retrieved = [("c1", "wiki:Dracula", "Dracula"), ("c2", "doc2", "Whitby"), ("c3", "d3", "Paris")]
    assert recall_at_k(retrieved, ["c2"], []) == 1.0
    assert recall_at_k(retrieved, ["c2", "c9"], []) == 0.5  # share of gold items found
    assert recall_at_k(retrieved, [], ["dracula"]) == 1.0  # titles case-insensitive
    assert recall_at_k(retrieved, [], ["doc2"]) == 1.0  # a title may name the doc id
    assert recall_at_k(retrieved, [], ["London"]) == 0.0
    assert recall_at_k(retrieved, [], []) is None


def test_load_questions_errors_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Who?", "answers": ["x"]}\n\n{"question": "Why?"}\n')
    with pytest.raises(UsageError, match="q.jsonl:3: missing \"answers\""):
        load_questions(path)
    path.write_text('{"question": "Who?", "answer": "x", "gold_titles": ["T"]}\nnot json\n')
    assert load_questions(path, limit=1)[0].answers == ["x"]
    with pytest.raises(UsageError, match=":2: malformed JSON"):
        load_questions(path)
    with pytest.raises(UsageError, match="unknown baseline"):
        parse_baselines("bm25,colbert")
    assert parse_baselines("none") == [] and parse_baselines("minilm, bm25") == ["minilm", "bm25"]


# --------------------------------------------------------------------------------------- eval end to end

DOCS = [
    {"id": "wiki:Eiffel Tower", "metadata": {"title": "Eiffel Tower"},
     "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889."},
    {"id": "wiki:Kilimanjaro", "metadata": {"title": "Kilimanjaro"},
     "text": "Mount Kilimanjaro is the highest mountain in Africa, in Tanzania."},
    {"id": "wiki:Ada Lovelace", "metadata": {"title": "Ada Lovelace"},
     "text": "Ada Lovelace wrote the first computer program for Charles Babbage's Analytical Engine."},
    {"id": "wiki:Great Barrier Reef", "metadata": {"title": "Great Barrier Reef"},
     "text": "The Great Barrier Reef lies off Queensland, Australia."},
    {"id": "wiki:Dracula", "metadata": {"title": "Dracula"},
     "text": "Dracula is an 1897 Gothic horror novel by Irish author Bram Stoker."},
]
QUESTIONS = [
    {"question": "When was the Eiffel Tower completed?", "answers": ["1889"], "gold_titles": ["Eiffel Tower"]},
    {"question": "Who wrote Dracula?", "answers": ["Bram Stoker"], "gold_titles": ["Dracula"]},
    {"question": "Where is the Great Barrier Reef?", "answers": ["Queensland"]},
]


@pytest.fixture(scope="module")
def eval_env(tmp_path_factory, tiny_model, tiny_model_dir):
    from clara_cli.compress import compress_store, model_info
    from clara_cli.ingest import ingest
    from clara_cli.store import Store

    root = tmp_path_factory.mktemp("eval")
    store, data = root / "store", root / "questions.jsonl"
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    s = Store.open(store, create=True)
    ingest(s, [str(root / "docs.jsonl")], tiny_model.tokenizer, max_tokens=tiny_model.config.doc_max_length,
           model_info=model_info(tiny_model), progress=False)
    compress_store(s, tiny_model, progress=False)
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, ["--store", str(store), *args], catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output, result.stderr)
        return result

    return {"run": run, "data": data, "root": root, "model": str(tiny_model_dir), "store": s}


def test_eval_json_and_report(eval_env):
    run, root = eval_env["run"], eval_env["root"]
    out = run("eval", str(eval_env["data"]), "-k", "2", "--max-new-tokens", "3", "--baseline", "bm25,minilm",
              "--model", eval_env["model"], "--dtype", "fp32", "--json", "--report", str(root / "report"))
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["system"] for r in rows] == ["clara-hybrid", "text-bm25", "text-minilm"]  # ask's default retriever
    for r in rows:
        assert r["n"] == 3 and r["k"] == 2 and r["n_recall"] == 2  # the third question has no gold
        for key in ("em", "f1", "cover_em", "recall_at_k", "recall_at_1"):
            assert 0.0 <= r[key] <= 100.0
        assert r["recall_at_1"] <= r["recall_at_k"]
        assert r["context_tokens"] > r["passage_tokens"] > 0
        assert r["prefill_ms"] > 0 and r["decode_ms"] >= 0 and r["answers_per_s"] > 0
        assert r["new_tokens"] <= 3
        assert (r["tokens_per_correct"] is None) == (r["correct"] == 0)
    clara, bm25 = rows[0], rows[1]
    assert clara["passage_tokens"] == 2 * (4 + 1)  # k slots of n_mem=64/16 memory tokens + <SEP>
    assert bm25["recall_at_k"] == 100.0  # BM25 finds both titled golds among 5 short documents at k=2
    report = root / "report"
    assert {"report.md", "summary.jsonl", "predictions.jsonl", "accuracy.png", "context_tokens.png",
            "latency.png"} <= {p.name for p in report.iterdir()}
    assert (report / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert "| clara-hybrid |" in md and "Cover-EM" in md and "| R@1 | R@2 |" in md
    preds = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 9 and all(len(p["retrieved"]) == 2 for p in preds)
    from clara_cli.evaluate import read_report

    again = read_report(report)  # the files hold everything needed to re-tabulate and re-plot
    assert [s.to_dict() for s in again.systems] == [{k: r[k] for k in s.to_dict()} for s, r in zip(again.systems, rows, strict=True)]
    assert len(again.results) == 9 and again.k == 2
    from clara_cli.model import cpu_name

    # timings are only comparable on the same machine: the report names it
    assert again.machine == cpu_name() != "" and again.threads == torch.get_num_threads()
    assert f"on {cpu_name()} ({again.threads} thread" in md


def test_eval_text_table(eval_env, tiny_model):
    from clara_cli.evaluate import evaluate, format_table

    questions = load_questions(eval_env["data"], limit=2)
    report = evaluate(eval_env["store"].snapshot(), tiny_model, questions, k=1, max_new_tokens=2,
                      baselines=["gold"], progress=False)
    lines = format_table(report).splitlines()
    assert lines[0].split()[:5] == ["system", "EM", "F1", "Cover-EM", "R@1"]
    assert lines[1].startswith("clara") and len(lines[1].split()) == len(lines[0].split()) - 4  # 4 two-word heads
    assert lines[2].startswith("text-gold") and report.systems[1].recall_at_k == 100.0  # the oracle reader
    assert "2 questions, top-1 of 5 chunks" in lines[4]


def test_eval_answers_are_asks_answers(eval_env, tiny_model):
    """`clara eval` measures `clara ask` itself: the same answers, sources and prompt sizes for
    the same questions (eval answers one at a time, ask in a batch of all three)."""
    from clara_cli.evaluate import evaluate

    questions = load_questions(eval_env["data"])
    report = evaluate(eval_env["store"].snapshot(), tiny_model, questions, k=2, max_new_tokens=6,
                      baselines=[], progress=False)
    stdin = "".join(json.dumps({"question": q.question}) + "\n" for q in questions)
    out = CliRunner().invoke(cli, ["--store", str(eval_env["store"].root), "ask", "-", "-k", "2",
                                   "--max-new-tokens", "6", "--model", eval_env["model"], "--dtype", "fp32",
                                   "--json"], input=stdin, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    asked = [json.loads(line) for line in out.stdout.splitlines()]
    assert [a["question"] for a in asked] == [r.question for r in report.results]
    assert any(a["answer"] for a in asked)
    for a, r in zip(asked, report.results, strict=True):
        assert a["answer"] == r.prediction
        assert [h["chunk_id"] for h in a["sources"]] == r.retrieved
        assert a["context_tokens"] == r.context_tokens
        assert set(a["timings"]) == {"retrieve_s", "read_s", "prefill_s", "decode_s", "generate_s", "total_s"}
        assert 1 <= r.new_tokens <= 6 and r.prefill_s > 0


def test_generate_details_count_the_prompt_and_new_tokens(tiny_model):
    memory = tiny_model.compress(["Some document text.", "Another one."])
    questions, memories = ["What is it?", "And what is the other one, please?"], [memory, memory[:1]]
    texts = tiny_model.generate(questions, memories, max_new_tokens=5)
    got = tiny_model.generate(questions, memories, max_new_tokens=5, details=True)
    assert [g.text for g in got] == texts
    for q, m, g in zip(questions, memories, got, strict=True):
        prompt = tiny_model.tokenizer(tiny_model.prompt(q, len(m)), add_special_tokens=False).input_ids
        assert g.prompt_tokens == len(prompt) and 1 <= g.new_tokens <= 5


def test_text_rag_reads_the_bare_base_model(tiny_model, tiny_model_dir):
    """Adapters switched off = the base LM the checkpoint names; switched back on afterwards."""
    from transformers import LlamaForCausalLM

    from clara_cli.evaluate import TextRAG, adapters_disabled

    rag = TextRAG(tiny_model)
    ids = tiny_model.tokenizer(rag.prompt("Who?", ["A passage."]), return_tensors="pt").input_ids
    base = LlamaForCausalLM.from_pretrained(Path(tiny_model_dir).parent / "base").eval()
    n = base.config.vocab_size
    with torch.no_grad():
        tiny_model.use_adapter("decoder_adapter")
        with_adapter = tiny_model.decoder(ids).logits[..., :n]
        with adapters_disabled(tiny_model.decoder) as bare:
            without = bare(ids).logits[..., :n]
        after = tiny_model.decoder(ids).logits[..., :n]
        reference = base(ids).logits
    torch.testing.assert_close(without, reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(with_adapter, without, atol=1e-3)  # the adapters really were off
    torch.testing.assert_close(after, with_adapter)
    assert "Background:\nA passage.\n\nQuestion:Who?" in rag.prompt("Who?", ["A passage."])


def test_heldout_set_is_grounded_in_held_out_paragraphs():
    """data/heldout_qa.jsonl: every gold title is held out and its first answer is verbatim in it."""
    from clara_cli.corpora import is_held_out, wiki_paragraphs

    questions = load_questions(Path(__file__).resolve().parents[1] / "data" / "heldout_qa.jsonl")
    assert 60 <= len(questions) <= 120 and len({q.question for q in questions}) == len(questions)
    paragraphs = {p["title"]: p["text"] for p in wiki_paragraphs("heldout")}
    for q in questions:
        assert len(q.gold_titles) == 1 and is_held_out(q.gold_titles[0]), q.question
        assert q.answers[0] in paragraphs[q.gold_titles[0]], q.question


def test_eval_retriever_option_feeds_clara_the_stores_bm25(eval_env):
    run, root = eval_env["run"], eval_env["root"]
    out = run("eval", str(eval_env["data"]), "-k", "2", "--max-new-tokens", "2", "--baseline", "bm25",
              "--retriever", "bm25", "--model", eval_env["model"], "--dtype", "fp32", "--json",
              "--report", str(root / "report-bm25"))
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["system"] for r in rows] == ["clara-bm25", "text-bm25"]
    assert rows[0]["retriever"] == "the store's BM25" and rows[0]["recall_at_k"] == 100.0
    preds = [json.loads(line) for line in (root / "report-bm25" / "predictions.jsonl").read_text().splitlines()]
    by_system = {s: [p["retrieved"] for p in preds if p["system"] == s] for s in ("clara-bm25", "text-bm25")}
    # Both rank lexically: the same best chunk (the store's BM25 returns only chunks sharing a term).
    assert [r[0] for r in by_system["clara-bm25"]] == [r[0] for r in by_system["text-bm25"]]
