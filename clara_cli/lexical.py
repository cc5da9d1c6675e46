"""BM25 kept in the store, incrementally: the lexical half of hybrid retrieval.

Scoring is retrievers.BM25Retriever's (bm25s, Lucene BM25, English stopwords), so `clara eval`'s
BM25 baseline and the store's BM25 rank alike. BM25 weights depend on corpus-wide statistics
(idf, mean length), so an update cannot patch the score matrix in place; what is expensive is
tokenising, and that is incremental: each update tokenises only the new chunks into a token-id
segment (Parquet; ids from a vocabulary that only grows), then rebuilds the sparse score matrix
from the stored ids of the live chunks (vectorised, no text read) and stores it for queries.

Words are bm25s' (runs of two or more word characters, lowercased), except that Chinese,
Japanese and Korean text, written without spaces between words, is split into overlapping
character pairs ("北京大学" -> 北京 京大 大学), the usual indexing of CJK text without a
dictionary. The record names its tokenizer version; an index built by an older one is
rebuilt by the next `clara index`, and read with its own tokenizer until then.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CorruptDataError
from .progress import notice
from .retrievers import BM25Retriever
from .store import Snapshot

MAX_SEGMENTS = 8  # token segments are merged into one past this many
TOKENIZER_VERSION = 2  # 1: bm25s' default words (a CJK run was one word); 2: CJK character pairs

# Kana, CJK ideographs (with extensions and compatibility forms), Hangul syllables.
_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_WORDS = re.compile(f"[{_CJK}]+|(?:(?![{_CJK}])\\w){{2,}}")


def split_words(text: str) -> list[str]:
    """bm25s' words (2+ word characters; text arrives lowercased), with each run of CJK
    characters as its overlapping character pairs, or the character itself when alone."""
    out: list[str] = []
    for word in _WORDS.findall(text):
        if _CJK_CHAR.match(word):
            out.extend([word] if len(word) == 1 else [word[i:i + 2] for i in range(len(word) - 1)])
        else:
            out.append(word)
    return out


def has_cjk(text: str) -> bool:
    return _CJK_CHAR.search(text) is not None


def bm25_tokenizer(word_to_id: dict | None = None, version: int = TOKENIZER_VERSION):
    """bm25s' Tokenizer with English stopwords (the store's BM25 and `clara eval`'s baseline);
    version 1 is the tokenizer of indexes built before CJK support."""
    from bm25s.tokenization import Tokenizer

    tok = Tokenizer(stopwords="en", splitter=split_words) if version >= 2 else Tokenizer(stopwords="en")
    if word_to_id:
        tok.word_to_id = dict(word_to_id)
    return tok


def _digest(keys: np.ndarray) -> str:
    return hashlib.sha1(np.sort(keys).astype("<i8").tobytes()).hexdigest()[:16]


def _read_segment(view: Snapshot, name: str) -> tuple[np.ndarray, list[list[int]]]:
    path = view.check_file(name)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise CorruptDataError(f"{path}: cannot read BM25 token segment ({str(err).splitlines()[0]})") from None
    return table.column("key").to_numpy(), table.column("ids").to_pylist()


def _write_json(tx, prefix: str, obj) -> str:
    path = tx.new_data_path(prefix, ".json")
    path.write_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    return path.name


def update_bm25(tx, old: dict | None, progress: bool = False) -> dict | None:
    """Tokenise the new live chunks, rebuild the score matrix; the old record when nothing changed."""
    import bm25s

    view = tx.view
    live = np.asarray(view.chunk_keys(), dtype=np.int64)
    if len(live) == 0:
        return None
    old = old or {}
    if old and old.get("tokenizer", 1) != TOKENIZER_VERSION:
        notice("BM25 index: rebuilding it with the current tokenizer (Chinese, Japanese and Korean text "
               "is now split into character pairs)")
        old = {}
    if old.get("digest") == _digest(live):
        return old
    segments = list(old.get("segments", []))
    parts = [_read_segment(view, s) for s in segments]
    covered = np.concatenate([k for k, _ in parts]) if parts else np.zeros(0, np.int64)
    new = live[~np.isin(live, covered)]
    word_to_id = json.loads(view.check_file(old["vocab"]).read_text()) if old.get("vocab") else {}
    vocab_name = old.get("vocab")
    if len(new):
        tok = bm25_tokenizer(word_to_id)
        texts = view.lookup_chunks(new, ["text"]).column("text").to_pylist()
        ids = tok.tokenize(texts, update_vocab=True, show_progress=False, return_as="ids")
        parts.append((new, ids))
        if len(tok.word_to_id) != len(word_to_id) or vocab_name is None:
            word_to_id = tok.word_to_id
            vocab_name = _write_json(tx, "bm25vocab", word_to_id)
        segments.append(_write_tokens(tx, new, ids))
    # Live rows, first segment holding a key wins (a chunk id names one content).
    keys = np.concatenate([k for k, _ in parts])
    ids_all = [row for _, rows in parts for row in rows]
    first = np.unique(keys, return_index=True)[1]
    keep = np.sort(first[np.isin(keys[first], live)])
    keys, rows = keys[keep], [ids_all[i] for i in keep]
    if len(segments) > MAX_SEGMENTS:
        segments = [_write_tokens(tx, keys, rows)]
    bm25 = bm25s.BM25()
    bm25.index(bm25s.tokenization.Tokenized(ids=rows, vocab=word_to_id), show_progress=False)
    path = tx.new_data_path("bm25", ".npz")
    with tempfile.TemporaryDirectory() as tmp:  # bm25s' own format, packed into one immutable file
        bm25.save(tmp)
        files = {p.name: np.frombuffer(p.read_bytes(), np.uint8) for p in Path(tmp).iterdir()}
    with open(path, "wb") as f:
        np.savez(f, keys=keys, **{f"bm25s/{name}": data for name, data in files.items()})
    return {"segments": segments, "vocab": vocab_name, "matrix": path.name, "rows": int(len(keys)),
            "digest": _digest(live), "tokenizer": TOKENIZER_VERSION, "files": [*segments, vocab_name, path.name]}


def _write_tokens(tx, keys: np.ndarray, ids: list[list[int]]) -> str:
    path = tx.new_data_path("bm25tok", ".parquet")
    pq.write_table(pa.table({"key": pa.array(keys, pa.int64()), "ids": pa.array(ids, pa.list_(pa.int32()))}),
                   path, compression="zstd")
    return path.name


class StoreBM25(BM25Retriever):
    """BM25Retriever over the store's stored score matrix; rows map to chunk keys."""

    def __init__(self, tokenizer, bm25, keys: np.ndarray, version: int = TOKENIZER_VERSION):  # noqa: D107
        self.tokenizer, self.bm25, self.keys, self.n = tokenizer, bm25, keys, len(keys)
        self.version = version  # the tokenizer the index was built with (load()/over())

    @classmethod
    def load(cls, snapshot: Snapshot) -> StoreBM25 | None:
        """The snapshot's BM25 index, or None when `clara index` has not built one."""
        import bm25s

        record = (snapshot.manifest.get("index") or {}).get("bm25")
        if not record:
            return None
        try:
            word_to_id = json.loads(snapshot.check_file(record["vocab"]).read_text())
            with np.load(snapshot.check_file(record["matrix"])) as z, tempfile.TemporaryDirectory() as tmp:
                keys = z["keys"].astype(np.int64)
                for name in z.files:
                    if name.startswith("bm25s/"):
                        (Path(tmp) / name.split("/", 1)[1]).write_bytes(z[name].tobytes())
                bm25 = bm25s.BM25.load(tmp)
        except (OSError, ValueError, KeyError) as err:
            raise CorruptDataError(f"store {snapshot.root}: cannot read the BM25 index ({err})") from None
        version = int(record.get("tokenizer", 1))
        return cls(bm25_tokenizer(word_to_id, version), bm25, keys, version)

    @classmethod
    def over(cls, snapshot: Snapshot) -> StoreBM25:
        """Built in memory from the snapshot's chunks (no BM25 in the store yet)."""
        notice("the store has no BM25 index yet: building one in memory (run `clara index`)")
        chunks = snapshot.chunks(columns=["chunk_id", "text"])
        base = BM25Retriever(chunks.column("text").to_pylist())
        return cls(base.tokenizer, base.bm25, np.asarray(snapshot.chunk_keys(), dtype=np.int64))

    def search_keys(self, queries: list[str], k: int, live: np.ndarray | None = None
                    ) -> list[list[tuple[int, float]]]:
        """(key, BM25 score) per query, best first; rows not in `live` and rows sharing no term
        with the query (score 0: their order is arbitrary, and would earn rank credit in RRF)
        are dropped."""
        if self.version < TOKENIZER_VERSION and any(has_cjk(q) for q in queries):
            notice("the store's BM25 index predates Chinese/Japanese/Korean word splitting: run `clara index` "
                   "to rebuild it")
        extra = 0 if live is None else int((~np.isin(self.keys, live)).sum())
        alive = set(live.tolist()) if extra else None
        out = []
        for ranked in self.search(queries, k + extra):
            hits = [(int(self.keys[r]), s) for r, s in ranked if s > 0]  # 0: no query term in it
            out.append([h for h in hits if alive is None or h[0] in alive][:k])
        return out
