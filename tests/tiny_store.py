"""A small store compressed and indexed with the tiny model, for the server and API tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sample_docs import write_corpus


def build_tiny_store(root: Path, tiny_model) -> Path:
    """The four sample documents ingested, compressed (fp32) and indexed (vector + BM25) at root/store."""
    from clara_cli.compress import compress_store, model_info
    from clara_cli.index import update_index
    from clara_cli.ingest import ingest
    from clara_cli.store import Store

    corpus = write_corpus(root / "corpus")
    store = Store.open(root / "store", create=True)
    ingest(store, [str(corpus)], tiny_model.tokenizer, max_tokens=tiny_model.config.doc_max_length,
           model_info=model_info(tiny_model), progress=False)
    compress_store(store, tiny_model, progress=False)
    update_index(store, progress=False)
    return root / "store"


def clara_bin() -> str:
    exe = Path(sys.executable).parent / "clara"
    return str(exe) if exe.exists() else "clara"


def run_clara(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed `clara` as a user runs it (one thread: the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([clara_bin(), *args], capture_output=True, text=True, input=input, env=env,
                          timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
