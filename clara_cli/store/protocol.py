"""The store's format: file layout, table schemas, the manifest and its rules (docs/design.md §3).

Layout::

    <root>/manifest.json              the current state; replaced with os.replace, never edited
    <root>/manifests/v00000007.json   a copy of every committed manifest (cheap history)
    <root>/data/                      immutable Parquet tables, safetensors shards, index files
    <root>/LOCK                       flock'ed by the one writer; holds pid/host/time for messages
    <root>/readers/v00000007          a reader of version 7 holds a shared flock on it (its lease)

Removing documents never rewrites a file: a small deletion table is added instead (Delta-Lake
style), and every data file carries a sequence number so that a deletion only hides rows
written *before* it (a changed document is removed and re-added with the same id).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa

from ..errors import ClaraError, CorruptDataError, ModelMismatchError

FORMAT = "clara-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "LOCK"
DATA_DIR = "data"
HISTORY_DIR = "manifests"
READERS_DIR = "readers"
DEFAULT_GRACE_SECONDS = 600.0
HISTORY_KEEP = 100  # history copies kept beyond the grace period (a compress run commits per batch)
COMPACT_SHARD_BYTES = 256 << 20  # compaction writes memory shards of at most this size
# Every commit rewrites the manifest; a compress run adds one shard per batch. Merging MERGE_FANOUT
# small shards of one tier into one of the next keeps the manifest O(log rows) long during a run.
MERGE_FANOUT = 8
HOUSEKEEP_EVERY = 64  # commits between clean-ups of lease files and history copies inside one writer

DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("content_hash", pa.string()),
    ("n_chars", pa.int64()),
    ("metadata", pa.string()),
    ("ingested_at", pa.float64()),
])
CHUNK_SCHEMA = pa.schema([
    ("chunk_id", pa.string()),
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("chunk_index", pa.int32()),
    ("start", pa.int64()),
    ("end", pa.int64()),
    ("text", pa.string()),
    ("content_hash", pa.string()),
    ("n_tokens", pa.int32()),
])
# One row per removed id; `kind` is "document" or "chunk". A deletion file hides matching rows
# of every file with a smaller sequence number (see module docstring).
DELETION_SCHEMA = pa.schema([("kind", pa.string()), ("id", pa.string())])
TABLE_KINDS = ("documents", "chunks", "deletions")


def empty_manifest() -> dict:
    """Version 0: no files, no model, no index."""
    now = time.time()
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": 0, "created_at": now,
            "committed_at": now, "next_seq": 1, "model": None, "index": None, "files": []}


def read_manifest(root: Path, path: Path | None = None) -> dict:
    """The manifest at path (default: the current one), refused if damaged or of a newer format."""
    path = path or root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ClaraError(f"no store at {root} (run `clara ingest` first)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptDataError(f"{path}: manifest does not parse ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptDataError(f"{path}: not a clara store manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ClaraError(f"store {root} has format version {manifest['format_version']}; "
                         f"this clara reads up to {FORMAT_VERSION} (upgrade clara)")
    return manifest


def history_path(root: Path, version: int) -> Path:
    """Where the copy of a committed manifest lives."""
    return root / HISTORY_DIR / f"v{version:08d}.json"


def model_mismatch(root: Path, bound: dict, info: dict) -> ModelMismatchError:
    """The error for a store bound to one model and used with another."""
    return ModelMismatchError(
        f"store {root} is bound to model {bound.get('fingerprint')} ({bound.get('spec', '?')}), "
        f"not {info.get('fingerprint')} ({info.get('spec', '?')}); pass that model with --model, or "
        f"recompress the store under this one: clara --store {root} compress --recompress")


def index_files(info: dict) -> list[str]:
    """The data files an index description names (its main file and any others)."""
    names = [info["file"]] if info.get("file") else []
    names += [n for n in info.get("files", []) if isinstance(n, str)]
    return names
