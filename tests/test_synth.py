"""`clara synth`: rule QA grounded verbatim, official formats, seeded determinism, no held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clara_cli.cli import cli
from clara_cli.corpora import is_held_out
from clara_cli.errors import UsageError
from clara_cli.evaluate import normalize_answer
from clara_cli.synth import (
    NATURAL_RULES,
    HeldOutGuard,
    QAPair,
    SynthConfig,
    SynthDoc,
    candidate_pairs,
    clean_title,
    split_sentences,
    synthesize,
    verbatim_ok,
)
from clara_cli.train.data import parse_record, read_records

TRAIN = [
    ("Dracula (novel)", "Dracula is a Gothic horror novel from 1897 by the Irish author Bram Stoker. It was first published "
                        "on 26 May 1897. The story is told through letters, diary entries and newspaper articles."),
    ("Erie Canal (waterway)", "The Erie Canal is a historic canal in upstate New York. It was completed in 1825. The canal "
                   "has 36 locks and connects the Hudson River to Lake Erie."),
    ("Tereshkova (cosmonaut)", "Valentina Tereshkova is a Russian engineer and former cosmonaut. She was the first "
                             "woman in space, flying on Vostok 6 on 16 June 1963. She orbited the Earth 48 times."),
    ("Polaris (star)", "Polaris, also known as the North Star, is a star in the constellation of Ursa Minor. It is "
                "about 433 light-years from the Sun."),
    ("Gdansk harbour", "Gdansk harbour is a seaport on the Baltic coast of Poland, at the mouth of the Vistula. "
                       "It handled 68 million tonnes of cargo in 2022."),
    ("Haiku (poem)", "A haiku form is a short poem from Japan. Traditional haiku have 17 morae in three phrases, "
                   "a form developed by Matsuo Basho in the 17th century."),
]


def docs_with_held_out() -> tuple[list[SynthDoc], list[str]]:
    """Training docs plus real held-out Wikipedia paragraphs, some disguised under other names."""
    from clara_cli.corpora import wiki_paragraphs

    docs = [SynthDoc(f"wiki:{t}", t, x) for t, x in TRAIN]
    assert not any(is_held_out(t) for t, _ in TRAIN)
    held = []
    for n, p in enumerate(wiki_paragraphs("heldout")):
        if n >= 6:
            break
        held.append(p["text"])
        if n % 2:  # renamed: the title rule cannot see it, the sentence guard must
            docs.append(SynthDoc(f"notes.txt#{n}", "notes", p["text"]))
        else:
            docs.append(SynthDoc(p["id"], p["title"], p["text"]))
    return docs, held


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rules_produce_verbatim_answers():
    pairs = {(p.rule, p.answer): p.question for t, x in TRAIN for p in candidate_pairs(SynthDoc(t, t, x))}
    assert pairs[("year", "1825")] == "Erie Canal was completed in what year?"  # "It" -> the title
    assert pairs[("date", "16 June 1963")].endswith("flying on Vostok 6 on what date?")
    assert pairs[("number", "36")] == "The canal has how many locks and connects the Hudson River to Lake Erie?"
    assert pairs[("alias", "North Star")] == "What is Polaris also known as?"
    assert pairs[("definition", "Gothic horror novel")] == "What is Dracula?"  # "(novel)" dropped
    assert pairs[("name", "Bram Stoker")].endswith("from 1897 by the Irish author who?")
    assert pairs[("name", "Matsuo Basho")].endswith("a form developed by whom in the 17th century?")
    assert ("name", "Basho") not in pairs
    assert not any(a == "6" for _, a in pairs)  # "Vostok 6 on ..." counts nothing
    for (_, answer), question in pairs.items():
        assert normalize_answer(answer) not in normalize_answer(question).split()



NATURAL = [
    ("Wuthering Heights", "Wuthering Heights is the only novel by the English author Emily Brontë, initially "
                          "published in 1847 under her pen name Ellis Bell."),
    ("Death of a Salesman", "Death of a Salesman is a 1949 stage play by American playwright Arthur Miller."),
    ("Congo River", "The Congo River, formerly also known as the Zaire River, is the second-longest river in Africa, "
                    "shorter only than the Nile. It has over 4,000 islands within its course."),
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by Gustave Eiffel. "
                     "It is 330 metres (1,083 ft) tall."),
    ("Ankara", "Ankara is the capital city of Turkey. Located in the central part of Anatolia, the city has a "
               "population of over 5.3 million residents in its urban center."),
]


def test_natural_rules_ask_wh_first_and_name_the_subject():
    docs = TRAIN + NATURAL
    pairs = {p.question: (p.rule, p.answer) for t, x in docs for p in candidate_pairs(SynthDoc(t, t, x))}
    assert pairs["Who wrote Wuthering Heights?"] == ("who-made", "Emily Brontë")
    assert pairs["Who wrote Death of a Salesman?"] == ("who-made", "Arthur Miller")  # not "American"
    assert pairs["When was the Erie Canal completed?"] == ("when", "1825")  # "It" -> "the Erie Canal"
    assert pairs["Where is the Erie Canal?"] == ("where", "New York")
    assert pairs["Who was the first woman in space?"] == ("reverse", "Tereshkova")
    assert pairs["What is the second-longest river in Africa?"] == ("reverse", "Congo River")
    assert pairs["How many islands does the Congo River have?"] == ("how-many", "4,000")
    assert pairs["Who designed the Eiffel Tower?"] == ("who-made", "Gustave Eiffel")
    assert pairs["How tall is the Eiffel Tower?"] == ("measure", "330 metres")
    assert pairs["Where is the Eiffel Tower?"] == ("where", "Paris")
    assert pairs["What is the capital city of Turkey?"] == ("reverse", "Ankara")
    assert pairs["What is the population of Ankara?"] == ("measure", "5.3 million")
    natural = [q for q, (rule, _) in pairs.items() if rule in ("who-made", "when", "where", "reverse", "how-many",
                                                               "measure", "when-born", "when-died")]
    assert all(q.split()[0] in ("Who", "When", "Where", "What", "How") for q in natural)
    for t, x in docs:  # --questions natural / cloze split the pairs between them
        both = {(p.question, p.answer) for p in candidate_pairs(SynthDoc(t, t, x))}
        natural_only = candidate_pairs(SynthDoc(t, t, x), questions="natural")
        cloze_only = candidate_pairs(SynthDoc(t, t, x), questions="cloze")
        assert all(p.rule in NATURAL_RULES for p in natural_only)
        assert not any(p.rule in NATURAL_RULES for p in cloze_only)
        assert {(p.question, p.answer) for p in natural_only + cloze_only} == both
    with pytest.raises(UsageError):
        candidate_pairs(SynthDoc("x", "x", "x"), questions="poetic")


MORE_NATURAL = [
    ("Arthur Rimbaud", "Jean Nicolas Arthur Rimbaud was a French poet known for his transgressive themes. He was born "
                       "in Charleville, in the Ardennes."),
    ("Saladin", "Salah ad-Din Yusuf ibn Ayyub, commonly known as Saladin, was a Kurdish commander and political leader."),
    ("Checkers", "Checkers, also known as draughts, is a group of strategy board games for two players."),
    ("Latvia", "Latvia is a country in the Baltic region of Northern Europe. Its capital and largest city is Riga."),
    ("Kabul", "Kabul is the capital and largest city of Afghanistan."),
    ("Hideki Tojo", "Hideki Tojo was a Japanese military officer and politician who served as Prime Minister of Japan "
                    "from 1941 to 1944 during World War II."),
    ("Taraxacum", "Taraxacum is a genus of flowering plants in the family Asteraceae."),
    ("Osmium", "Osmium is a chemical element. It was discovered in 1803 by Smithson Tennant."),
    # must yield none of the new rules: a people is no nationality, a religion is no nationality,
    # a full name that does not hold the title, an office held by someone else in a subordinate clause
    ("Goths", "The Goths were a Germanic people who played a major role in the fall of the Western Roman Empire."),
    ("John Wesley", "John Wesley was a Christian theologian who met Mary, who was Queen of Scots from 1542 to 1567."),
    ("Paris", "Paris Hilton is an American media personality."),
    ("Louis the Pious", "Louis the Pious, also called the Fair, was King of the Franks."),
]


def test_natural_rules_beyond_the_lead_definition():
    pairs = {p.question: (p.rule, p.answer) for t, x in MORE_NATURAL for p in candidate_pairs(SynthDoc(t, t, x))}
    assert pairs["What nationality was Arthur Rimbaud?"] == ("nationality", "French")
    assert pairs["What was the full name of Arthur Rimbaud?"] == ("full-name", "Jean Nicolas Arthur Rimbaud")
    assert pairs["Where was Arthur Rimbaud born?"] == ("where-born", "Charleville")
    assert pairs["What was the full name of Saladin?"] == ("full-name", "Salah ad-Din Yusuf ibn Ayyub")
    assert pairs["What nationality was Saladin?"] == ("nationality", "Kurdish")
    assert pairs["What is another name for Checkers?"] == ("also-called", "draughts")
    assert pairs["What is the capital of Latvia?"] == ("capital", "Riga")
    assert pairs["What is the largest city of Latvia?"] == ("capital", "Riga")
    assert pairs["What is Kabul the capital of?"] == ("capital", "Afghanistan")
    assert pairs["When did Hideki Tojo become Prime Minister of Japan?"] == ("served", "1941")
    assert pairs["Who served as Prime Minister of Japan from 1941 to 1944?"] == ("served", "Hideki Tojo")
    assert pairs["Which family does Taraxacum belong to?"] == ("family", "Asteraceae")
    assert pairs["Who discovered Osmium?"] == ("who-made", "Smithson Tennant")
    new_rules = {"nationality", "full-name", "also-called", "capital", "served", "family", "where-born"}
    assert new_rules <= NATURAL_RULES
    for t, x in MORE_NATURAL[-4:]:
        assert not [p for p in candidate_pairs(SynthDoc(t, t, x)) if p.rule in new_rules], t


def test_verbatim_check_and_helpers():
    text = "It was completed in 1825 by the state."
    assert verbatim_ok(QAPair("It was completed in what year?", "1825", "year"), text)
    assert not verbatim_ok(QAPair("When?", "1826", "year"), text)  # not in the document
    assert not verbatim_ok(QAPair("Was it completed in 1825 or not?", "1825", "year"), text)  # given away
    assert not verbatim_ok(QAPair("It was completed in what year?", "1825", "year"), text, max_answer_char=10)
    assert split_sentences("Sgt. Pepper is an album. It was released in 1967. J. S. Bach wrote it.") == [
        "Sgt. Pepper is an album.", "It was released in 1967.", "J. S. Bach wrote it."]
    assert clean_title("Club (weapon)") == "Club" and clean_title("Robert Baden-Powell, 1st Baron") == "Robert Baden-Powell"


def test_synth_formats_grounding_and_no_held_out(tmp_path):
    docs, held = docs_with_held_out()
    report = synthesize(docs, tmp_path, SynthConfig(seed=3, top_k=3, candidates=5), source="test", progress=False)
    assert report.held_out_skipped == 6 and report.documents == len(TRAIN)
    pretrain, instruct, e2e = (read_jsonl(tmp_path / f) for f in ("pretrain.jsonl", "instruct.jsonl", "e2e.jsonl"))
    assert report.pretrain == len(pretrain) and instruct and e2e
    assert len(read_records(tmp_path / "pretrain.jsonl", "scp")) == len(pretrain)  # the trainer's own parser
    for rec in pretrain:
        assert set(rec) == {"data_type", "question", "answers", "docs"} and len(rec["docs"]) == 1
        if rec["data_type"] == "qa":
            assert all(a in rec["docs"][0] for a in rec["answers"])
        else:
            assert rec["answers"] == rec["docs"] and rec["question"] == [""]
    for name, records, size in (("instruct", instruct, 3), ("e2e", e2e, 5)):
        assert len(read_records(tmp_path / f"{name}.jsonl", name)) == len(records)
        for rec in records:
            assert len(rec["docs"]) == size and len(rec["pos_index"]) == 1
            pos = rec["pos_index"][0]
            assert rec["answer"] in rec["docs"][pos]
            negatives = [d for i, d in enumerate(rec["docs"]) if i != pos]
            assert not any(normalize_answer(rec["answer"]) in normalize_answer(d) for d in negatives)
    everything = "".join((tmp_path / f).read_text() for f in ("pretrain.jsonl", "instruct.jsonl", "e2e.jsonl"))
    for text in held:
        assert json.dumps(text[:60], ensure_ascii=False)[1:-1] not in everything
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["qa_pairs"] == sum(meta["rules"].values())


def test_synth_is_deterministic_for_a_seed(tmp_path):
    docs, _ = docs_with_held_out()
    guard = HeldOutGuard()
    outs = []
    for run, seed in enumerate((7, 7, 8)):
        synthesize(docs, tmp_path / str(run), SynthConfig(seed=seed, limit=4, top_k=3, candidates=4), guard=guard,
                   progress=False)
        outs.append([(tmp_path / str(run) / f).read_bytes() for f in ("pretrain.jsonl", "instruct.jsonl", "e2e.jsonl")])
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


@pytest.mark.parametrize("bad, message", [
    ({"data_type": "summary", "question": ["q"], "answers": ["a"], "docs": ["d"]}, "data_type"),
    ({"data_type": "qa", "question": ["q", "r"], "answers": ["a"], "docs": ["d"]}, '"question" has 2 items but "answers" has 1'),
    ({"data_type": "qa", "question": ["q"], "answers": ["a"], "docs": []}, "docs"),
])
def test_pretrain_schema_rejects(bad, message):
    """One schema for training records: the trainer's parser (train.data.parse_record)."""
    with pytest.raises(UsageError, match=message):
        parse_record(bad, "scp", "pretrain.jsonl:1")


