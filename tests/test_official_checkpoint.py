"""Acceptance: every reference output of the official fixture, from the official folder and after convert."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clara_cli.checkpoint import convert, load_model
from clara_cli.model import retrieval_scores

ATOL = 1e-4


@pytest.fixture(scope="module", params=["official", "converted"])
def loaded(request, fixture_dir, tmp_path_factory):
    path = fixture_dir
    if request.param == "converted":
        path = convert(fixture_dir, tmp_path_factory.mktemp("conv") / "clara-tiny")
        assert not list(path.glob("*.pth")), "our format holds no pickles"
    model = load_model(str(path), device="cpu", dtype="fp32")
    ref = load_file(fixture_dir / "reference.safetensors")
    info = json.loads((fixture_dir / "reference.json").read_text())
    return model, ref, info


def test_all_adapters_and_tokens_loaded(loaded):
    model, _, info = loaded
    assert set(model.decoder.peft_config) == {"encoder_adapter", "decoder_adapter", "query_reasoner_adapter"}
    ids = info["special_token_ids"]
    assert model.mem_token_ids == list(ids["mem_tokens"].values())
    assert model.sep_token_id == ids["<SEP>"] and model.enc_token_id == ids["<ENC>"]
    assert len(model.tokenizer) == info["vocab_size_after_resize"]
    assert model.config.n_mem == info["n_mem_tokens"]


def test_compressor_input_ids_token_for_token(loaded):
    model, ref, info = loaded
    ids, mask = model.pad_left(model.encoder_token_ids(info["documents"]), length=71)
    assert torch.equal(ids, ref["compress.enc_input_ids"])
    assert torch.equal(mask.float(), ref["compress.enc_attention_mask"])


def test_compressor_memory_matches(loaded):
    model, ref, info = loaded
    mem = model.compress(info["documents"])
    assert mem.shape == (6, 4, 32)
    assert (mem - ref["compress.doc_embeddings"]).abs().max() <= ATOL
    merged = model.compress(info["documents"], merged=True)
    assert (merged - ref["compress.doc_embeddings"]).abs().max() <= ATOL


def test_query_embeddings_scores_and_topk(loaded):
    model, ref, info = loaded
    b = info["b_generate_from_questions"]
    q = model.encode_queries(b["questions"])
    assert (q.reshape(3, -1) - ref["gfq.query_reps"]).abs().max() <= ATOL
    mem = model.compress(info["documents"])
    scores = retrieval_scores(q, mem)
    assert (scores - ref["gfq.retrieval_scores"]).abs().max() <= ATOL
    assert scores.topk(2).indices.tolist() == ref["gfq.topk_idx"].tolist() == b["topk_idx"]


def test_generate_from_questions_exact_ids(loaded):
    model, ref, info = loaded
    b = info["b_generate_from_questions"]
    mem = model.compress(info["documents"])
    selected = [mem[i] for i in ref["gfq.topk_idx"]]
    ids, mask, embeds = model.prompt_inputs(b["questions"], selected)
    assert model.prompt(b["questions"][0], 2) == b["decoder_prompt_texts"][0]
    assert torch.equal(ids, ref["gfq.dec_input_ids"])
    assert torch.equal(mask, ref["gfq.dec_attention_mask"])
    assert (embeds - ref["gfq.inputs_embeds"]).abs().max() <= ATOL
    answers, out = model.generate(b["questions"], selected, max_new_tokens=12, return_ids=True)
    assert torch.equal(out, ref["gfq.output_ids"])
    assert answers == [a.strip() for a in b["answers"]]


def test_generate_from_text_exact_ids(loaded):
    model, ref, info = loaded
    c = info["c_generate_from_text"]
    memories = [model.compress(docs) for docs in c["documents"]]
    assert (torch.cat(memories) - ref["gft.doc_embeddings"]).abs().max() <= ATOL
    ids, _, embeds = model.prompt_inputs(c["questions"], memories)
    assert torch.equal(ids, ref["gft.dec_input_ids"])
    assert (embeds - ref["gft.inputs_embeds"]).abs().max() <= ATOL
    texts, out = model.generate(c["questions"], memories, max_new_tokens=12, return_ids=True)
    assert torch.equal(out, ref["gft.output_ids"])
    assert texts == [t.strip() for t in c["texts"]]


def test_fingerprint_survives_conversion(fixture_dir, tmp_path):
    a = load_model(str(fixture_dir), device="cpu", dtype="fp32")
    b = load_model(str(convert(fixture_dir, tmp_path / "c")), device="cpu", dtype="fp32")
    assert a.fingerprint == b.fingerprint


def test_base_model_override_and_missing_base(fixture_dir, tmp_path):
    import shutil

    from clara_cli.errors import ClaraError

    moved = tmp_path / "ckpt"
    shutil.copytree(fixture_dir, moved, ignore=shutil.ignore_patterns("base", "reference.*"))
    with pytest.raises(ClaraError, match="base model 'base' not found"):
        load_model(str(moved), device="cpu", dtype="fp32")
    model = load_model(str(moved), device="cpu", dtype="fp32", base_model=str(fixture_dir / "base"))
    assert model.config.n_mem == 4


def test_base_found_in_local_hugging_face_cache(fixture_dir, tmp_path, monkeypatch):
    """decoder_model_name as a hub id resolves to a cached snapshot, offline."""
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny-org--tiny-base" / "snapshots" / ("0" * 40)
    shutil.copytree(fixture_dir / "base", snapshot)
    (cache / "models--tiny-org--tiny-base" / "refs").mkdir()
    (cache / "models--tiny-org--tiny-base" / "refs" / "main").write_text("0" * 40)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fixture_dir, ckpt, ignore=shutil.ignore_patterns("base", "reference.*"))
    config = json.loads((ckpt / "config.json").read_text())
    config["decoder_model_name"] = "tiny-org/tiny-base"
    (ckpt / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    model = load_model(str(ckpt), device="cpu", dtype="fp32")
    reference = load_model(str(fixture_dir), device="cpu", dtype="fp32")
    assert model.fingerprint == reference.fingerprint


def test_pickle_with_code_is_refused_in_one_line(fixture_dir, tmp_path):
    """A checkpoint whose pickle would run code is refused, and the code never runs."""
    import os
    import pickle
    import shutil

    from clara_cli.errors import ClaraError

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "evil"
    shutil.copytree(fixture_dir, ckpt, ignore=shutil.ignore_patterns("base", "reference.*"))
    with open(ckpt / "adapters.pth", "wb") as f:
        pickle.dump({"encoder_adapter": Evil()}, f)
    with pytest.raises(ClaraError, match="adapters.pth: refused") as err:
        load_model(str(ckpt), device="cpu", dtype="fp32", base_model=str(fixture_dir / "base"))
    assert "\n" not in str(err.value) and not marker.exists()
