"""ClaraModel: the whole CLaRa forward pass on one page (docs/design.md §1).

One causal LM plays three roles through three LoRA adapters on the same base weights:

    compressor      encoder_adapter         document -> n_mem memory vectors
    query reasoner  query_reasoner_adapter  question -> n_mem vectors in the same space
    generator       decoder_adapter         question + selected memories -> answer

Compressor / query input (left-padded within a batch, memory tokens appended):

    <ENC> <bos> document tokens ... <eos>   <MEM0> ... <MEM{n-1}>
    '---- truncated to doc_max_length+3 ---' '------ n_mem -------'

The memory of a text is the LAST hidden state (after the final norm) at the n_mem
memory positions: [n_mem, hidden]. Retrieval scores flattened vectors by cosine; a model
with `retrieval_center` (ours, off for Apple's) first subtracts a fixed mean memory from
both sides, because one shared direction holds ~90% of the memory's energy and hides what
separates documents (docs/TRAINING.md, "Retrieval").
The generator reads a chat prompt whose <MEM*> slots are overwritten by memories.
"""

from __future__ import annotations

import copy
import os
import platform
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .prompts import SYSTEM_PROMPT, answer_user_turn, chat_prompt

ADAPTERS = ("encoder_adapter", "decoder_adapter", "query_reasoner_adapter")
MERGED_COPY_MAX_BYTES = 4 << 30  # a merged copy doubles the weights in memory: not for 7B models
MAX_PROMPT_TOKENS = 1024  # the generator's prompts are cut here (fit_question keeps questions inside)


@dataclass
class ClaraConfig:
    """What the forward pass needs to know; saved with our checkpoints."""

    base_model: str = ""
    doc_max_length: int = 256
    compr_rate: int = 16
    sep: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    adapters: list[str] = field(default_factory=lambda: list(ADAPTERS))
    # Our deviation, off for Apple's checkpoints: score cos(q - c, d - c) with c the mean
    # flattened memory of the training corpus (stored with the model, retrieval.safetensors).
    retrieval_center: bool = False
    # Our deviation, 0 for Apple's: how many of the best sources `ask` reads as raw text beside
    # the memory tokens of the others (selective expansion; --expand overrides it).
    expand: int = 0

    #: Keys older clara.json files carry that nothing reads any more (accepted, then dropped).
    RETIRED_KEYS = ("generation_top_k",)

    @classmethod
    def from_dict(cls, config: dict) -> ClaraConfig:
        """A config from a checkpoint's clara.json, older ones included."""
        return cls(**{k: v for k, v in config.items() if k not in cls.RETIRED_KEYS})

    @property
    def n_mem(self) -> int:
        return self.doc_max_length // self.compr_rate

    def to_dict(self) -> dict:
        return asdict(self)