def test_instruct_schema_rejects():
    good = {"question": "q", "docs": ["a", "b"], "answer": "x", "pos_index": [1]}
    parse_record(good, "instruct", "x:1")
    parse_record({**{k: v for k, v in good.items() if k != "answer"}, "golden_answers": ["x"]}, "instruct", "x:1")
    with pytest.raises(UsageError, match="pos_index"):
        parse_record({**good, "pos_index": [2]}, "instruct", "x:1")
    with pytest.raises(UsageError, match="answer"):
        parse_record({k: v for k, v in good.items() if k != "answer"}, "instruct", "x:1")


def test_cli_synth_from_store_skips_held_out(tmp_path, fixture_dir):
    from transformers import AutoTokenizer

    from clara_cli.ingest import ingest
    from clara_cli.store import Store

    docs, held = docs_with_held_out()
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": d.doc_id, "text": d.text, "metadata": {"title": d.title}}) + "\n"
                           for d in docs))
    store = Store.open(tmp_path / "store", create=True)
    tokenizer = AutoTokenizer.from_pretrained(fixture_dir / "base")
    ingest(store, [str(src)], tokenizer, max_tokens=64, progress=False)  # 64-token chunks: paragraphs split
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "synth", "--out", str(tmp_path / "out"),
                                      "--seed", "1", "--candidates", "4", "--top-k", "2", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["held_out_skipped"] >= 6 and summary["instruct"] > 0 and summary["source"].startswith("store:")
    everything = "".join((tmp_path / "out" / f).read_text() for f in ("pretrain.jsonl", "instruct.jsonl", "e2e.jsonl"))
    assert not any(json.dumps(t[:60], ensure_ascii=False)[1:-1] in everything for t in held)
    assert len(read_records(tmp_path / "out" / "e2e.jsonl", "e2e")) == len(read_jsonl(tmp_path / "out" / "e2e.jsonl"))
    for rec in read_jsonl(tmp_path / "out" / "e2e.jsonl"):
        assert len(rec["docs"]) == 4
    natural = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"), "synth", "--out", str(tmp_path / "nat"),
                                       "--seed", "1", "--candidates", "4", "--top-k", "2", "--questions", "natural",
                                       "--json"], catch_exceptions=False)
    assert natural.exit_code == 0, natural.output
    summary = json.loads(natural.stdout)
    assert summary["instruct"] > 0 and set(summary["rules"]) <= NATURAL_RULES
    assert all(r["question"].split()[0] in ("Who", "When", "Where", "What", "How")
               for r in read_jsonl(tmp_path / "nat" / "instruct.jsonl"))


