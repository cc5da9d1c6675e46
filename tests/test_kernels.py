"""clara_kernels against their torch references.

On a CUDA machine the kernels run compiled on the GPU; elsewhere the module turns the
Triton interpreter on for its own tests only (``TRITON_INTERPRET`` is read when a
kernel is first imported, which clara_kernels does lazily, inside these tests) and
switches it off afterwards so other test files keep the fast torch path.
Shapes are tiny: the interpreter runs every program in Python.
"""

from __future__ import annotations

import os
import subprocess
import sys

import clara_kernels as ck
import pytest
import torch
import torch.nn.functional as F
from clara_kernels import dispatch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if ON_GPU else "cpu"
# GPU fp16 kernels round P to fp16 before the PV product; the interpreter computes in fp32.
ATOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

needs_triton = pytest.mark.skipif(not dispatch.triton_available(), reason="triton not installed")


def interpreter_usable() -> bool:
    """Triton decorates its own library functions when triton.language is imported: if that
    happened before TRITON_INTERPRET=1 (transformers' Llama imports it), the interpreter fails."""
    if "triton.language" not in sys.modules:
        return True
    from triton.language import standard

    return type(standard.zeros).__name__ == "InterpretedFunction"


@pytest.fixture(scope="module", autouse=True)
def kernel_backend():
    """Interpreter on for this module only (CPU), or the real GPU kernels."""
    if not ON_GPU and dispatch.triton_available() and not interpreter_usable():
        pytest.skip("triton.language was imported before TRITON_INTERPRET=1: run this file in its own "
                    "process (`make test` does)")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(dispatch.FORCE_ENV, raising=False)
        if not ON_GPU:
            mp.setenv("TRITON_INTERPRET", "1")
        yield


def _spy(monkeypatch: pytest.MonkeyPatch, module: str, fn: str) -> list[int]:
    """Count launches of a Triton wrapper, to prove the kernel (not the fallback) ran."""
    mod = dispatch.load_kernel_module(module)
    calls: list[int] = []
    real = getattr(mod, fn)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, fn, counted)
    return calls


def _qkv(lengths, n_heads, n_kv, head_dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (
        torch.randn(total, h, head_dim, generator=gen).to(DEVICE, dtype)
        for h in (n_heads, n_kv, n_kv)
    )
    return q, k, v, ck.cu_seqlens_from_lengths(lengths, device=DEVICE)


# ----------------------------------------------------------------------------- attention


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "n_heads,n_kv,head_dim",
    [(2, 2, 64), (3, 1, 64), (4, 1, 128), (4, 2, 8)],
    ids=["gqa1-d64", "gqa3-d64", "gqa4-d128", "gqa2-d8"],
)
def test_flash_attn_matches_reference(monkeypatch, dtype, n_heads, n_kv, head_dim):
    launches = _spy(monkeypatch, "_triton_attention", "flash_attn_varlen_fwd")
    lengths = [1, 37, 5, 16]  # a single token, lengths off and on the block size
    q, k, v, cu = _qkv(lengths, n_heads, n_kv, head_dim, dtype)
    out = ck.flash_attn_varlen(q, k, v, cu, max(lengths))
    ref = ck.attention_reference(q, k, v, cu)
    assert launches and out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[dtype], rtol=0)


@needs_triton
def test_flash_attn_bf16_noncausal_and_scale():
    q, k, v, cu = _qkv([9, 20], 4, 2, 32, torch.bfloat16)
    for causal in (True, False):
        out = ck.flash_attn_varlen(q, k, v, cu, 20, causal=causal, softmax_scale=0.3)
        ref = ck.attention_reference(q, k, v, cu, causal=causal, softmax_scale=0.3)
        torch.testing.assert_close(out.float(), ref.float(), atol=ATOL[torch.bfloat16], rtol=0)


@needs_triton
def test_flash_attn_packed_very_different_lengths():
    lengths = [1, 70, 2, 0, 33, 3]  # includes an empty sequence (an all-padding row)
    q, k, v, cu = _qkv(lengths, 4, 2, 16, torch.float32, seed=1)
    out = ck.flash_attn_varlen(q, k, v, cu)  # max_seqlen computed
    torch.testing.assert_close(out, ck.attention_reference(q, k, v, cu), atol=2e-5, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_torch_fallback_matches_reference_with_gradients(causal):
    lengths = [3, 70, 64, 1, 65, 3]  # across the causal padding buckets, the last one clamped
    q, k, v, cu = (t.cpu() for t in _qkv(lengths, 6, 2, 16, torch.float32, seed=2))
    q.requires_grad_(True)
    k.requires_grad_(True)
    out = ck.flash_attn_varlen(q, k, v, cu, causal=causal)  # needs grad -> torch path
    ref = ck.attention_reference(q, k, v, cu, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(out.square().sum(), (q, k))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k))
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, atol=1e-4, rtol=1e-4)


