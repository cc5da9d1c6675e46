"""What checking memory shards costs the search (issue: the scan read shards after a size check
only). The one memory reader (clara_cli/store/reader.py) checks before it hands out a byte:

* the exact scan: each shard's sha256 against the manifest, once per shard and Store object
  (a process: `clara search` pays it per invocation, `clara serve` and the Python API once);
* row reads (rerank, ask): the per-row CRCs stored in the shard.

This measures, in one run on one synthetic store at the default model's shape (bf16 shards,
16 x 576 per chunk): a warm flat-scan query, the first query of a fresh process (which pays
the check), the sha256 of every shard alone, and the row-CRC alternative over every row.

    python benchmarks/search_check.py --rows 20000 --workdir /tmp/clara-check
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_scale import DIM, Generator, grow_store  # noqa: E402

from clara_cli.index import VectorSearch  # noqa: E402
from clara_cli.model import cpu_name  # noqa: E402
from clara_cli.store import Store  # noqa: E402
from clara_cli.store.durable import sha256_file  # noqa: E402
from clara_cli.store.memory import row_crcs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/clara-search-check"))
    ap.add_argument("--keep", action="store_true", help="keep the store for a rerun")
    args = ap.parse_args()

    root = args.workdir / "store"
    if not (root / "manifest.json").is_file():
        shutil.rmtree(args.workdir, ignore_errors=True)
        args.workdir.mkdir(parents=True)
        grow_store(Store.open(root, create=True), Generator(), 0, args.rows)
    g = torch.Generator().manual_seed(1)
    queries = torch.nn.functional.normalize(torch.randn(args.queries + 1, DIM, generator=g), dim=-1).numpy()

    # a fresh process's first query: the reader maps the shards and checks each one's sha256
    firsts, warm = [], []
    for _ in range(3):
        snap = Store.open(root).snapshot()
        t0 = time.perf_counter()
        search = VectorSearch(snap)
        search.search(queries[:1], 10)
        firsts.append(time.perf_counter() - t0)
        for q in queries[1:]:
            t0 = time.perf_counter()
            search.search(q[None], 10)
            warm.append(time.perf_counter() - t0)
        snap.close()

    snap = Store.open(root).snapshot()
    shards = snap.files("memory")
    t0 = time.perf_counter()
    for entry in shards:
        sha256_file(snap.data_path(entry["name"]))
    sha_s = time.perf_counter() - t0
    reader = snap.memory_reader(checked=False)
    t0 = time.perf_counter()
    for _, keys, block, _ in reader.blocks():
        row_crcs(keys, block)
    crc_s = time.perf_counter() - t0
    total_bytes = sum(int(e["bytes"]) for e in shards)
    snap.close()

    out = {
        "cpu": cpu_name(), "threads": torch.get_num_threads(), "rows": args.rows, "shards": len(shards),
        "shard_mb": round(total_bytes / 1e6, 1), "memory_dtype": "bf16",
        "warm_query_ms_p50": round(float(np.median(warm)) * 1000, 2),
        "first_query_ms_median": round(float(np.median(firsts)) * 1000, 1),
        "sha256_all_shards_ms": round(sha_s * 1000, 1), "sha256_gb_s": round(total_bytes / sha_s / 1e9, 2),
        "row_crc_all_rows_ms": round(crc_s * 1000, 1),
    }
    out["check_over_warm_query"] = round(out["sha256_all_shards_ms"] / out["warm_query_ms_p50"], 2)
    out["row_crc_over_sha256"] = round(crc_s / sha_s, 2)
    print(json.dumps(out))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