def test_synth_reads_written_questions_beside_the_rules(tmp_path):
    """`--written`: people's questions join the rules' pairs of the document their title names, pass
    the same verbatim check, and never reach a held-out document."""
    docs, held = docs_with_held_out()
    held_title = next(d.title for d in docs if d.title != "notes" and d.text in held)
    written = tmp_path / "written.jsonl"
    rows = [
        {"question": "Which Irish writer created Count Dracula?", "answers": ["Bram Stoker"], "gold_titles": ["Dracula (novel)"]},
        {"question": "How many locks are there on the Erie Canal?", "answers": ["36"], "gold_titles": ["erie canal (waterway)"]},
        {"question": "Who was the first woman to fly into space?", "answers": ["Yuri Gagarin"],  # not in the text
         "gold_titles": ["Tereshkova (cosmonaut)"]},
        {"question": "What is this paragraph about?", "answers": ["a held-out paragraph"], "gold_titles": [held_title]},
        {"question": "Who painted the Mona Lisa?", "answers": ["Leonardo"], "gold_titles": ["No such paragraph"]},
    ]
    written.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = synthesize(docs, tmp_path / "w", SynthConfig(seed=1, top_k=3, candidates=4, questions="written",
                                                          written=str(written)), progress=False)
    assert report.rules == {"written": 2} and report.written_unmatched == 2  # the held-out one and the unknown one
    qa = [r for r in read_jsonl(tmp_path / "w" / "pretrain.jsonl") if r["data_type"] == "qa"]
    assert sorted(q for r in qa for q in r["question"]) == sorted([rows[0]["question"], rows[1]["question"]])
    assert {r["question"] for r in read_jsonl(tmp_path / "w" / "instruct.jsonl")} == {rows[0]["question"], rows[1]["question"]}
    natural = synthesize(docs, tmp_path / "n", SynthConfig(seed=1, top_k=3, candidates=4, questions="natural",
                                                           written=str(written)), progress=False)
    rules_only = synthesize(docs, tmp_path / "r", SynthConfig(seed=1, top_k=3, candidates=4, questions="natural"),
                            progress=False)
    assert natural.rules["written"] == 2 and natural.qa_pairs == rules_only.qa_pairs + 2
    result = CliRunner().invoke(cli, ["synth", "--split", "train", "--out", str(tmp_path / "x"), "--questions", "written"])
    assert result.exit_code != 0 and "--written" in result.output
