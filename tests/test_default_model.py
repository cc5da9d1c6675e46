"""The shipped default model: complete, trained, small enough per file to live in the repository."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from clara_cli.checkpoint import DEFAULT_MODEL_DIR, adapter_files
from clara_cli.model import ClaraConfig

pytestmark = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "clara.json").is_file(),
                                reason="no trained default model is shipped in this checkout")


def test_shipped_default_model_is_complete_trained_and_small():
    meta = json.loads((DEFAULT_MODEL_DIR / "clara.json").read_text())
    assert meta["trained"] is True
    # `make train-written`: scp epochs (the natural rules' data, then written QA), the generator
    # stage, then the retrieval stage against the final memories; the stages before, oldest first
    stages = [h["stage"] for h in meta["history"]] + [meta["training"]["stage"]]
    assert stages[0] == "scp" and stages[-2:] == ["generator", "retrieval"], stages
    assert meta["rank_reduced"] == {"from": 64, "to": 16}  # trained at LoRA r 64, shipped at 16
    cfg = ClaraConfig.from_dict(meta["config"])
    # ours: the query reasoner scores centred cosines; the center ships beside the adapters (fp32)
    with safe_open(str(DEFAULT_MODEL_DIR / "retrieval.safetensors"), "pt") as f:
        center = f.get_tensor("center")
    assert cfg.retrieval_center and center.shape == (cfg.n_mem * 576,) and center.dtype == torch.float32
    assert cfg.expand == 1  # ours: ask reads the best source as text (chosen on the dev split)
    assert (cfg.doc_max_length, cfg.compr_rate, cfg.n_mem) == (256, 16, 16)
    names = sorted(p.name for p in adapter_files(DEFAULT_MODEL_DIR))
    assert names == [f"adapters-{a}.safetensors" for a in sorted(cfg.adapters)]
    assert set(cfg.adapters) == {"encoder_adapter", "decoder_adapter", "query_reasoner_adapter"}
    for path in DEFAULT_MODEL_DIR.iterdir():  # the repository's per-file limit
        assert path.stat().st_size < 20 * 1024 * 1024, path.name
    tensors = {}
    for path in [*adapter_files(DEFAULT_MODEL_DIR), DEFAULT_MODEL_DIR / "token_rows.safetensors"]:
        with safe_open(str(path), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    assert all(t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all() for t in tensors.values())
    # Trained: the decoder's LoRA B matrices are no longer the zeros a fresh adapter starts from.
    assert any(k.startswith("decoder_adapter/") and "lora_B" in k and t.abs().max() > 0 for k, t in tensors.items())
    assert tensors["embed_tokens"].shape[1] == 576



@pytest.mark.slow  # builds the real SmolLM2 base from its GGUF (~540 MB, ~30 s); the tiny models run always
def test_default_model_identity_from_files():
    """What `clara ingest` records without loading the weights equals the loaded model's record."""
    from clara_cli.checkpoint import load_model, model_identity
    from clara_cli.compress import model_info

    info, tokenizer = model_identity(None)
    want = model_info(load_model(None, device="cpu", dtype="bf16"))
    center, want_center = info.pop("retrieval_center"), want.pop("retrieval_center")
    assert info == want and info["spec"] == "default" and torch.equal(center, want_center)
