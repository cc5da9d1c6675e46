"""Shared test fixtures: the official fixture's path and a tiny random CLaRa model built offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from clara_cli.checkpoint import load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-tiny"
if not FIXTURE.is_dir():  # CI clones main with shared/ beside it
    FIXTURE = Path(os.environ.get("CLARA_FIXTURES", "../shared/fixtures")).resolve() / "official-tiny"


def build_tiny_model(dst: Path, seed: int = 7) -> Path:
    """A tiny random Llama (hidden 32, 2 layers) with the real SmolLM2 tokenizer, wrapped as a
    CLaRa model with non-zero random adapters, saved in our format at dst/model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from clara_cli.checkpoint import save_model
    from clara_cli.model import ClaraConfig, ClaraModel

    torch.manual_seed(seed)
    base_dir = dst / "base"
    tokenizer = AutoTokenizer.from_pretrained(FIXTURE / "base")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=False)
    base = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0, 0.1)
        for name, p in base.named_parameters():
            if "norm" in name:
                p.add_(1.0)
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    model = ClaraModel.from_base(LlamaForCausalLM.from_pretrained(base_dir), AutoTokenizer.from_pretrained(base_dir),
                                 ClaraConfig(base_model=str(base_dir), doc_max_length=64, compr_rate=16))
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.08)
        emb = model.decoder.get_input_embeddings().weight
        emb[model.n_base_tokens:].normal_(0, 0.1)
        model.decoder.get_output_embeddings().weight[model.n_base_tokens:].normal_(0, 0.1)
    model.fingerprint = "tiny"
    return save_model(model, dst / "model", trained=True)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not FIXTURE.is_dir():
        pytest.skip("shared/fixtures/official-tiny not found")
    return FIXTURE


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, fixture_dir) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):

    return load_model(str(tiny_model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on 2 shared, loaded cores the thread
    handoff of every small matmul costs tens of milliseconds; one thread is also bitwise
    reproducible. Restored after the module (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
