"""What tripped new users: answers without sources, blank and overlong questions, CJK words in
BM25, stdin batches, record names, --store placement, model/attention messages, `info`'s model
description, and `ls`/`rm`. Through click's runner on real stores, as a user types them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clara_cli import lexical
from clara_cli.cli import cli

DOCS = {
    "eiffel.txt": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889.",
    "lovelace.txt": "Ada Lovelace wrote the first computer program for Charles Babbage's Analytical Engine.",
    "beijing.txt": "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "tokyo.txt": "東京タワーは東京都港区芝公園にある電波塔です。",
}
JOURNAL = ('{"text": "Dear diary, today I climbed Kilimanjaro at dawn.", "id": "entry-1"}\n'
           '{"text": "The Great Barrier Reef lies off Queensland, Australia."}\n')


def make_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in DOCS.items():
        (root / name).write_text(text)
    (root / "journal.jsonl").write_text(JOURNAL)
    return root


def runner_for(store: Path):
    runner = CliRunner()

    def run(*args, input=None, code=0, env=None, store_first=True):
        argv = ["--store", str(store), *args] if store_first else list(args)
        result = runner.invoke(cli, argv, input=input, env=env, catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result

    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir):
    """A compressed, indexed store of the corpus (read-only for the tests; copy it to change it)."""
    root = tmp_path_factory.mktemp("usability")
    corpus = make_corpus(root / "corpus")
    store = root / "store"
    run = runner_for(store)
    run("ingest", str(corpus), "--model", str(tiny_model_dir))
    run("compress", "--dtype", "fp32")
    run("index")
    return {"store": store, "corpus": corpus, "model": str(tiny_model_dir)}


@pytest.fixture
def env(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built["store"], store)
    return {**built, "store": store, "run": runner_for(store)}


def lines(result) -> list[dict]:
    return [json.loads(x) for x in result.stdout.splitlines()]


# 1. honest answers ---------------------------------------------------------------------------

def test_no_matching_sources_means_no_answer(env):
    run = env["run"]
    out = run("ask", "xyzzy qwerty", "--retriever", "bm25", "--max-new-tokens", "3", code=7)
    assert out.stdout == "" and out.stderr.strip() == "clara: no matching sources"
    out = run("ask", "xyzzy qwerty", "--retriever", "bm25", "--json", code=7)
    answer = json.loads(out.stdout)
    assert answer["answer"] is None and answer["sources"] == [] and answer["question"] == "xyzzy qwerty"
    assert run("search", "xyzzy qwerty", "--retriever", "bm25", "--json", code=7).stdout == ""
    # latent retrieval always has a nearest chunk: --min-score is the floor (a cosine is at most 1)
    assert lines(run("search", "Eiffel Tower", "-k", "2", "--json"))
    out = run("ask", "Eiffel Tower?", "--min-score", "1.01", "--json", code=7)
    assert json.loads(out.stdout)["answer"] is None and "scoring at least 1.01" in out.stderr
    hits = lines(run("search", "Babbage", "--retriever", "bm25", "--min-score", "0.01", "--json"))
    assert hits and all(h["score"] >= 0.01 for h in hits)


def test_blank_question_is_a_usage_error(env):
    run = env["run"]
    assert "empty query" in run("search", "   ", code=2).stderr
    assert "empty question" in run("ask", "", code=2).stderr


def test_overlong_question_is_cut_to_fit_with_one_notice(env):
    question = "Why is the sky blue over the Eiffel Tower? " * 1500  # ~15,000 tokens
    out = env["run"]("ask", question, "-k", "2", "--max-new-tokens", "3", "--json")
    answer = json.loads(out.stdout)
    assert answer["question"] == question and answer["answer"] is not None
    assert answer["context_tokens"] <= 1024
    notices = [x for x in out.stderr.splitlines() if "too long" in x]
    assert len(notices) == 1 and "1024-token prompt limit" in notices[0]
    short = json.loads(env["run"]("ask", "Where is the Eiffel Tower?", "-k", "2", "--max-new-tokens", "2",
                                  "--json").stdout)
    assert "too long" not in out.stderr.replace(notices[0], "") and short["context_tokens"] < 200


def test_fit_question_keeps_short_questions(tiny_model):
    from clara_cli.answer import fit_question

    assert fit_question(tiny_model, "Where is Paris?", 5, 64) == ("Where is Paris?", None)
    fitted, note = fit_question(tiny_model, "word " * 5000, 5, 64)
    assert note and fitted.startswith("word word") and len(fitted) < 5000


# 2. CJK in BM25 ------------------------------------------------------------------------------

def test_bm25_finds_chinese_and_japanese_words(env):
    run = env["run"]
    hits = lines(run("search", "北京", "--retriever", "bm25", "--json"))
    assert len(hits) == 1 and hits[0]["source"].endswith("beijing.txt")
    hits = lines(run("search", "東京タワー", "--retriever", "bm25", "--json"))
    assert hits[0]["source"].endswith("tokyo.txt")
    hits = lines(run("search", "首都", "--retriever", "hybrid", "-k", "2", "--json"))
    assert hits[0]["source"].endswith("beijing.txt")
    assert lexical.split_words("北京大学 and eiffel") == ["北京", "京大", "大学", "and", "eiffel"]


def test_bm25_index_of_the_old_tokenizer_keeps_working_then_is_rebuilt(env, monkeypatch):
    from clara_cli.store import Store

    run = env["run"]
    old_tokenizer = lexical.bm25_tokenizer
    with monkeypatch.context() as m:  # build the BM25 index as the previous release did
        m.setattr(lexical, "TOKENIZER_VERSION", 1)
        m.setattr(lexical, "bm25_tokenizer", lambda word_to_id=None, version=1: old_tokenizer(word_to_id, 1))
        run("index", "--rebuild")
    record = Store(env["store"]).snapshot().manifest["index"]["bm25"]
    assert record["tokenizer"] == 1
    assert lines(run("search", "Lovelace", "--retriever", "bm25", "--json"))  # still answers
    out = run("search", "北京", "--retriever", "bm25", code=7)  # a CJK run was one word then
    assert "run `clara index`" in out.stderr
    out = run("index")
    assert "rebuilding" in out.stderr
    assert Store(env["store"]).snapshot().manifest["index"]["bm25"]["tokenizer"] == lexical.TOKENIZER_VERSION
    assert lines(run("search", "北京", "--retriever", "bm25", "--json"))[0]["source"].endswith("beijing.txt")


# 3. stdin batches ----------------------------------------------------------------------------

BATCH = ('{"query": "Lovelace Babbage"}\n'
         '{"question": "Eiffel Tower"}\n'
         '{"q": "wrong key"}\n'
         '{not json\n'
         '{"query": "   "}\n'
         'Kilimanjaro diary\n')


def test_batches_take_both_keys_and_name_bad_lines(env):
    run = env["run"]
    out = run("search", "-", "--retriever", "bm25", "-k", "1", "--json", input=BATCH, code=3)
    hits = lines(out)
    assert [h["query"] for h in hits] == ["Lovelace Babbage", "Eiffel Tower", "Kilimanjaro diary"]
    assert "Lovelace" in hits[0]["text"] and "Eiffel" in hits[1]["text"]
    rejected = [x for x in out.stderr.splitlines() if x.startswith("clara: rejected:")]
    assert [x.split(":")[3] for x in rejected] == ["3", "4", "5"]
    assert "3 inputs were rejected" in out.stderr

    out = run("ask", "-", "--retriever", "bm25", "-k", "1", "--max-new-tokens", "2", "--json", input=BATCH, code=3)
    assert [a["question"] for a in lines(out)] == ["Lovelace Babbage", "Eiffel Tower", "Kilimanjaro diary"]
    # one good line that finds nothing: its answer is null, named on stderr, exit code 7
    out = run("ask", "-", "--retriever", "bm25", "--max-new-tokens", "2", "--json",
              input='{"query": "Eiffel"}\n{"query": "xyzzy"}\n', code=7)
    assert [a["answer"] is None for a in lines(out)] == [False, True]
    assert "clara: no matching sources: <stdin>:2" in out.stderr
    hits = lines(run("search", "-", "--retriever", "bm25", "--json", input='{"question": "Eiffel"}\n'))
    assert hits and all(h["query"] == "Eiffel" for h in hits)


# 4. record names -----------------------------------------------------------------------------

def test_text_output_names_the_record(env):
    run = env["run"]
    out = run("search", "Kilimanjaro diary", "--retriever", "bm25", "-k", "1").stdout
    assert "journal.jsonl[entry-1]:0-" in out
    out = run("search", "Barrier Reef Queensland", "--retriever", "bm25", "-k", "1").stdout
    assert "journal.jsonl#2:0-" in out  # no id: its line number


# 5. --store placement ------------------------------------------------------------------------

def test_store_option_after_the_command_and_env(env, tmp_path):
    store = str(env["store"])
    run = runner_for(Path("unused"))
    info = json.loads(run("info", "--store", store, "--json", store_first=False).stdout)
    assert info["documents"] == 6
    elsewhere = {"CLARA_STORE": str(tmp_path / "nothing-here")}
    assert json.loads(run("info", "--json", "--store", store, env=elsewhere, store_first=False).stdout)["chunks"] == 6
    assert json.loads(run("info", "--json", env={"CLARA_STORE": store}, store_first=False).stdout)["chunks"] == 6
    out = run("--store", str(tmp_path / "nothing-here"), "info", "--store", store, store_first=False)
    assert "documents" in out.stdout  # the later --store wins
    assert "--store DIR" in run("search", "--help", store_first=False).stdout


def test_a_new_store_is_one_new_folder(env, tmp_path):
    run = runner_for(Path("unused"))
    deep = tmp_path / "no" / "such" / "store"
    out = run("--store", str(deep), "ingest", str(env["corpus"]), "--model", env["model"], code=1,
              store_first=False)
    assert "does not exist" in out.stderr and not (tmp_path / "no").exists()
    run("ingest", str(env["corpus"] / "eiffel.txt"), "--model", env["model"], "--store", str(tmp_path / "new"),
        store_first=False)
    assert (tmp_path / "new" / "manifest.json").is_file()


# 6. messages ---------------------------------------------------------------------------------

def test_model_file_attention_fallback_help_and_grammar(env, tmp_path):
    import torch

    run = env["run"]
    out = run("search", "x", "--model", str(Path(env["model"]) / "clara.json"), code=1)
    assert "is a file, not a model folder" in out.stderr and out.stderr.count("\n") == 1
    if not torch.cuda.is_available():
        out = run("search", "Eiffel", "-k", "1", "--attn", "triton")
        assert "--attn triton" in out.stderr and "fallback" in out.stderr
    assert "~2*sqrt(rows)" in run("index", "--help").stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_text("  \n")
    (bad / "ok.txt").write_text("Something worth reading.")
    out = run("ingest", str(bad), "--model", env["model"], code=3)
    assert "1 input was rejected" in out.stderr and "1 input rejected" in out.stdout


# 7. info ---------------------------------------------------------------------------------------

def test_info_describes_the_model(env):
    run = env["run"]
    info = json.loads(run("info", "--json").stdout)
    assert info["base_model"].endswith("base") and info["compression_rate"] == 16
    assert info["memory_tokens_per_chunk"] == 4 and info["memory_dtype"] == "float32"
    text = run("info").stdout
    for key in ("base_model", "compression_rate: 16", "memory_tokens_per_chunk: 4", "memory_dtype: float32"):
        assert key in text, key


def test_a_reader_that_stops_early_is_not_an_error(env):
    """`clara info | head -1`, `clara ls | true`: the reader closed the pipe before clara wrote;
    clara exits 0 without a word on stderr, as a pipeline under `set -o pipefail` needs."""
    for args in (["info"], ["ls", "--json"]):
        proc = subprocess.Popen([sys.executable, "-m", "clara_cli.cli", "--store", str(env["store"]), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # long before the interpreter has imported clara and written a line
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0 and err == "", (args, err)


# 8. ls / rm ------------------------------------------------------------------------------------

def test_ls_lists_documents_with_chunk_counts(env, monkeypatch):
    run = env["run"]
    docs = lines(run("ls", "--json"))
    assert len(docs) == 6 and all(d["chunks"] == d["compressed"] == 1 for d in docs)
    assert {d["doc_id"] for d in docs} >= {"entry-1", str(env["corpus"] / "journal.jsonl") + "#2"}
    jsonl = lines(run("ls", str(env["corpus"] / "journal.jsonl"), "--json"))
    assert sorted(d["doc_id"] for d in jsonl)[1] == "entry-1" and len(jsonl) == 2
    out = run("ls", str(env["corpus"])).stdout
    assert "6 documents, 6 chunks" in out and "entry-1  (" in out
    out = run("ls", str(env["corpus"] / "eif"), code=1)  # a path prefix is whole names, not letters
    assert "no document matches" in out.stderr
    monkeypatch.chdir(env["corpus"])  # relative names, as typed in the corpus folder
    assert [d["doc_id"] for d in lines(run("ls", "journal.jsonl#2", "eiffel.txt", "--json"))] == [
        str(env["corpus"] / "eiffel.txt"), str(env["corpus"] / "journal.jsonl") + "#2"]


def test_rm_removes_by_id_and_path_and_the_index_follows(env):
    run, corpus = env["run"], env["corpus"]
    out = run("rm", str(corpus), code=2)  # every document: needs --all
    assert "--all" in out.stderr and json.loads(run("info", "--json").stdout)["documents"] == 6
    report = json.loads(run("rm", "entry-1", str(corpus / "eiffel.txt"), "--json").stdout)
    assert report["removed"] == 2 and report["chunks_removed"] == 2 and report["index_removed"] == 2
    info = json.loads(run("info", "--json").stdout)
    assert info["documents"] == 4 and info["indexed"] == 4
    texts = [h["text"] for h in lines(run("search", "Eiffel Tower", "-k", "6", "--json"))]
    assert len(texts) == 4 and not any("Eiffel" in t for t in texts)
    run("search", "Kilimanjaro diary", "--retriever", "bm25", code=7)
    out = run("rm", "entry-1", code=1)  # gone already
    assert "no document matches entry-1" in out.stderr
    assert "ok:" in run("verify").stdout
    out = run("rm", "--all", "--json")
    assert json.loads(out.stdout)["removed"] == 4
    assert json.loads(run("info", "--json").stdout)["documents"] == 0
    assert "ok:" in run("verify").stdout
