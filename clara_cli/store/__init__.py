"""The store: one directory of immutable data files plus a manifest that is swapped atomically.

Modules, kept apart the way Lance and Delta Lake keep protocol, log and readers apart
(docs/design.md §3, §4):

- `protocol`: layout, schemas, the manifest and its rules
- `store`: `Store` (open, snapshot, writer, gc)
- `snapshot`: `Snapshot`, the reads of one committed state
- `transaction`: `Transaction`, the writer's changes and the manifest swap
- `lock`: the one-writer lock and the readers' leases
- `keys`: chunk ids and their int64 keys
- `memory`: memory shards (int8 codec, file format, checked row reads)
- `durable`: fsync, atomic files and the atomic folder swap
- `verify`: `clara verify`
- `faults`: fault injection for the crash tests
"""

from .durable import fsync_path, replace_folder, staged_folder
from .faults import configure_faults, fault_point, faults_enabled, set_fault_stage
from .keys import chunk_id_from_key, chunk_ids_to_keys, make_chunk_id
from .memory import MEMORY_DTYPES, dequantize_int8, memory_dtype_name, quantize_int8
from .protocol import (
    CHUNK_SCHEMA,
    DATA_DIR,
    DEFAULT_GRACE_SECONDS,
    DELETION_SCHEMA,
    DOCUMENT_SCHEMA,
    FORMAT,
    FORMAT_VERSION,
    HISTORY_DIR,
    HISTORY_KEEP,
    HOUSEKEEP_EVERY,
    LOCK,
    MANIFEST,
    MERGE_FANOUT,
    READERS_DIR,
)
from .snapshot import Snapshot
from .store import Store
from .transaction import Transaction
from .verify import VerifyReport, check_store, indexed_keys

__all__ = [
    "CHUNK_SCHEMA", "DATA_DIR", "DEFAULT_GRACE_SECONDS", "DELETION_SCHEMA", "DOCUMENT_SCHEMA", "FORMAT",
    "FORMAT_VERSION", "HISTORY_DIR", "HISTORY_KEEP", "HOUSEKEEP_EVERY", "LOCK", "MANIFEST", "MEMORY_DTYPES", "memory_dtype_name",
    "MERGE_FANOUT", "READERS_DIR", "Snapshot", "Store", "Transaction", "VerifyReport", "check_store",
    "chunk_id_from_key", "chunk_ids_to_keys", "configure_faults", "dequantize_int8", "fault_point",
    "faults_enabled", "fsync_path", "indexed_keys", "make_chunk_id", "quantize_int8", "replace_folder",
    "set_fault_stage", "staged_folder",
]
