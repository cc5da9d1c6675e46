"""The fast compressor path equals the straightforward one; dtype handling; generation shapes."""

from __future__ import annotations

import torch

from clara_cli.checkpoint import load_model
from clara_cli.model import retrieval_scores

TEXTS = [
    "Short.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    " ".join(["A much longer paragraph that will certainly be truncated by the compressor."] * 12),
    "Mount Kilimanjaro is the highest mountain in Africa, about 5,895 metres above sea level.",
    "Ada Lovelace wrote what is often called the first computer program, for Babbage's engine.",
]


def test_fast_compress_equals_straightforward_path(tiny_model):
    reference = tiny_model.compress_reference(TEXTS)
    for merged in (False, True):
        fast = tiny_model.compress(TEXTS, batch_size=2, merged=merged)
        assert fast.shape == (len(TEXTS), 4, 32)
        assert (fast - reference).abs().max() <= 1e-4


def test_compress_order_is_independent_of_batching(tiny_model):
    a = tiny_model.compress(TEXTS, batch_size=1)
    b = tiny_model.compress(list(reversed(TEXTS)), batch_size=4)
    assert (a - b.flip(0)).abs().max() <= 1e-4


def test_truncation_keeps_doc_max_length_plus_3(tiny_model):
    rows = tiny_model.encoder_token_ids(TEXTS)
    assert max(len(r) for r in rows) == 64 + 3 + 4
    assert all(r[-4:] == tiny_model.mem_token_ids for r in rows)
    assert rows[0][:2] == [tiny_model.enc_token_id, tiny_model.tokenizer.bos_token_id]


def test_retrieval_is_the_cosine_of_flattened_memory(tiny_model):
    q = tiny_model.encode_queries(["Where is the Eiffel Tower?"])
    mem = tiny_model.compress(TEXTS)
    assert q.shape == (1, *mem.shape[1:])  # queries live in the memory's space
    scores = retrieval_scores(q, mem)
    want = torch.nn.functional.cosine_similarity(q.reshape(1, -1).float(), mem.reshape(len(TEXTS), -1).float())
    assert torch.allclose(scores[0], want, atol=1e-5)  # flattened cosine, not mean pooling
    # A document's own memory is its best match: a search by memory finds the document.
    assert retrieval_scores(mem, mem).argmax(dim=1).tolist() == list(range(len(TEXTS)))


def test_generate_with_different_k_per_question(tiny_model):
    mem = tiny_model.compress(TEXTS)
    memories = [mem[:1], mem[1:4]]
    answers = tiny_model.generate(["q one?", "q two?"], memories, max_new_tokens=5)
    # Batching questions with different k (padded prompts) gives each the answer it gets alone.
    alone = [tiny_model.generate([q], [m], max_new_tokens=5)[0] for q, m in zip(["q one?", "q two?"], memories, strict=True)]
    assert answers == alone
    assert all(a.strip() for a in answers)


def test_bf16_close_to_fp32(tiny_model_dir, tiny_model):
    bf16 = load_model(str(tiny_model_dir), device="cpu", dtype="bf16")
    assert bf16.dtype == torch.bfloat16 and bf16.fingerprint == tiny_model.fingerprint
    a, b = tiny_model.compress(TEXTS), bf16.compress(TEXTS)
    assert b.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a.reshape(5, -1), b.reshape(5, -1))
    assert cos.min() > 0.98


def test_merged_copy_only_for_bulk_jobs_that_fit(tiny_model, monkeypatch):
    import clara_cli.model as model_module

    assert tiny_model.merge_pays_off(5 * 8, batch_size=8) and not tiny_model.merge_pays_off(4 * 8, batch_size=8)
    monkeypatch.setattr(model_module, "MERGED_COPY_MAX_BYTES", 1)  # a model too big to copy
    assert not tiny_model.merge_pays_off(100 * 8, batch_size=8)


def test_machine_names_for_timings(monkeypatch):
    """Timings are printed beside the CPU's model name (from /proc/cpuinfo, which also gives the
    bf16 flags), or the GPU's name on CUDA."""
    from clara_cli import model as model_module

    for var in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    cpuinfo = "processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu avx2 amx_bf16\n"
    monkeypatch.setattr(model_module, "_cpuinfo", lambda: cpuinfo)
    assert model_module.cpu_name() == "Example CPU 9000" and model_module.cpu_supports_bf16()
    for cap in ("ONEDNN_MAX_CPU_ISA=AVX2", "ONEDNN_MAX_CPU_ISA=avx512_core", "ATEN_CPU_CAPABILITY=avx2"):
        name, value = cap.split("=")
        with monkeypatch.context() as capped:  # the CPU's bf16 capped away: emulated, as on AVX2
            capped.setenv(name, value)
            assert not model_module.cpu_supports_bf16(), cap
            assert model_module.cpu_name() == f"Example CPU 9000 (capped: {cap})"
    with monkeypatch.context() as capped:  # a cap that keeps bf16
        capped.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
        assert model_module.cpu_supports_bf16()
    assert model_module.device_name(torch.device("cpu")) == "Example CPU 9000"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Example GPU")
    assert model_module.device_name(torch.device("cuda")) == "Example GPU"
    monkeypatch.setattr(model_module, "_cpuinfo", lambda: "flags\t\t: fpu avx2\n")  # no model name, no bf16
    assert model_module.cpu_name() and not model_module.cpu_supports_bf16()