def test_torch_fallback_plans_its_buckets_once_per_offsets_tensor():
    """Every layer of a packed forward passes the same cu_seqlens: the second call finds its
    bucket plan and makes no host sync (on a GPU each one drains the queue); a changed or
    another offsets tensor gets a plan of its own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Syncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            if name in ("_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "masked_select"):
                self.names.append(name)
            return func(*args, **(kwargs or {}))

    lengths = [3, 70, 64, 1, 65, 3]
    q, k, v, cu = (t.cpu() for t in _qkv(lengths, 6, 2, 16, torch.float32, seed=4))
    q.requires_grad_(True)
    first = ck.flash_attn_varlen(q, k, v, cu, max(lengths))
    with Syncs() as seen:
        again = ck.flash_attn_varlen(q, k, v, cu, max(lengths))
    assert seen.names == []
    torch.testing.assert_close(again, first, atol=0, rtol=0)

    other = [70, 3, 1, 64, 3, 65]  # the same total, other boundaries, written into the same tensor
    cu.copy_(ck.cu_seqlens_from_lengths(other))
    with Syncs() as seen:
        moved = ck.flash_attn_varlen(q, k, v, cu, max(other))
    assert seen.names  # planned again
    torch.testing.assert_close(moved, ck.attention_reference(q, k, v, cu), atol=1e-5, rtol=0)
    fresh = ck.cu_seqlens_from_lengths(lengths)  # equal values, another tensor
    torch.testing.assert_close(ck.flash_attn_varlen(q, k, v, fresh, max(lengths)), first, atol=0, rtol=0)
    with pytest.raises(ValueError, match="cu_seqlens"):  # the cached plan does not hide a wrong total
        ck.flash_attn_varlen(q[:-1], k[:-1], v[:-1], fresh, max(lengths))
    with torch.inference_mode():  # inference tensors have no version counter: planned every call
        cu_inf = ck.cu_seqlens_from_lengths(lengths)
        for _ in range(2):
            out = ck.varlen_attention_torch(q, k, v, cu_inf)
            torch.testing.assert_close(out, first, atol=0, rtol=0)


def _fake_varlen_attn(calls: list, *, gqa_kwarg: bool, wrong: bool = False, fails: bool = False):
    """A stand-in for torch.nn.attention.varlen.varlen_attn (CUDA-only) with its signature, computed
    by the naive reference: what the wiring around the real kernel is tested with on a CPU."""
    def varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append({"kv_heads": k.shape[1], "max": (max_q, max_k), "window": window_size, "enable_gqa": enable_gqa})
        if fails:
            raise RuntimeError("FlashAttention only supports Ampere GPUs or newer")
        out = ck.attention_reference(q, k, v, cu_q, causal=window_size == (-1, 0), softmax_scale=scale)
        return out * 0.5 if wrong else out

    if gqa_kwarg:
        return varlen_attn

    def without_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    return without_gqa


@pytest.mark.parametrize("gqa_kwarg", [True, False], ids=["enable_gqa", "kv-repeated"])
@pytest.mark.parametrize("causal", [True, False])
def test_cuda_training_attention_takes_torch_varlen(monkeypatch, gqa_kwarg, causal):
    from clara_kernels import attention

    calls: list = []
    monkeypatch.setitem(attention._TORCH_VARLEN, "state", "untried")
    monkeypatch.setattr(attention, "_torch_varlen_applies", lambda q: attention._TORCH_VARLEN["state"] != "off")
    monkeypatch.setattr(attention, "_load_torch_varlen", lambda: _fake_varlen_attn(calls, gqa_kwarg=gqa_kwarg))
    lengths = [3, 70, 1, 65]
    q, k, v, cu = (t.cpu() for t in _qkv(lengths, 6, 2, 16, torch.float32, seed=5))
    q.requires_grad_(True)
    k.requires_grad_(True)
    out = ck.flash_attn_varlen(q, k, v, cu, max(lengths), causal=causal)
    ck.flash_attn_varlen(q, k, v, cu, max(lengths), causal=causal)
    assert attention._TORCH_VARLEN["state"] == "on" and len(calls) == 2
    assert calls[0]["window"] == ((-1, 0) if causal else (-1, -1)) and calls[0]["max"] == (70, 70)
    assert calls[0]["kv_heads"] == (2 if gqa_kwarg else 6) and calls[0]["enable_gqa"] == gqa_kwarg
    ref = ck.attention_reference(q, k, v, cu, causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    grads = torch.autograd.grad(out.square().sum(), (q, k))
    for g, rg in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k)), strict=True):
        torch.testing.assert_close(g, rg, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # no gradients: not this path
        ck.flash_attn_varlen(q, k, v, cu, max(lengths), causal=causal)
    assert len(calls) == 2


@pytest.mark.parametrize("how", ["wrong", "fails", "missing"])
def test_cuda_training_attention_falls_back_to_sdpa(monkeypatch, how):
    """A kernel that disagrees with the torch path on its first call, raises, or is not in this
    torch: one warning, then the SDPA path for the rest of the process."""
    from clara_kernels import attention

    calls: list = []
    fake = None if how == "missing" else _fake_varlen_attn(calls, gqa_kwarg=True, wrong=how == "wrong",
                                                           fails=how == "fails")
    monkeypatch.setitem(attention._TORCH_VARLEN, "state", "untried")
    monkeypatch.setattr(attention, "_torch_varlen_applies", lambda q: attention._TORCH_VARLEN["state"] != "off")
    monkeypatch.setattr(attention, "_load_torch_varlen", lambda: fake)
    q, k, v, cu = (t.cpu() for t in _qkv([5, 40, 2], 4, 2, 16, torch.float32, seed=6))
    q.requires_grad_(True)
    with pytest.warns(RuntimeWarning, match="SDPA path"):
        out = ck.flash_attn_varlen(q, k, v, cu, 40)
    again = ck.flash_attn_varlen(q, k, v, cu, 40)
    assert attention._TORCH_VARLEN["state"] == "off" and len(calls) == (0 if how == "missing" else 1)
    for o in (out, again):
        torch.testing.assert_close(o, ck.attention_reference(q, k, v, cu), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_attention_backward_gives_the_same_gradients(dtype):
    """matmul_attention_backward: SDPA's forward, a compiled matmul backward; the gradients
    of the flash backward (fp32: to 1e-5; bf16: within 1% of the fp32 gradients),
    query heads sharing kv heads."""
    lengths = [3, 70, 64, 1, 130, 65]  # several causal buckets, 1 to 3 sequences each
    q, k, v, cu = (t.cpu() for t in _qkv(lengths, 6, 2, 16, dtype, seed=3))

    def gradients(inputs, matmul_backward):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        with ck.matmul_attention_backward(matmul_backward):  # chosen at the forward
            out = ck.flash_attn_varlen(*leaves, cu, causal=True, softmax_scale=0.3)
        weight = torch.linspace(-1, 1, out.numel()).view(out.shape)
        return out, torch.autograd.grad((out.float() * weight).sum(), leaves)

    (out0, flash), (out1, matmul) = gradients((q, k, v), False), gradients((q, k, v), True)
    torch.testing.assert_close(out1, out0, atol=0, rtol=0)  # the same forward
    exact = gradients([t.float() for t in (q, k, v)], False)[1]
    for f, m, e in zip(flash, matmul, exact, strict=True):
        assert float(e.abs().sum()) > 0
        if dtype == torch.float32:
            torch.testing.assert_close(m, f, atol=1e-5, rtol=1e-5)
        else:
            # bf16 rounding of the probabilities and their gradients, as in flash: < 1% (flash 0.3%)
            assert float((m.float() - e).norm() / e.norm()) < 0.01


def test_flash_attn_rejects_bad_shapes():
    q, k, v, cu = (t.cpu() for t in _qkv([4, 4], 3, 2, 16, torch.float32))
    with pytest.raises(ValueError, match="multiple"):
        ck.flash_attn_varlen(q, k, v, cu)
    q, k, v, cu = (t.cpu() for t in _qkv([4, 4], 4, 2, 16, torch.float32))
    with pytest.raises(ValueError, match="cu_seqlens"):
        ck.flash_attn_varlen(q, k, v, cu[:-1])


def test_backend_names(monkeypatch):
    expected = "torch" if not dispatch.triton_available() else "triton" if ON_GPU else "interpreter"
    assert ck.backend(DEVICE) == expected
    monkeypatch.setenv(dispatch.FORCE_ENV, "torch")
    assert ck.backend(DEVICE) == "torch"


def test_import_and_run_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, clara_kernels as ck\n"
        "assert ck.backend() == 'torch', ck.backend()\n"
        "q = torch.randn(5, 2, 8); cu = ck.cu_seqlens_from_lengths([2, 3])\n"
        "out = ck.flash_attn_varlen(q, q[:, :1], q[:, :1], cu)\n"
        "print(ck.cosine_topk(q.reshape(5, -1), q.reshape(5, -1), 2)[1][:, 0].tolist())\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[0, 1, 2, 3, 4]"


# ----------------------------------------------------------------------------- packing


def test_packing_helpers():
    pos = ck.pack_position_ids([2, 3, 1])
    assert pos.tolist() == [[0, 1, 0, 1, 2, 0]]
    cu, max_len = ck.cu_seqlens_from_position_ids(pos)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 5, 6] and max_len == 3
    assert torch.equal(cu, ck.cu_seqlens_from_lengths([2, 3, 1]))
    # rows of a [batch, seq] tensor always start a sequence
    cu2, _ = ck.cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2], [0, 1, 0]]))
    assert cu2.tolist() == [0, 3, 5, 6]
    assert ck.tail_indices(cu, 1).tolist() == [[1], [4], [5]]
    with pytest.raises(ValueError):
        ck.tail_indices(cu, 2)


# ----------------------------------------------------------------------------- cosine top-k


def _exact_topk(queries, memory, k, scales=None):
    rows = memory.reshape(memory.shape[0], -1).float().cpu()
    if scales is not None:
        rows = rows * scales.float().cpu()[:, None]
    scores = (
        F.normalize(queries.reshape(queries.shape[0], -1).float().cpu(), dim=1)
        @ F.normalize(rows, dim=1).T
    )
    return scores.topk(k, dim=1)


def _bank(n, dim, n_queries, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n_queries, dim, generator=gen), torch.randn(n, dim, generator=gen)


@needs_triton
@pytest.mark.parametrize(
    "memory_dtype,query_dtype",
    [
        (torch.float32, torch.float32),
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),
        (torch.int8, torch.float32),
        (torch.int8, torch.float16),
    ],
    ids=["fp32", "fp16", "bf16", "bf16-fp32q", "int8", "int8-fp16q"],
)
def test_cosine_topk_matches_exact(monkeypatch, memory_dtype, query_dtype):
    launches = _spy(monkeypatch, "_triton_scoring", "cosine_topk_fwd")
    queries, memory = _bank(230, 72, 3)
    scales = None
    if memory_dtype == torch.int8:
        scales = memory.abs().amax(1) / 127
        memory = (memory / scales[:, None]).round().clamp(-127, 127).to(torch.int8)
    memory = memory.to(memory_dtype)
    queries = queries.to(query_dtype)
    vals, idx = ck.cosine_topk(
        queries.to(DEVICE), memory.to(DEVICE), 7, None if scales is None else scales.to(DEVICE)
    )
    ref_vals, ref_idx = _exact_topk(queries, memory, 7, scales)
    assert launches and vals.dtype == torch.float32 and idx.dtype == torch.int64
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(vals.cpu(), ref_vals, atol=1e-5, rtol=0)
    assert (vals[:, :-1] >= vals[:, 1:]).all()


@needs_triton
@pytest.mark.parametrize("n,dim,k,n_queries", [(40, 33, 1, 17), (50, 16, 50, 2)])
def test_cosine_topk_edges(n, dim, k, n_queries):
    """k = 1 and k = N, more queries than a block, a dim off the block size."""
    queries, memory = _bank(n, dim, n_queries, seed=3)
    vals, idx = ck.cosine_topk(queries.to(DEVICE), memory.to(DEVICE), k)
    ref_vals, ref_idx = _exact_topk(queries, memory, k)
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(vals.cpu(), ref_vals, atol=1e-5, rtol=0)


@needs_triton
def test_cosine_topk_flattens_memory_tokens_and_zero_rows():
    gen = torch.Generator().manual_seed(4)
    queries = torch.randn(2, 4, 8, generator=gen)  # [Q, n_mem, hidden]
    memory = torch.randn(60, 4, 8, generator=gen)
    memory[5] = 0  # F.normalize semantics: a zero row scores 0
    memory[6] = queries[1] * 3  # same direction: cosine 1
    vals, idx = ck.cosine_topk(queries.to(DEVICE), memory.to(DEVICE), 60)
    ref_vals, ref_idx = _exact_topk(queries, memory, 60)
    assert idx[1, 0].item() == 6 and abs(vals[1, 0].item() - 1) < 1e-5
    torch.testing.assert_close(vals.cpu(), ref_vals, atol=1e-5, rtol=0)
    assert vals.cpu()[ref_idx == 5].abs().max() == 0
    distinct = ref_vals.abs() > 1e-3  # the zero row ties with near-orthogonal rows
    assert torch.equal(idx.cpu()[distinct], ref_idx[distinct])


def test_cosine_topk_torch_reference_chunking():
    queries, memory = _bank(101, 24, 3, seed=5)
    memory = memory.bfloat16()
    vals, idx = ck.cosine_topk_torch(queries, memory, 9, chunk_rows=10)
    ref_vals, ref_idx = _exact_topk(queries, memory, 9)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(vals, ref_vals, atol=1e-6, rtol=0)


def test_cosine_topk_rejects_bad_input():
    queries, memory = _bank(10, 8, 2)
    with pytest.raises(ValueError, match="k must be"):
        ck.cosine_topk(queries, memory, 11)
    with pytest.raises(ValueError, match="scale"):
        ck.cosine_topk(queries, memory.to(torch.int8), 2)
    with pytest.raises(ValueError, match="features"):
        ck.cosine_topk(queries[:, :4], memory, 2)


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # head_dim 16, GQA ratio 2
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval().to(DEVICE)
    name = ck.register_transformers_attention()
    lengths = [7, 19, 3]
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 100, (1, n), generator=gen).to(DEVICE) for n in lengths]
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        alone = [model.model(input_ids=s).last_hidden_state[0] for s in seqs]
    model.set_attn_implementation(name)
    return model, seqs, alone


@needs_triton
def test_transformers_packed_equals_separate_sdpa(monkeypatch, tiny_llama):
    model, seqs, alone = tiny_llama
    launches = _spy(monkeypatch, "_triton_attention", "flash_attn_varlen_fwd")
    lengths = [s.shape[1] for s in seqs]
    packed = torch.cat(seqs, dim=1)
    position_ids = ck.pack_position_ids(lengths, device=DEVICE)
    cu = ck.cu_seqlens_from_lengths(lengths, device=DEVICE)
    with torch.no_grad():
        from_pos = model.model(input_ids=packed, position_ids=position_ids).last_hidden_state[0]
        from_cu = model.model(
            input_ids=packed,
            position_ids=position_ids,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=max(lengths),
            max_length_k=max(lengths),
        ).last_hidden_state[0]
    assert len(launches) == 4  # 2 layers x 2 forwards, all through the kernel
    expected = torch.cat(alone)
    assert (from_pos - expected).abs().max().item() <= 1e-4
    assert (from_cu - expected).abs().max().item() <= 1e-4
    # the memory-token gather the compressor does: last 2 tokens of each document
    tails = from_pos[ck.tail_indices(cu, 2)]
    assert torch.allclose(tails[1], alone[1][-2:], atol=1e-4)


@needs_triton
@pytest.mark.parametrize("side", ["right", "left"])
def test_transformers_padded_batch(monkeypatch, tiny_llama, side):
    model, seqs, alone = tiny_llama
    launches = _spy(monkeypatch, "_triton_attention", "flash_attn_varlen_fwd")
    width = max(s.shape[1] for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=DEVICE)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        cols = slice(0, s.shape[1]) if side == "right" else slice(width - s.shape[1], width)
        ids[row, cols] = s[0]
        mask[row, cols] = 1
    with torch.no_grad():
        out = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert len(launches) == 2
    for row in range(len(seqs)):
        diff = (out[row][mask[row].bool()] - alone[row]).abs().max().item()
        assert diff <= 1e-4, (row, diff)


@needs_triton
def test_transformers_generate_with_cache_matches_sdpa(tiny_llama):
    """Prefill through the kernel, cached decoding through SDPA: same greedy tokens."""
    model, seqs, _ = tiny_llama
    ids = torch.zeros(2, 19, dtype=torch.long, device=DEVICE)
    mask = torch.zeros_like(ids)
    ids[0, 12:], mask[0, 12:] = seqs[0][0], 1  # left padded
    ids[1], mask[1] = seqs[1][0], 1
    kwargs = dict(attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours = model.generate(ids, **kwargs)
        model.set_attn_implementation("sdpa")
        try:
            theirs = model.generate(ids, **kwargs)
        finally:
            model.set_attn_implementation(ck.IMPLEMENTATION_NAME)
    assert torch.equal(ours, theirs)
