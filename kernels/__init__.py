"""clara_kernels: fused Triton kernels for CLaRa compression and retrieval.

Every entry point has one Python API and three backends (see ``backend()``):
Triton on CUDA tensors, the Triton interpreter on CPU tensors when
``TRITON_INTERPRET=1``, and a torch reference otherwise. Triton itself is imported
only when a kernel first runs, so this package imports on machines without it.
"""

from .attention import flash_attn_varlen
from .dispatch import backend
from .hf import IMPLEMENTATION_NAME, clara_attention_forward, register_transformers_attention
from .packing import (
    cu_seqlens_from_lengths,
    cu_seqlens_from_position_ids,
    pack_position_ids,
    tail_indices,
)
from .reference import (
    attention_reference,
    cosine_topk_torch,
    matmul_attention_backward,
    varlen_attention_torch,
)
from .scoring import cosine_topk

__all__ = [
    "IMPLEMENTATION_NAME",
    "attention_reference",
    "backend",
    "clara_attention_forward",
    "cosine_topk",
    "cosine_topk_torch",
    "cu_seqlens_from_lengths",
    "cu_seqlens_from_position_ids",
    "flash_attn_varlen",
    "pack_position_ids",
    "register_transformers_attention",
    "tail_indices",
    "matmul_attention_backward",
    "varlen_attention_torch",
]
