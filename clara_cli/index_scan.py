"""Row statistics, the exact scan and the exact rerank over the full memory vectors, read
through the store's one memory reader (store.reader.MemoryReader: memory-mapped, each shard
checked before its first use); index.py builds the FAISS structures and searches with these.
The retrieval center, where the store's model has one, is subtracted before every cosine."""

from __future__ import annotations

import numpy as np
import torch

from .store.reader import MemoryReader


def _centered(x: torch.Tensor, center: np.ndarray | None) -> torch.Tensor:
    return x if center is None else x - torch.from_numpy(center)




def estimate_mu(mm: MemoryReader, rows: int = 8192, center: np.ndarray | None = None) -> np.ndarray:
    """Unit mean direction of the normalised rows (from the first blocks of every shard).
    Real memory shares one dominant direction (mean pairwise cosine ~0.96)."""
    acc, n = None, 0
    per_part = max(256, rows // max(1, len(mm.shards)))
    for _, mem, scales in mm.first_rows(per_part):
        x = torch.nn.functional.normalize(_centered(dequantize(mem, scales, mm.n_mem), center), dim=-1).sum(0)
        acc, n = (x if acc is None else acc + x), n + len(mem)
    if acc is None:
        return np.zeros(0, np.float32)
    return torch.nn.functional.normalize(acc, dim=0).numpy()


def row_stats(block: torch.Tensor, scales: torch.Tensor | None, n_mem: int, mu: np.ndarray,
              center: np.ndarray | None = None) -> np.ndarray:
    """[b, 2] fp32: each (centred) row's L2 norm and its dot with mu (one upcast pass; cached by
    flat indexes because on CPU it costs ~10x the bf16 dot products of a scan)."""
    x = _centered(dequantize(block, scales, n_mem), center)
    return torch.stack([torch.linalg.vector_norm(x, dim=1), x @ torch.from_numpy(mu)], 1).numpy()


def dequantize(block: torch.Tensor, scales: torch.Tensor | None, n_mem: int) -> torch.Tensor:
    """Rows [b, D] in fp32 (int8 rows times their per-token scales)."""
    if block.dtype == torch.bfloat16:  # bf16 -> fp32 is a 16-bit shift; numpy's is ~2x torch's on CPU
        bits = block.contiguous().view(torch.int16).numpy().view(np.uint16)
        return torch.from_numpy((bits.astype(np.uint32) << 16).view(np.float32))
    if scales is None:
        return block.float()
    b = block.shape[0]
    return (block.reshape(b, n_mem, -1).float() * scales.float()[:, :, None]).reshape(b, -1)


def block_scores(qn: torch.Tensor, block: torch.Tensor, scales: torch.Tensor | None, n_mem: int,
                 stats: torch.Tensor, mu: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Approximate cosines [Q, b] with the dot products in the block's dtype (bf16 on CPU uses
    AMX; int8 is upcast to bf16, exactly); the caller reranks the best in fp32.

    A bf16 product is also *rounded to bf16*: near cosine 0.99 that is +-0.002, more than the
    gaps between neighbours of real (anisotropic) memory. So the query's component along the
    shared direction mu goes through the cached fp32 row stats, and only the residual, whose
    dots are ~25x smaller and so ~25x finer in bf16, through the bf16 product.

    With a retrieval center c (stats then describe d - c): q.(d - c) = a mu.(d - c) + qr.d - qr.c,
    the last term one fp32 number per query."""
    a = qn @ mu
    qr = qn - a[:, None] * mu[None]
    if block.dtype == torch.int8:
        b = block.shape[0]
        m = block.reshape(b, n_mem, -1).to(torch.bfloat16)
        q = qr.reshape(qr.shape[0], n_mem, -1).to(torch.bfloat16)
        dots = (torch.einsum("qth,bth->qbt", q, m).float() * scales.float()[None]).sum(-1)
    else:
        dots = (qr.to(block.dtype) @ block.T).float()
    dots = dots + a[:, None] * stats[None, :, 1]
    if center is not None:
        dots = dots - (qr @ center)[:, None]
    return dots / stats[None, :, 0].clamp_min(1e-12)


def exact_rerank(mm: MemoryReader, qn: torch.Tensor, keys: np.ndarray, k: int,
                 center: np.ndarray | None = None) -> list[tuple[int, float]]:
    """fp32 cosine of one query against the full memory of the candidate keys: the exact
    answer among the candidates. (A GEMV and the row norms: on CPU, clara_kernels' cosine_topk
    falls back to torch with a normalised copy, which costs more for a few hundred rows.)"""
    if len(keys) == 0:
        return []
    rows = _centered(mm.gather(keys), center)
    scores = (rows @ qn) / torch.linalg.vector_norm(rows, dim=1).clamp_min(1e-12) / qn.norm().clamp_min(1e-12)
    s = scores.numpy()
    order = np.lexsort((keys, -s))[:k]  # equal scores (identical chunk texts share a memory): by key
    return [(int(keys[i]), float(s[i])) for i in order]


def scan_topk(mm: MemoryReader, qn: torch.Tensor, k: int, stats: np.ndarray, mu: np.ndarray,
              block_rows: int = 4096, center: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query (keys, approximate scores) of the best k rows over every live row; stats are
    row_stats in mm.keys order against mu (of rows less the center, where there is one)."""
    best_s = torch.full((qn.shape[0], 0), -2.0)
    best_k = np.zeros((qn.shape[0], 0), np.int64)
    mu_t = torch.from_numpy(mu)
    c_t = None if center is None else torch.from_numpy(center)
    for offset, keys, block, scales in mm.blocks(block_rows):
        sb = torch.from_numpy(stats[offset:offset + len(keys)])
        s = torch.cat([best_s, block_scores(qn, block, scales, mm.n_mem, sb, mu_t, c_t)], 1)
        allk = np.concatenate([best_k, np.broadcast_to(keys, (qn.shape[0], len(keys)))], 1)
        best_s, top = s.topk(min(k, s.shape[1]), dim=1)
        best_k = np.take_along_axis(allk, top.numpy(), 1)
    return [(best_k[i], best_s[i].numpy()) for i in range(qn.shape[0])]


def aligned_stats(mm: MemoryReader, mu: np.ndarray, known_keys: np.ndarray | None = None,
                  known_stats: np.ndarray | None = None, center: np.ndarray | None = None) -> np.ndarray:
    """row_stats in mm.keys order: from a flat index's file where it has the key (computed
    against the same mu), one upcast pass over the blocks that hold any other row."""
    out = np.full((mm.n, 2), np.nan, np.float32)
    if known_keys is not None and known_stats is not None and len(known_keys) == len(known_stats) \
            and len(known_keys):
        order = np.argsort(known_keys)
        pos = np.searchsorted(known_keys[order], mm.keys).clip(0, len(known_keys) - 1)
        hit = known_keys[order][pos] == mm.keys
        out[hit] = known_stats[order][pos[hit]]
    if np.isnan(out[:, 0]).any():
        for offset, keys, block, scales in mm.blocks():
            if np.isnan(out[offset:offset + len(keys), 0]).any():
                out[offset:offset + len(keys)] = row_stats(block, scales, mm.n_mem, mu, center)
    return out
