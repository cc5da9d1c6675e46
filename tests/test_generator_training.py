"""The generator stage (ours): the decoder adapter alone, on frozen memories, with the top
document read as raw text in a share of the examples (as `ask --expand 1` reads it)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from clara_cli.checkpoint import load_model, read_adapter_tensors
from clara_cli.train import TrainConfig, train
from clara_cli.train.data import QARecord
from clara_cli.train.stages import RANK_MISS_RATE, ranked_view
from tests.test_train import ANSWERS, DOCS, QUESTIONS, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def config(data, out, init, **kw) -> TrainConfig:
    base = {"steps": 12, "batch_size": 3, "dtype": "fp32", "device": "cpu", "top_k": 3, "save_every": 100,
            "lr": 3e-3, "dropout": False, "expand_rate": 0.5}
    return TrainConfig("generator", str(data), str(out), init_from=str(init), **{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("generator")
    rows = [{"question": q, "docs": DOCS[i:] + DOCS[:i], "answer": a, "pos_index": [0]}
            for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))]
    data = write_jsonl(root / "qa.jsonl", rows)
    result = train(config(data, root / "gen", tiny_model_dir), progress=False)
    return root, data, result


def test_ranked_view_reads_as_ask_does():
    record = QARecord("q?", ["a", "b", "POS", "c", "d"], "x", [2])
    views = [ranked_view(record, 3, 0.5, 0, 0, i) for i in range(2000)]
    assert ranked_view(record, 3, 0.5, 0, 0, 7) == views[7]  # seeded per example: resumption draws the same
    expanded = [v for v in views if v[0]]
    assert 0.45 < len(expanded) / len(views) < 0.55
    assert all(len(e) == 1 and len(m) == 2 for e, m in expanded)  # k = 3: one as text, two as memories
    assert all(len(e) == 0 and len(m) == 3 for e, m in views if not e)
    top = [(e or m)[0] for e, m in views]
    miss = sum(t != "POS" for t in top) / len(top)
    assert abs(miss - RANK_MISS_RATE) < 0.03  # the positive ranks first except on a retrieval miss
    assert all("POS" in (*e, *m) for e, m in views)  # and it is always among the k read
    assert all(not m for e, m in (ranked_view(record, 1, 1.0, 0, 0, i) for i in range(20)))  # k = 1: text only
    assert all(not e for e, _ in (ranked_view(record, 3, 0.0, 0, 0, i) for i in range(50)))


def test_generator_trains_the_decoder_alone(trained, tiny_model_dir):
    root, _, result = trained
    losses = [h["loss"] for h in result.history]
    assert result.done and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    before, after = read_adapter_tensors(tiny_model_dir), read_adapter_tensors(root / "gen")
    dec = [k for k in before if k.startswith("decoder_adapter/")]
    assert dec and any(not torch.equal(before[k].float(), after[k].float()) for k in dec)
    frozen = [k for k in before if not k.startswith("decoder_adapter/")]
    assert frozen and all(torch.equal(before[k].float(), after[k].float()) for k in frozen)
    rows_before = load_file(tiny_model_dir / "token_rows.safetensors")
    rows_after = load_file(root / "gen" / "token_rows.safetensors")
    assert all(torch.equal(rows_before[k].float(), rows_after[k].float()) for k in rows_before)


def test_generator_keeps_stores_valid(trained, tiny_model):
    """The fingerprint covers what shapes memory and the index; the generator changes neither."""
    root, _, result = trained
    model = load_model(str(root / "gen"), device="cpu", dtype="fp32")
    assert model.fingerprint == result.fingerprint == tiny_model.fingerprint
    # the trained generator reads an expanded prompt (raw text beside memories)
    out = model.generate(["Where is the Great Wall?"], [model.compress(DOCS[1:3])], max_new_tokens=3,
                         expanded=[[DOCS[5]]])
    assert isinstance(out[0], str)


def test_generator_resumes_to_the_same_weights(trained, tmp_path, tiny_model_dir):
    _, data, _ = trained
    straight = train(config(data, tmp_path / "a", tiny_model_dir, steps=5), progress=False)
    first = train(config(data, tmp_path / "b", tiny_model_dir, steps=5), progress=False, stop_after=2)
    assert not first.done
    resumed = train(config(data, tmp_path / "b", tiny_model_dir, steps=5), progress=False)
    assert resumed.done and resumed.resumed_from == 2
    a, b = read_adapter_tensors(tmp_path / "a"), read_adapter_tensors(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]


def test_training_reads_the_prompt_ask_builds(tiny_model_dir):
    """One prompt builder (prompts.py): the generator is trained on exactly the prompt ask reads."""
    from clara_cli.train.stages import Trainable

    tiny_model = load_model(str(tiny_model_dir), device="cpu", dtype="fp32")  # Trainable changes requires_grad
    tm = Trainable(tiny_model, "generator")
    for expanded in ((), (DOCS[0],)):
        p, t = tm._answer_ids(QUESTIONS[0], 2, ANSWERS[0], 1024, expanded)
        want = tiny_model.tokenizer(tiny_model.prompt(QUESTIONS[0], 2, expanded), add_special_tokens=False).input_ids
        assert p == want and t and tiny_model.tokenizer.decode(t).strip().startswith(ANSWERS[0])


def test_resumed_run_reuses_the_frozen_memories(trained, tmp_path, tiny_model_dir, monkeypatch):
    """The documents' memories are kept beside OUT until the run finishes: a resumed run
    compresses one document (to check the compressor), not all of them again."""
    from clara_cli.model import ClaraModel

    _, data, _ = trained
    out = tmp_path / "gen"
    train(config(data, out, tiny_model_dir, steps=4), progress=False, stop_after=1)
    cache = out.with_name(".gen.memories.safetensors")
    assert cache.is_file()
    compressed = []
    real = ClaraModel.compress
    monkeypatch.setattr(ClaraModel, "compress", lambda self, texts, *a, **kw: (compressed.append(len(texts)),
                                                                               real(self, texts, *a, **kw))[1])
    resumed = train(config(data, out, tiny_model_dir, steps=4), progress=False)
    assert resumed.done and compressed == [1]
    assert not cache.exists()  # finished: nothing left to resume