def lora_config(cfg: ClaraConfig):
    """The official adapter settings: r 16, alpha 2r, dropout 0.1, all linear layers but lm_head."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_clara_tokens(tokenizer, n_mem: int) -> None:
    """Append <MEM0..n-1>, <AE>, <ENC>, <SEP> after the base vocabulary, as the official code does."""
    existing = list(tokenizer.special_tokens_map.get("additional_special_tokens", []))
    new = [f"<MEM{i}>" for i in range(n_mem)] + ["<AE>", "<ENC>", "<SEP>"]
    tokenizer.add_special_tokens({"additional_special_tokens": existing + new})
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:  # Mistral has no pad token: the official code uses bos
        tokenizer.pad_token_id = tokenizer.bos_token_id


def retrieval_vectors(memory: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """[n, n_mem, h] -> unit fp32 rows [n, n_mem*h] of (flattened memory - center): what the
    cosine reads. center None (Apple's checkpoints) is the method's plain flattened cosine."""
    flat = memory.reshape(memory.shape[0], -1).float()
    if center is not None:
        flat = flat - center.to(flat.device, torch.float32)
    return F.normalize(flat, dim=-1)


def retrieval_scores(queries: torch.Tensor, memories: torch.Tensor,
                     center: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity of flattened (centred) memories, fp32: [Q, n_mem, h] x [N, n_mem, h] -> [Q, N]."""
    return retrieval_vectors(queries, center) @ retrieval_vectors(memories, center).T


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


# oneDNN (bf16 matmuls) and ATen's vectorized kernels can be capped below what the CPU has, by
# ONEDNN_MAX_CPU_ISA and ATEN_CPU_CAPABILITY; under these caps bf16 is emulated as on an AVX2 CPU.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                             "AVX512_CORE_VNNI"}
_ATEN_CAPABILITIES_WITHOUT_BF16 = {"default", "avx2"}


def cpu_supports_bf16() -> bool:
    """AMX or avx512_bf16 make bf16 matmuls several times faster than fp32 on CPU, unless an
    ISA cap in the environment keeps oneDNN or ATen from using them."""
    flags = _cpuinfo()
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _ATEN_CAPABILITIES_WITHOUT_BF16:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_name() -> str:
    """The CPU's model name, to print beside every timing (machines here differ ~100x in bf16),
    with the ISA caps set in the environment: a capped CPU times like another machine."""
    names = (line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name"))
    name = next(names, None) or platform.processor() or "unknown CPU"
    caps = [f"{var}={os.environ[var]}" for var in _ISA_CAPS if os.environ.get(var)]
    return f"{name} (capped: {', '.join(caps)})" if caps else name


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's: what timings are printed beside."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slow_dtype_notice(dtype: str, device: str = "auto") -> str | None:
    """The line to print when bf16 is asked for explicitly on a CPU that only emulates it."""
    if dtype != "bf16" or device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return None
    if cpu_supports_bf16():
        return None
    return ("--dtype bf16 on a CPU without native bf16 (no AMX / avx512_bf16): it is emulated there and "
            "will be very slow (over 100x fp32); --dtype auto picks fp32 on this machine")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import UsageError

        raise UsageError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


#: The one table of dtype names: the short names options, reports and training state use.
DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's own names
COMPUTE_DTYPES = ("fp32", "bf16", "fp16")


def dtype_from_name(name: str) -> torch.dtype:
    """`fp32`/`bf16`/`fp16`/`int8` (or torch's `float32`...) -> the torch dtype."""
    return DTYPE_NAMES[DTYPE_ALIASES.get(name, name)]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name of a torch dtype (`torch.bfloat16` -> `bf16`)."""
    return next(name for name, value in DTYPE_NAMES.items() if value == dtype)


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """The compute dtype for a name, or for `auto` the fast one on this device."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if DTYPE_ALIASES.get(dtype, dtype) in COMPUTE_DTYPES:
        return dtype_from_name(dtype)
    if dtype != "auto":
        from .errors import UsageError

        raise UsageError(f"unknown dtype {dtype!r} (use auto, fp32, bf16 or fp16)")
    device = device or torch.device("cpu")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


class ClaraModel(nn.Module):
    """A CLaRa model over any Hugging Face Llama/Mistral/Qwen2-style causal LM.

    `decoder` is the base LM with the adapters injected (transformers' PEFT integration,
    the same mechanism the official code uses); exactly one adapter is active per forward.
    """

    def __init__(self, decoder, tokenizer, config: ClaraConfig, *, fingerprint: str = "",
                 trained: bool = True, source: str = ""):
        super().__init__()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.config = config
        self.fingerprint = fingerprint
        self.trained = trained  # False: fresh adapters, answers are not meaningful
        self.source = source  # how it was loaded, for messages and the store's manifest
        self.mem_token_ids = tokenizer.convert_tokens_to_ids([f"<MEM{i}>" for i in range(config.n_mem)])
        self.enc_token_id, self.sep_token_id = tokenizer.convert_tokens_to_ids(["<ENC>", "<SEP>"])
        # Rows below this id are the base vocabulary; the CLaRa tokens come after it.
        self.n_base_tokens = min(self.mem_token_ids + [self.enc_token_id, self.sep_token_id])
        self.full_rows = False  # True when a checkpoint also changed base vocabulary rows
        # [n_mem*hidden] fp32 when config.retrieval_center: subtracted before every retrieval cosine
        self.retrieval_center: torch.Tensor | None = None
        self._merged: dict[str, nn.Module] = {}
        self.attn = "sdpa"  # or "triton": clara_kernels' varlen attention, packed compressor batches
        self.eval()

    # ------------------------------------------------------------------ construction
    def set_attention(self, attn: str = "auto") -> str:
        """"sdpa", or "triton" (clara_kernels' varlen flash attention; the compressor then packs
        each batch into one row without padding). "auto": Triton on CUDA, SDPA elsewhere."""
        if attn == "auto":
            from clara_kernels import backend

            attn = "triton" if self.device.type == "cuda" and backend(self.device) == "triton" else "sdpa"
        if attn == "triton":
            from clara_kernels import register_transformers_attention

            self.decoder.set_attn_implementation(register_transformers_attention())
        elif attn == "sdpa":
            self.decoder.set_attn_implementation("sdpa")
        else:
            from .errors import UsageError

            raise UsageError(f"unknown attention {attn!r} (use auto, triton or sdpa)")
        self._merged = {}  # merged copies were made with the previous implementation
        self.attn = attn
        return attn

    @classmethod
    def from_base(cls, decoder, tokenizer, config: ClaraConfig, seed: int = 0, mean_resizing: bool = True,
                  **kwargs) -> ClaraModel:
        """Fresh CLaRa around a base LM: add tokens, resize, inject the three adapters (seeded).

        New token rows start as transformers' mean resizing draws them (as the official code);
        a loader that overwrites them passes mean_resizing=False to skip that work."""
        from transformers.utils import logging as hf_logging

        add_clara_tokens(tokenizer, config.n_mem)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the resize notice is noise for our users
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            decoder.resize_token_embeddings(len(tokenizer), mean_resizing=mean_resizing)
            with warnings.catch_warnings():  # peft warns on every adapter after the first
                warnings.simplefilter("ignore", UserWarning)
                for name in config.adapters:
                    decoder.add_adapter(lora_config(config), adapter_name=name)
        hf_logging.set_verbosity(verbosity)
        return cls(decoder, tokenizer, config, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.decoder.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.decoder.config.hidden_size

    def use_adapter(self, name: str) -> None:
        if name == "query_reasoner_adapter" and name not in self.decoder.peft_config:
            name = "encoder_adapter"  # stage-1 checkpoints: the reasoner starts as the compressor
        self.decoder.set_adapter(name)

    # ------------------------------------------------------------------ compressor inputs
    def encoder_token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text: <ENC> bos text eos, right-truncated to doc_max_length+3, then <MEM*>."""
        tok = self.tokenizer
        wrapped = ["<ENC>" + tok.bos_token + t + tok.eos_token for t in texts]
        ids = tok(wrapped, add_special_tokens=False, truncation=True,
                  max_length=self.config.doc_max_length + 3)["input_ids"]
        return [row + self.mem_token_ids for row in ids]

    def pad_left(self, rows: Sequence[Sequence[int]], length: int | None = None):
        """Left-pad id rows to `length` (default: the longest): (input_ids, attention_mask) [B, L]."""
        length = length or max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, length - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ compressor / query reasoner
    def _memory_states(self, trunk: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state (after the final norm) at the n_mem trailing positions: [B, n_mem, h]."""
        hidden = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return hidden[:, -self.config.n_mem:, :]

    def _memory_states_packed(self, trunk: nn.Module, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """The same states from one packed row: documents back to back, positions restarting
        at 0 per document, no padding FLOPs (needs the Triton varlen attention)."""
        import clara_kernels as ck

        lengths = [len(r) for r in rows]
        ids = torch.tensor([t for r in rows for t in r], device=self.device).unsqueeze(0)  # [1, total]
        cu = ck.cu_seqlens_from_lengths(lengths, device=self.device)  # [B+1] int32
        hidden = trunk(input_ids=ids, position_ids=ck.pack_position_ids(lengths, device=self.device),
                       cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths),
                       max_length_k=max(lengths), use_cache=False).last_hidden_state  # [1, total, h]
        return hidden[0, ck.tail_indices(cu, self.config.n_mem)]  # [B, n_mem, h]

    def _trunk(self, adapter: str, merged: bool) -> nn.Module:
        """The transformer body (no LM head) with `adapter` active, merged into the weights if asked."""
        if merged:
            if adapter not in self._merged:
                self._merged = {adapter: merged_trunk(self.decoder, adapter)}  # keep at most one copy
            return self._merged[adapter]
        self.use_adapter(adapter)
        return self.decoder.get_decoder()

    def merge_pays_off(self, n_texts: int, batch_size: int) -> bool:
        """Whether to encode n_texts through a merged copy of the weights: it pays off for bulk
        jobs (more than 4 batches), and is made only when the copy fits comfortably (base
        weights under MERGED_COPY_MAX_BYTES). Jobs that encode batch by batch ask once for all."""
        return n_texts > 4 * batch_size and param_bytes(self.decoder) < MERGED_COPY_MAX_BYTES

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], adapter: str, batch_size: int = 32,
               merged: bool | None = None, progress=None) -> torch.Tensor:
        """Texts -> [len(texts), n_mem, hidden] fp32 on CPU, in length-sorted, dynamically padded batches."""
        if merged is None:
            merged = self.merge_pays_off(len(texts), batch_size)
        rows = self.encoder_token_ids(texts)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out = torch.empty(len(rows), self.config.n_mem, self.hidden_size, dtype=torch.float32)
        trunk = self._trunk(adapter, merged)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if self.attn == "triton":
                out[idx] = self._memory_states_packed(trunk, [rows[i] for i in idx]).float().cpu()
            else:
                ids, mask = self.pad_left([rows[i] for i in idx])
                out[idx] = self._memory_states(trunk, ids, mask).float().cpu()
            if progress is not None:
                progress(len(idx))
        return out

    def compress(self, texts: Sequence[str], batch_size: int = 32, **kw) -> torch.Tensor:
        """Documents -> memory tokens [len(texts), n_mem, hidden] (encoder_adapter)."""
        return self.encode(texts, "encoder_adapter", batch_size=batch_size, **kw)

    def encode_queries(self, questions: Sequence[str], batch_size: int = 32, **kw) -> torch.Tensor:
        """Questions -> [len(questions), n_mem, hidden] in the memory space (query_reasoner_adapter)."""
        return self.encode(questions, "query_reasoner_adapter", batch_size=batch_size, **kw)

    @torch.inference_mode()
    def compress_reference(self, texts: Sequence[str], adapter: str = "encoder_adapter") -> torch.Tensor:
        """The straightforward path the reference code takes: every text padded to doc_max_length+3,
        the full causal LM with all hidden states. Slow; kept to prove `compress` equal to it."""
        self.use_adapter(adapter)
        rows = self.encoder_token_ids(texts)
        fixed = [[self.tokenizer.pad_token_id] * (self.config.doc_max_length + 3 + self.config.n_mem - len(r)) + r
                 for r in rows]
        ids = torch.tensor(fixed, device=self.device)
        mask = torch.tensor([[0] * (len(f) - len(r)) + [1] * len(r) for f, r in zip(fixed, rows, strict=True)],
                            device=self.device)
        out = self.decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-1][:, -self.config.n_mem:, :].float().cpu()

    # ------------------------------------------------------------------ generator
    def prompt(self, question: str, k: int, expanded: Sequence[str] = ()) -> str:
        """The generator's chat prompt with k memory slots (<MEM0..n-1><SEP> each), in rank order.

        `expanded` (selective expansion, ours, as REFRAG's; off by default): raw texts of the
        best-ranked documents, read as text before the k memory slots of the others."""
        user = answer_user_turn(question, self.config.n_mem, k, self.config.sep, expanded)
        return chat_prompt(self.tokenizer, SYSTEM_PROMPT, user)

    def prompt_inputs(self, questions: Sequence[str], memories: Sequence[torch.Tensor],
                      expanded: Sequence[Sequence[str]] | None = None):
        """(input_ids, attention_mask, inputs_embeds) with each <MEM*> row replaced by its memory vector."""
        expanded = expanded or [()] * len(questions)
        texts = [self.prompt(q, len(m), e) for q, m, e in zip(questions, memories, expanded, strict=True)]
        enc = self.tokenizer(texts, padding="longest", add_special_tokens=False, truncation=True,
                             max_length=MAX_PROMPT_TOKENS, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        embeds = self.decoder.get_input_embeddings()(ids)  # [B, L, h]
        is_mem = torch.isin(ids, torch.tensor(self.mem_token_ids, device=ids.device))
        for row, mem in enumerate(memories):
            flat = mem.reshape(-1, mem.shape[-1]).to(embeds.dtype).to(embeds.device)  # [k*n_mem, h]
            positions = is_mem[row].nonzero().squeeze(-1)
            if len(positions) != len(flat):
                raise ValueError(f"prompt {row} has {len(positions)} memory slots for {len(flat)} vectors "
                                 "(was it truncated at 1024 tokens?)")
            embeds[row, positions] = flat
        return ids, mask, embeds

    @torch.inference_mode()
    def generate(self, questions: Sequence[str], memories: Sequence[torch.Tensor], max_new_tokens: int = 64,
                 return_ids: bool = False, logits_processor=None, details: bool = False,
                 expanded: Sequence[Sequence[str]] | None = None):
        """Greedy answers; memories[i] is [k_i, n_mem, hidden] for question i, in rank order;
        expanded[i] (optional) the raw texts read before them (see `prompt`).

        `logits_processor` (a transformers LogitsProcessorList) is passed to generate, e.g. to
        stamp the end of prefill. `details=True` returns one `Generated` per question (text,
        prompt and new token counts) instead of the texts, so callers need not re-tokenize."""
        self.use_adapter("decoder_adapter")
        _, mask, embeds = self.prompt_inputs(questions, memories, expanded)
        out = self.decoder.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False,
                                    top_p=None, top_k=None, temperature=None,
                                    max_new_tokens=max_new_tokens,
                                    pad_token_id=self.tokenizer.pad_token_id,
                                    logits_processor=logits_processor)
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        if details:
            return [Generated(text, int(n), new_token_count(row, self.tokenizer.eos_token_id))
                    for text, n, row in zip(texts, mask.sum(dim=1).tolist(), out, strict=True)]
        return (texts, out) if return_ids else texts


