"""The training forward passes of the three CLaRa stages (docs/design.md §1).

    scp       doc --encoder_adapter--> memory --decoder_adapter--> QA lines / paraphrase
              loss = LM + 0.1 * MSE(mean text-token state, mean memory-token state)
              learns: encoder + decoder adapters + the <MEM*> embedding rows
    instruct  k docs --encoder--> memories; question + memories --decoder--> answer
              loss = LM + 0.1 * MSE; learns the same (fresh decoder adapter, as the official stage1_2)
    e2e       question --query_reasoner_adapter--> query; cosine vs ~20 frozen doc memories;
              straight-through top-k picks k; question + picks --decoder--> answer
              loss = LM; learns: query reasoner + decoder
    retrieval (ours, not the paper's) question --query_reasoner_adapter--> query; centred cosine
              vs the frozen memories of every document of the data (the pool)
              loss = InfoNCE (softmax over the pool at temperature tau); learns: query reasoner
    generator (ours) k docs in rank order --frozen encoder--> memories; with probability
              expand_rate the first is read as raw text instead (selective expansion, as
              `ask --expand 1`); question + text + memories --decoder--> answer
              loss = LM; learns: the decoder adapter alone (stores stay valid)

transformers' PEFT integration runs one adapter per forward, so the compressor and the
generator are separate forwards joined by the memory tensors; `set_adapter` flips
requires_grad of the adapters it deactivates, so `activate` restores the trained set
after every switch (otherwise the first forward's adapter would get no gradient).

Speed on CPU: base weights stay in the compute dtype (bf16 where fast), LoRA weights and
the memory rows are fp32 masters, and the LM head runs only at positions with a label.
All stages but retrieval can run a step's micro-batches as one packed pass (`step_pass`),
each keeping its own means, so the loss is that of accumulating them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClaraError
from ..model import ClaraModel, lora_config, retrieval_scores, retrieval_vectors
from ..prompts import SYSTEM_PROMPT, answer_user_turn
from .data import (
    PARAPHRASE_SYSTEM,
    QA_SYSTEM,
    PretrainRecord,
    QARecord,
    chat_prompt_and_response,
    memory_slots,
    paraphrase_instruction,
    split_ids,
)
from .head_loss import head_group_losses
from .topk import differentiable_topk

if TYPE_CHECKING:
    from .loop import TrainConfig

# What each stage learns (docs/design.md §1; the official code's optimizer sees the same sets).
TRAINED_ADAPTERS = {
    "scp": ("encoder_adapter", "decoder_adapter"),
    "instruct": ("encoder_adapter", "decoder_adapter"),
    "e2e": ("query_reasoner_adapter", "decoder_adapter"),
    "retrieval": ("query_reasoner_adapter",),
    "generator": ("decoder_adapter",),
}
# stages whose micro-batches of one step can run as one forward pass (Trainable.step_pass)
ONE_PASS_STAGES = ("scp", "instruct", "e2e", "generator")
TRAINS_MEM_ROWS = {"scp": True, "instruct": True, "e2e": False, "retrieval": False, "generator": False}
# generator stage: the share of examples whose top-ranked document is not the positive, as
# when retrieval misses at rank 1 (the default retriever's dev Recall@1 is ~95%)
RANK_MISS_RATE = 0.1


@dataclass
class StepStats:
    """What one micro-batch did, for logs and throughput."""

    loss: float
    lm: float
    mse: float
    examples: int
    tokens: int  # non-pad tokens through the transformer (compressor + query + generator passes)
    hits: int = 0  # e2e: positives among the selected documents
    positives: int = 0


# ---------------------------------------------------------------------- preparing a model
def prepare_adapters(model: ClaraModel, stage: str, fresh_start: bool, seed: int) -> None:
    """Shape the adapter set for `stage` as the official loader does.

    scp/instruct keep no query reasoner (a stage-1/2 checkpoint has none: retrieval falls back
    to the compressor); instruct starts a fresh decoder adapter; e2e initialises the query
    reasoner from the compressor when the checkpoint has none. scp/instruct also drop the
    retrieval center (ours): it is the mean memory of the compressor they change, so the
    retrieval stage computes it anew for their output."""
    decoder = model.decoder
    if stage in ("scp", "instruct") and "query_reasoner_adapter" in decoder.peft_config:
        with warnings.catch_warnings():  # "adapter was active which is now deleted"
            warnings.simplefilter("ignore", UserWarning)
            decoder.delete_adapter("query_reasoner_adapter")
        model.config.adapters = [a for a in model.config.adapters if a != "query_reasoner_adapter"]
    if stage in ("scp", "instruct"):
        model.retrieval_center = None
        model.config.retrieval_center = False
    if stage == "instruct" and fresh_start:
        from peft.tuners.lora import LoraLayer

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for module in decoder.modules():
                if isinstance(module, LoraLayer) and "decoder_adapter" in module.lora_A:
                    module.reset_lora_parameters("decoder_adapter", True)
    if stage in ("e2e", "retrieval") and "query_reasoner_adapter" not in decoder.peft_config:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            decoder.add_adapter(lora_config(model.config), adapter_name="query_reasoner_adapter")
        lora_to_fp32(model)  # before the copy, so the encoder's fp32 values arrive exactly
        params = dict(decoder.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if ".query_reasoner_adapter." in name:
                    p.copy_(params[name.replace(".query_reasoner_adapter.", ".encoder_adapter.")])
        model.config.adapters = [*model.config.adapters, "query_reasoner_adapter"]
    missing = [a for a in TRAINED_ADAPTERS[stage] if a not in decoder.peft_config]
    if missing:
        raise ClaraError(f"stage {stage} needs adapters the model lacks: {', '.join(missing)}")


#: `compile=None` (auto) compiles a run of at least this many optimizer steps ahead on a model
#: of at least COMPILE_MIN_PARAMS parameters: the first micro-batches pay ~1-2 CPU-minutes of
#: compilation, which such steps (tens of seconds each on a CPU) earn back within a few.
COMPILE_MIN_STEPS = 20
COMPILE_MIN_PARAMS = 50_000_000


def compile_pays_off(model: ClaraModel, device: torch.device, steps_ahead: int) -> bool:
    """Whether `clara train` compiles by default: a long run of a real-sized model on a CPU
    with a C++ compiler (inductor's CPU backend). Not on CUDA, where no run has measured that
    compiling earns back its minutes within a GPU recipe's few minutes (`--compile` asks)."""
    import shutil

    if device.type != "cpu" or steps_ahead < COMPILE_MIN_STEPS:
        return False
    if sum(p.numel() for p in model.decoder.parameters()) < COMPILE_MIN_PARAMS:
        return False
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def matmul_attention_backward_pays_off(compiled: bool, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a training step takes attention's backward as compiled batched matmuls
    (clara_kernels.matmul_attention_backward): with compiled blocks on a CPU in bf16/fp16, where
    its batched matmuls run on AMX (1.08x the step, 1.5-3.0x flash's backward). In fp32, what a
    CPU without native bf16 trains in, it measured 0.97x the step, so flash's backward stays
    (docs/TRAINING.md, "One pass per step, and attention's backward as matmuls")."""
    return compiled and device.type == "cpu" and dtype != torch.float32


#: merged_lora keeps a copy of every LoRA-wrapped base weight per adapter a step trains through
#: (two in scp): at most this many bytes each, so a large base does not double its memory.
MERGED_LORA_MAX_BYTES = 2 << 30


def merged_lora_pays_off(model: ClaraModel, device: torch.device) -> bool:
    """Whether a training step runs its LoRA linears merged (clara_cli/train/merged_lora.py): on a
    CPU, where peft's full-width side products are bound by memory (1.09x the scp step in bf16,
    compiled; docs/TRAINING.md, "LoRA merged into the weight, gradients kept thin"), for a base
    whose merged copies stay small. Not on CUDA, where no run has measured it."""
    from .merged_lora import mergeable

    if device.type != "cpu":
        return False
    size = sum(m.base_layer.weight.numel() * m.base_layer.weight.element_size()
               for m in model.decoder.modules() if mergeable(m))
    return 0 < size <= MERGED_LORA_MAX_BYTES


def fused_lora_pays_off(device: torch.device) -> bool:
    """Whether a training step runs its LoRA linears through merged_lora.py's fused unmerged path:
    on CUDA, where the step is bound by the host's work per call and that path makes two calls
    fewer and one autograd node instead of peft's several per LoRA linear (docs/TRAINING.md, "The
    host's share of a GPU step"). On a CPU the merged path pays off instead."""
    return device.type == "cuda"


def trainer_speedups(model: ClaraModel, device: torch.device, dtype: torch.dtype, compiled: bool) -> dict[str, bool]:
    """The Trainable settings `clara train` takes beside packing, given whether the blocks are
    compiled: one place for the trainer, its benchmark and its profile to ask. None of them
    changes the computation (each is tested against the plain path)."""
    return {"matmul_attention_backward": matmul_attention_backward_pays_off(compiled, device, dtype),
            "merged_lora": merged_lora_pays_off(model, device), "fused_lora": fused_lora_pays_off(device)}


def compile_layers(model: ClaraModel, *, fall_back: bool) -> None:
    """torch.compile each transformer block of the decoder (dynamic shapes: packed rows vary
    in length). Inductor fuses what eager mode runs as separate passes over the activations
    (RMSNorm, RoPE, SiLU x up, the LoRA side paths' scale-and-add, casts): the same
    computation, a 1.25-1.44x faster packed scp step on a CPU (docs/TRAINING.md). The varlen
    attention runs eagerly inside (clara_kernels marks it). The blocks keep their parameter
    names, so checkpoints are unchanged. fall_back: a block that fails to compile runs eagerly."""
    import torch._dynamo

    if fall_back:
        torch._dynamo.config.suppress_errors = True
    for layer in model.decoder.get_decoder().layers:
        layer.compile(dynamic=True)


def lora_to_fp32(model: ClaraModel) -> None:
    """fp32 master weights for the (small) LoRA matrices, whatever the base dtype."""
    for name, p in model.decoder.named_parameters():
        if "lora_" in name and p.dtype != torch.float32:
            p.data = p.data.float()


class Trainable:
    """A ClaraModel prepared for one stage: trained parameters, fp32 memory rows, forward helpers."""

    def __init__(self, model: ClaraModel, stage: str, autocast: bool = False, packed: bool = False,
                 matmul_attention_backward: bool = False, merged_lora: bool = False, fused_lora: bool = False):
        self.model = model
        self.stage = stage
        # packed CPU steps with compiled blocks: attention's backward as compiled batched matmuls
        # (clara_kernels.matmul_attention_backward; docs/TRAINING.md, "One pass per step")
        self.matmul_attention_backward = matmul_attention_backward
        # packed: every forward runs its sequences back to back in one row, without padding
        # (positions restart per sequence, attention stays inside each; clara_kernels' varlen
        # attention). The same computation as the padded batches to float noise (tested).
        self.packed = packed
        self.n_mem = model.config.n_mem
        self.autocast_dtype = model.dtype if autocast and model.dtype != torch.float32 else None
        decoder = model.decoder
        adapters = TRAINED_ADAPTERS[stage]
        self.named = {n: p for n, p in decoder.named_parameters() if any(f".{a}." in n for a in adapters)}
        for p in decoder.parameters():
            p.requires_grad_(False)
        for p in self.named.values():
            p.requires_grad_(True)
        lo = model.mem_token_ids[0]
        if model.mem_token_ids != list(range(lo, lo + self.n_mem)):
            raise ClaraError("the <MEM*> token ids are not consecutive; cannot train their rows")
        self.mem_lo = lo
        emb = decoder.get_input_embeddings().weight
        self.tied = decoder.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
        # [n_mem, h] fp32 master of the memory-token embedding rows; other rows never change
        self.mem_rows = (nn.Parameter(emb.detach()[lo:lo + self.n_mem].float().clone())
                         if TRAINS_MEM_ROWS[stage] else None)
        self.doc_cache: dict[str, torch.Tensor] = {}
        self.pool: torch.Tensor | None = None  # retrieval: [N, n_mem*h] centred unit rows of every cached doc
        self.pool_row: dict[str, int] = {}
        from peft.tuners.lora import LoraLayer

        from .merged_lora import MergedLora

        self._lora_layers = [m for m in decoder.modules() if isinstance(m, LoraLayer)]
        # merged_lora: passes with gradients run each LoRA linear as one product with W + s*B*A
        # (merged_lora.py; docs/TRAINING.md, "LoRA merged into the weight, gradients kept thin");
        # fused_lora: unmerged, in one autograd node of fewer calls (a GPU's host; "The host's
        # share of a GPU step")
        self.merged_lora = (MergedLora(self._lora_layers) if merged_lora
                            else MergedLora(self._lora_layers, merge=False) if fused_lora else None)

    # ------------------------------------------------------------------ parameters
    def parameters(self) -> list[nn.Parameter]:
        """Trained parameters in a fixed order (the optimizer state depends on it)."""
        return list(self.named.values()) + ([self.mem_rows] if self.mem_rows is not None else [])

    def activate(self, adapter: str) -> None:
        self.model.use_adapter(adapter)
        for p in self.named.values():  # set_adapter turned the others' requires_grad off
            p.requires_grad_(True)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the fp32 memory rows into the embedding matrix (for saving / inference)."""
        if self.mem_rows is not None:
            emb = self.model.decoder.get_input_embeddings().weight
            emb[self.mem_lo:self.mem_lo + self.n_mem] = self.mem_rows.to(emb.dtype)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.autocast_dtype)

    def _merged(self, adapter: str):
        return self.merged_lora.use(adapter) if self.merged_lora is not None else contextlib.nullcontext()

    @contextlib.contextmanager
    def _bf16_lora(self):
        """Under autocast, stop peft from casting every LoRA input up to the fp32 weights' dtype
        (a copy per linear layer that autocast would undo); the side path then runs in bf16."""
        if self.autocast_dtype is None:
            yield
            return
        for m in self._lora_layers:
            m.cast_input_dtype_enabled = False
        try:
            with self._autocast():
                yield
        finally:
            for m in self._lora_layers:
                m.cast_input_dtype_enabled = True

    # ------------------------------------------------------------------ forward pieces
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L] -> [B, L, h], the <MEM*> rows taken from the trained master."""
        x = self.model.decoder.get_input_embeddings()(ids)
        if self.mem_rows is None:
            return x
        rel = ids - self.mem_lo
        is_mem = (rel >= 0) & (rel < self.n_mem)
        rows = self.mem_rows.to(x.dtype)[rel.clamp(0, self.n_mem - 1)]  # [B, L, h]
        return torch.where(is_mem.unsqueeze(-1), rows, x)

    def hidden(self, adapter: str, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state after the final norm, [B, L, h], with `adapter` active."""
        self._attention(varlen=False)
        self.activate(adapter)
        with self._bf16_lora(), self._merged(adapter):
            return self.model.decoder.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                                    use_cache=False).last_hidden_state

    def _attention(self, varlen: bool) -> None:
        """Packed rows need clara_kernels' varlen attention (differentiable: batched SDPA per
        length bucket on CPU, Triton only where no gradient is needed); padded batches keep
        the model's own choice (`ClaraModel.attn`)."""
        from clara_kernels import register_transformers_attention

        name = register_transformers_attention() if varlen or self.model.attn == "triton" else "sdpa"
        if self.model.decoder.config._attn_implementation != name:
            self.model.decoder.set_attn_implementation(name)

    def hidden_packed(self, adapter: str, embeds: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Last hidden states of sequences packed in one row: embeds [1, T, h] -> [1, T, h],
        T = sum(lengths); positions restart at 0 per sequence, no token attends across one."""
        import clara_kernels as ck

        self._attention(varlen=True)
        self.activate(adapter)
        dev = embeds.device
        cu = ck.cu_seqlens_from_lengths(lengths, device=dev)  # [B+1] int32
        longest = max(lengths)
        with self._bf16_lora(), self._merged(adapter), ck.matmul_attention_backward(self.matmul_attention_backward):
            return self.model.decoder.get_decoder()(
                inputs_embeds=embeds, position_ids=ck.pack_position_ids(lengths, device=dev),
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
                use_cache=False).last_hidden_state

    def compress_states(self, texts: Sequence[str], adapter: str = "encoder_adapter"
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Texts -> (memories [D, n_mem, h] with gradients, text-token mean [D, h] fp32,
        memory-token mean [D, h] fp32, non-pad tokens per text). A micro-batch's alignment MSE is
        F.mse_loss of its documents' two means, as the official `_compr_decoder`: the real
        non-memory tokens' mean against the memory tokens'."""
        if self.packed:
            return self._compress_packed(texts, adapter)
        ids, mask = self.model.pad_left(self.model.encoder_token_ids(texts))  # [D, L]
        h = self.hidden(adapter, self.embed(ids), mask)                      # [D, L, h]
        text = mask.bool().clone()
        text[:, -self.n_mem:] = False
        hf = h.float()
        text_mean = torch.where(text.unsqueeze(-1), hf, 0.0).sum(1) / text.sum(1, keepdim=True)  # [D, h]
        mem_mean = hf[:, -self.n_mem:].mean(1)                                                    # [D, h]
        return h[:, -self.n_mem:], text_mean, mem_mean, mask.sum(1).tolist()

    def _compress_packed(self, texts: Sequence[str], adapter: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """`compress_states` on one packed row: the same memories and means, no padding tokens."""
        import clara_kernels as ck

        rows = self.model.encoder_token_ids(texts)
        lengths = [len(r) for r in rows]
        dev = self.model.device
        ids = torch.tensor([tok for r in rows for tok in r], device=dev).unsqueeze(0)  # [1, T]
        h = self.hidden_packed(adapter, self.embed(ids), lengths)[0]                  # [T, h]
        cu = ck.cu_seqlens_from_lengths(lengths, device=dev)
        mem = h[ck.tail_indices(cu, self.n_mem)]                                       # [D, n_mem, h]
        # per document: the mean of its text tokens (all but the trailing n_mem)
        doc = torch.repeat_interleave(torch.arange(len(rows), device=dev), torch.tensor(lengths, device=dev))
        pos = ck.pack_position_ids(lengths, device=dev)[0]
        n_text = torch.tensor([n - self.n_mem for n in lengths], device=dev)           # [D]
        is_text = pos < n_text[doc]                                                    # [T]
        hf = h.float()
        text_sum = torch.zeros(len(rows), h.shape[-1], device=dev).index_add(0, doc[is_text], hf[is_text])
        text_mean = text_sum / n_text.unsqueeze(1)                                     # [D, h]
        mem_mean = mem.float().mean(1)                                                 # [D, h]
        return mem, text_mean, mem_mean, lengths

    def lm_losses(self, prompts: Sequence[list[int]], targets: Sequence[list[int]],
                  memories: Sequence[torch.Tensor], groups: Sequence[int]) -> tuple[list[torch.Tensor], list[int]]:
        """Consecutive groups of sequences (groups[g] sequences each) in one forward: per group,
        the mean cross-entropy of its target tokens given prompt + memories, and its non-pad
        tokens. prompts[i] holds k_i memory slots; memories[i] is [k_i, n_mem, h] in slot order."""
        rows = [p + t for p, t in zip(prompts, targets, strict=True)]
        if self.packed:  # one row [1, T]: sequence b starts at the sum of the lengths before it
            dev = self.model.device
            ids = torch.tensor([tok for r in rows for tok in r], device=dev).unsqueeze(0)  # [1, T]
            starts = [0]
            for r in rows[:-1]:
                starts.append(starts[-1] + len(r))
            where = [(0, s) for s in starts]  # (row, offset) of each sequence
        else:
            ids, mask = self.model.pad_left(rows)                            # [B, L]
            L = ids.shape[1]
            where = [(b, L - len(r)) for b, r in enumerate(rows)]
        x = self.embed(ids)                                                  # [B, L, h] / [1, T, h]
        mem_ids = set(self.model.mem_token_ids)
        r_idx, p_idx, t_rows, t_pos, labels = [], [], [], [], []
        for (b, off), p, t, mem in zip(where, prompts, targets, memories, strict=True):
            slots = [off + i for i, tok in enumerate(p) if tok in mem_ids]
            if len(slots) != mem.shape[0] * mem.shape[1]:
                raise ClaraError(f"prompt has {len(slots)} memory slots for {mem.shape[0]}x{mem.shape[1]} vectors")
            r_idx += [b] * len(slots)
            p_idx += slots
            start = off + len(p)  # first target token; predicted by the position before it
            t_rows += [b] * len(t)
            t_pos += list(range(start - 1, start - 1 + len(t)))
            labels += t
        dev = x.device
        flat = torch.cat([m.reshape(-1, m.shape[-1]) for m in memories]).to(x.dtype)  # [sum k*n_mem, h]
        x = x.index_put((torch.tensor(r_idx, device=dev), torch.tensor(p_idx, device=dev)), flat)
        if self.packed:
            h = self.hidden_packed("decoder_adapter", x, [len(r) for r in rows])  # [1, T, h]
        else:
            h = self.hidden("decoder_adapter", x, mask)                      # [B, L, h]
        h_t = h[torch.tensor(t_rows, device=dev), torch.tensor(t_pos, device=dev)]  # [targets, h]
        labels_t = torch.tensor(labels, device=dev)
        bounds = [0, *itertools.accumulate(groups)]  # sequence index where each group starts
        n_targets = [sum(len(t) for t in targets[a:b]) for a, b in itertools.pairwise(bounds)]
        losses = self.head_losses(h_t, labels_t, n_targets)
        return list(losses.unbind()), [sum(map(len, rows[a:b])) for a, b in itertools.pairwise(bounds)]

    def head_losses(self, h_t: torch.Tensor, labels: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Per group of target rows (counts[g] each, back to back), the mean cross-entropy of the
        LM head on [targets, h] hidden states: [G] fp32. The head runs in chunks of rows with the
        gradients computed on the way (head_loss.py): the same computation as the whole
        [targets, vocabulary] logits and F.cross_entropy per group (tested)."""
        head = self.model.decoder.get_output_embeddings().weight
        mem = self.mem_rows if self.mem_rows is not None and self.tied else None
        return head_group_losses(h_t, head, labels, counts, mem, self.mem_lo,
                                 dtype=self.autocast_dtype or head.dtype)

    # ------------------------------------------------------------------ e2e helpers
    @torch.no_grad()
    def cache_documents(self, texts: Sequence[str], batch_size: int = 16, progress=None) -> None:
        """Frozen-compressor memories of every document not cached yet (no gradient, no dropout),
        computed eagerly as `clara compress` computes a store's, also when the blocks are compiled
        (compiled bf16 rounds differently, docs/TRAINING.md)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self.doc_cache))
        if not todo:
            return
        was_training = self.model.decoder.training
        self.model.decoder.eval()
        try:
            with torch.compiler.set_stance("force_eager"):
                mem = self.model.compress(todo, batch_size=batch_size, progress=progress)  # fp32 [U, n_mem, h]
        finally:
            self.model._merged = {}  # drop the merged copy the bulk path may have made
            self.model.decoder.train(was_training)
        mem = mem.to(self.model.device, self.model.dtype).clone()  # a normal tensor (not an inference-mode one)
        for t, m in zip(todo, mem, strict=True):
            self.doc_cache[t] = m

    @torch.no_grad()
    def build_pool(self, center: bool) -> None:
        """The retrieval stage's negatives: every cached document, as the search will score it.

        center=True (a model without one yet): the center becomes the mean flattened memory of
        the pool, recorded in the model (config.retrieval_center, saved with it)."""
        texts = list(self.doc_cache)
        mem = torch.stack([self.doc_cache[t] for t in texts]).float()      # [N, n_mem, h]
        if center:
            self.model.retrieval_center = mem.reshape(len(texts), -1).mean(0)  # [n_mem*h]
            self.model.config.retrieval_center = True
        self.pool = retrieval_vectors(mem, self.model.retrieval_center)       # [N, n_mem*h]
        self.pool_row = {t: i for i, t in enumerate(texts)}

    # ------------------------------------------------------------------ the stages
    def step(self, records: Sequence, keys: Sequence[tuple[int, int]],
             cfg: TrainConfig) -> tuple[torch.Tensor, StepStats]:
        """Loss of one micro-batch for this stage (before accumulation scaling).

        keys[i] = (epoch, record index) of records[i]: seeds its paraphrase template."""
        if self.stage in ONE_PASS_STAGES:
            loss, stats = self.step_pass([(records, keys)], cfg)
            return loss, stats[0]
        return self._retrieval(records, keys, cfg)

    def step_pass(self, groups: Sequence[tuple[Sequence, Sequence[tuple[int, int]]]],
                  cfg: TrainConfig) -> tuple[torch.Tensor, list[StepStats]]:
        """The micro-batches (records, keys) of one optimizer step in one forward pass, for
        ONE_PASS_STAGES: the mean of their losses, which is what accumulating them computes
        (sum of loss_g / grad_accum), and each one's stats. Each micro-batch keeps its own
        means (LM over its target tokens, MSE over its documents); the rows are just longer,
        which a CPU's matmuls run faster (docs/TRAINING.md, "One pass per step")."""
        if self.stage not in ONE_PASS_STAGES:
            raise ClaraError(f"stage {self.stage} runs one micro-batch per pass")
        if self.stage == "scp":
            return self._scp(groups, cfg)
        if self.stage == "generator":
            return self._generator(groups, cfg)
        if self.stage == "e2e":
            return self._e2e(groups, cfg)
        return self._instruct(groups, cfg)

    def backward_step(self, groups: Sequence[tuple[Sequence, Sequence[tuple[int, int]]]], cfg: TrainConfig,
                      one_pass: bool) -> list[StepStats]:
        """Gradients of one optimizer step's micro-batches (records, keys), accumulated into
        .grad: in one pass (`step_pass`), or one by one with loss / len(groups); their stats."""
        if one_pass:
            loss, stats = self.step_pass(groups, cfg)
            loss.backward()
            return stats
        stats = []
        for group in groups:
            loss, st = self.step(*group, cfg)
            (loss / len(groups)).backward()
            stats.append(st)
        return stats

    def _compress_and_read(self, groups: Sequence[Sequence[Sequence[str]]],
                           answer_ids: Sequence[Sequence[tuple[list[int], list[int]]]],
                           cfg: TrainConfig) -> tuple[torch.Tensor, list[StepStats]]:
        """scp / instruct: groups[g][i] = the documents of example i of micro-batch g,
        answer_ids[g][i] = its (prompt, target) ids; every document compressed in one pass,
        every example read in one pass; loss_g = LM_g + mse_weight * MSE_g."""
        docs = [d for group in groups for example in group for d in example]
        mem, text_mean, mem_mean, enc_tokens = self.compress_states(docs)      # [D, n_mem, h], [D, h] x2
        memories = list(torch.split(mem, [len(e) for group in groups for e in group]))
        pairs = [pair for group in answer_ids for pair in group]
        lms, dec_tokens = self.lm_losses([p for p, _ in pairs], [t for _, t in pairs], memories,
                                         [len(group) for group in groups])
        losses, stats, first = [], [], 0
        for group, lm, dec in zip(groups, lms, dec_tokens, strict=True):
            n_docs = sum(len(e) for e in group)
            span = slice(first, first + n_docs)
            mse = F.mse_loss(text_mean[span], mem_mean[span])
            loss = lm + cfg.mse_weight * mse
            losses.append(loss)
            stats.append(StepStats(loss.item(), lm.item(), mse.item(), len(group), sum(enc_tokens[span]) + dec))
            first += n_docs
        return torch.stack(losses).mean(), stats

    def _scp(self, groups: Sequence[tuple[Sequence[PretrainRecord], Sequence[tuple[int, int]]]], cfg: TrainConfig):
        tok = self.model.tokenizer
        answer_ids = []
        for records, keys in groups:
            pairs = []
            for r, (epoch, i) in zip(records, keys, strict=True):
                slots = memory_slots(self.n_mem, len(r.docs), self.model.config.sep)
                if r.data_type == "paraphrase":
                    system, user = PARAPHRASE_SYSTEM, paraphrase_instruction(cfg.seed, epoch, i).format(docs=slots)
                else:
                    system, user = QA_SYSTEM, f"Background:\n{slots}"
                pairs.append(split_ids(tok, *chat_prompt_and_response(tok, system, user, r.target()), cfg.max_length))
            answer_ids.append(pairs)
        return self._compress_and_read([[r.docs for r in records] for records, _ in groups], answer_ids, cfg)

    def _answer_ids(self, question: str, k: int, answer: str, max_length: int,
                    expanded: Sequence[str] = ()) -> tuple[list[int], list[int]]:
        """The inference prompt (ClaraModel.prompt) with k slots after the expanded raw texts,
        and the answer turn after it."""
        tok = self.model.tokenizer
        user = answer_user_turn(question, self.n_mem, k, self.model.config.sep, expanded)
        return split_ids(tok, *chat_prompt_and_response(tok, SYSTEM_PROMPT, user, answer), max_length)

    def _instruct(self, groups: Sequence[tuple[Sequence[QARecord], Sequence[tuple[int, int]]]], cfg: TrainConfig):
        chosen = [[choose_docs(r, cfg.top_k) for r in records] for records, _ in groups]
        answer_ids = [[self._answer_ids(r.question, len(c), r.answer, cfg.max_length) for r, c in zip(records, docs, strict=True)]
                      for (records, _), docs in zip(groups, chosen, strict=True)]
        return self._compress_and_read(chosen, answer_ids, cfg)

    def _e2e(self, groups: Sequence[tuple[Sequence[QARecord], Sequence[tuple[int, int]]]], cfg: TrainConfig):
        records = [r for group, _ in groups for r in group]
        self.cache_documents([d for r in records for d in r.docs])
        questions = [r.question for r in records]
        if self.packed:
            query, _, _, n_query = self._compress_packed(questions, "query_reasoner_adapter")  # [B, n_mem, h]
        else:
            ids, mask = self.model.pad_left(self.model.encoder_token_ids(questions))
            query = self.hidden("query_reasoner_adapter", self.embed(ids), mask)[:, -self.n_mem:]  # [B, n_mem, h]
            n_query = mask.sum(1).tolist()
        selected, hits, positives = [], [], []
        for b, r in enumerate(records):
            cand = torch.stack([self.doc_cache[d] for d in r.docs]).float()  # [N, n_mem, h], constant
            scores = retrieval_scores(query[b:b + 1], cand, self.model.retrieval_center)  # [1, N]
            k = min(cfg.top_k, len(r.docs))
            W, idx = differentiable_topk(scores, k, cfg.temperature)        # [1, k, N], [1, k]
            selected.append((W[0] @ cand.reshape(len(r.docs), -1)).reshape(k, self.n_mem, -1))  # [k, n_mem, h]
            hits.append(len(set(idx[0].tolist()) & set(r.pos_index)))
            positives.append(min(len(r.pos_index), k))
        pairs = [self._answer_ids(r.question, s.shape[0], r.answer, cfg.max_length) for r, s in zip(records, selected, strict=True)]
        sizes = [len(group) for group, _ in groups]
        lms, dec_tokens = self.lm_losses([p for p, _ in pairs], [t for _, t in pairs], selected, sizes)
        stats, first = [], 0
        for lm, dec, size in zip(lms, dec_tokens, sizes, strict=True):
            span = slice(first, first + size)
            stats.append(StepStats(lm.item(), lm.item(), 0.0, size, sum(n_query[span]) + dec,
                                   sum(hits[span]), sum(positives[span])))
            first += size
        return torch.stack(lms).mean(), stats

    def _generator(self, groups: Sequence[tuple[Sequence[QARecord], Sequence[tuple[int, int]]]], cfg: TrainConfig):
        views = [[ranked_view(r, cfg.top_k, cfg.expand_rate, cfg.seed, e, i)
                  for r, (e, i) in zip(records, keys, strict=True)] for records, keys in groups]
        self.cache_documents([d for group in views for expanded, mem in group for d in (*expanded, *mem)])
        h = self.model.hidden_size
        memories = [torch.stack([self.doc_cache[d] for d in mem]) if mem else
                    torch.zeros(0, self.n_mem, h, dtype=self.model.dtype, device=self.model.device)
                    for group in views for _, mem in group]                 # [k_i, n_mem, h] each, constant
        pairs = [self._answer_ids(r.question, len(mem), r.answer, cfg.max_length, expanded)
                 for (records, _), group in zip(groups, views, strict=True)
                 for r, (expanded, mem) in zip(records, group, strict=True)]
        lms, dec_tokens = self.lm_losses([p for p, _ in pairs], [t for _, t in pairs], memories,
                                         [len(records) for records, _ in groups])
        stats = [StepStats(lm.item(), lm.item(), 0.0, len(records), tokens)
                 for lm, tokens, (records, _) in zip(lms, dec_tokens, groups, strict=True)]
        return torch.stack(lms).mean(), stats

    def _retrieval(self, records: Sequence[QARecord], keys: Sequence[tuple[int, int]], cfg: TrainConfig):
        if self.pool is None:
            raise ClaraError("the retrieval stage needs build_pool() first")
        questions = [drop_words(r.question, cfg.query_word_dropout, cfg.seed, e, i)
                     for r, (e, i) in zip(records, keys, strict=True)]
        ids, mask = self.model.pad_left(self.model.encoder_token_ids(questions))
        query = self.hidden("query_reasoner_adapter", self.embed(ids), mask)[:, -self.n_mem:]  # [B, n_mem, h]
        q = retrieval_vectors(query, self.model.retrieval_center)               # [B, n_mem*h]
        scores = q @ self.pool.T                                                # [B, N]
        target = torch.tensor([self.pool_row[r.docs[(r.pos_index or [0])[0]]] for r in records])
        loss = F.cross_entropy(scores / cfg.tau, target)
        top = scores.detach().topk(min(5, scores.shape[1]), dim=1).indices      # [B, 5]
        hits = int((top == target[:, None]).any(1).sum())
        return loss, StepStats(loss.item(), loss.item(), 0.0, len(records), int(mask.sum()), hits, len(records))


def drop_words(text: str, p: float, seed: int, epoch: int, index: int) -> str:
    """Each word dropped with probability p (seeded per example and epoch, so a resumed run
    draws the same); at least three words stay. Teaches the query reasoner to match a question
    that does not copy the document's sentence."""
    words = text.split()
    if p <= 0 or len(words) <= 3:
        return text
    rng = random.Random(f"{seed}:{epoch}:{index}")
    kept = [w for w in words if rng.random() >= p]
    return " ".join(kept if len(kept) >= 3 else words[:3])


def ranked_view(record: QARecord, k: int, expand_rate: float, seed: int, epoch: int,
                index: int) -> tuple[list[str], list[str]]:
    """What the generator reads for one example, as `ask` gives it: (raw texts, memory docs).

    The k documents in rank order: the positive first, except in RANK_MISS_RATE of examples
    where the second takes its place (a retrieval miss at rank 1); with probability
    expand_rate the first is read as raw text (`--expand 1`), else all are memories.
    Seeded per (seed, epoch, index), so a resumed run draws the same."""
    rng = random.Random(f"generator:{seed}:{epoch}:{index}")
    docs = choose_docs(record, k)
    pos = {record.docs[i] for i in record.pos_index}
    ranked = [d for d in docs if d in pos] + [d for d in docs if d not in pos]
    if len(ranked) > 1 and rng.random() < RANK_MISS_RATE:
        ranked[0], ranked[1] = ranked[1], ranked[0]
    if rng.random() < expand_rate:
        return ranked[:1], ranked[1:]
    return [], ranked


def choose_docs(record: QARecord, k: int) -> list[str]:
    """Instruction tuning reads k documents: all of them when there are at most k, else the
    positives first-come plus the first non-positives, kept in the listed order."""
    if len(record.docs) <= k:
        return list(record.docs)
    keep = set(record.pos_index[:k])
    for i in range(len(record.docs)):
        if len(keep) >= k:
            break
        keep.add(i)
    return [record.docs[i] for i in sorted(keep)]


def cosine_with_min_lr(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup, then cosine from 1 to min_ratio (transformers' cosine_with_min_lr)."""
    if step < warmup:
        return (step + 1) / (warmup + 1) if warmup else 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