@dataclass
class Generated:
    """One answer of ClaraModel.generate(details=True)."""

    text: str
    prompt_tokens: int  # the prompt the generator read (template, question, memory slots)
    new_tokens: int  # generated, up to and including the end-of-sequence token


def new_token_count(row: torch.Tensor, eos_token_id) -> int:
    """Tokens generated in one row of a batch: up to the first end-of-sequence token (rows that
    finished early are padded after it)."""
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    hit = torch.isin(row, torch.tensor(eos, device=row.device)).nonzero() if eos else row[:0]
    return int(hit[0, 0]) + 1 if len(hit) else int(len(row))


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def merged_trunk(decoder, adapter: str) -> nn.Module:
    """A copy of the transformer body with `adapter` merged into the linear weights.

    Inference-only bulk jobs then run plain matmuls instead of base + LoRA side paths;
    in fp32 the result equals the unmerged path to float noise (tested)."""
    from peft.tuners.lora import LoraLayer

    trunk = copy.deepcopy(decoder.get_decoder())
    for name, module in list(trunk.named_modules()):
        if isinstance(module, LoraLayer):
            if adapter in module.lora_A:
                module.merge(adapter_names=[adapter])
            parent = trunk.get_submodule(name.rsplit(".", 1)[0]) if "." in name else trunk
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    return trunk.eval()
