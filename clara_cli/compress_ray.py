"""`clara compress --ray`: the compression job as a Ray Data pipeline.

The driver does exactly what the single-process job does (compress.py) except the forward
passes: it takes the writer lock, lists the pending chunks in the same order, cuts the same
batches, and commits each returned batch as one shard plus a manifest swap. Model-holding
actors (one per GPU, else CPU actors) run `ClaraModel.compress` on whole batches with the same
`merged` choice, so the memory rows are the same bytes as the single-process path's.

Failures: a crashed actor is restarted by Ray and its batch retried (Ray Data task retries);
a killed driver loses at most the batches not yet committed, and a rerun continues with what
is still pending (the store's usual resumability).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from .checkpoint import load_model
from .compress import (
    CompressReport,
    add_memory,
    bind_store_model,
    copy_stored_duplicates,
    existing_memory_dtype,
    model_info,
    plan_compression,
    storage_dtype,
)
from .errors import ClaraError
from .model import ClaraModel, dtype_name
from .progress import notice, progress_bar
from .store import Store, memory_dtype_name

#: Test hook: an actor whose process sees this env var (a file path) crashes on its first batch
#: if the file does not exist yet, after creating it (so the restarted actor succeeds).
CRASH_ONCE_ENV = "CLARA_RAY_CRASH_ONCE"


class BatchCompressor:
    """A Ray Data actor: loads the model once, compresses one whole batch per row."""

    def __init__(self, spec: dict):
        threads = int(spec.get("threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        device = "cuda" if spec.get("gpu") else "cpu"
        self.model = load_model(spec["path"], device=device, dtype=spec["dtype"],
                                                base_model=spec.get("base_model"), attn=spec.get("attn", "auto"))
        if self.model.fingerprint != spec["fingerprint"]:
            raise ClaraError(f"a Ray worker loaded model {self.model.fingerprint}, the driver {spec['fingerprint']} "
                             "(is the checkpoint path the same on every node?)")
        self.batch_size, self.merged = int(spec["batch_size"]), bool(spec["merged"])

    def __call__(self, batch: dict) -> dict:
        marker = os.environ.get(CRASH_ONCE_ENV)
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # a worker dying mid-batch, as a node loss or an OOM kill would
        out_memory, out_shape = [], []
        for texts in batch["texts"]:
            memory = self.model.compress(json.loads(texts), batch_size=self.batch_size, merged=self.merged)
            memory = memory.detach().to("cpu", torch.float32).contiguous()
            out_memory.append(memory.numpy().tobytes())
            out_shape.append(json.dumps(list(memory.shape)))
        return {"batch": batch["batch"], "keys": batch["keys"], "memory": np.array(out_memory, dtype=object),
                "shape": np.array(out_shape, dtype=object)}


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the cluster at address; "auto" (or None): RAY_ADDRESS if set, else a fresh local
    cluster on this machine. (Ray's own "auto" also follows /tmp/ray's record of the last
    local cluster, and waits on it for minutes when that cluster is gone.)"""
    import ray

    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS") or None
    if address:
        from ray.exceptions import AuthenticationError

        try:
            ray.init(address=address, **kwargs)
        except AuthenticationError:
            # Ray's own text is a paragraph; the cause is almost always one of two settings.
            raise ClaraError(f"the Ray cluster at {address} refused our token: run with the cluster's token "
                             "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and RAY_AUTH_MODE=token), "
                             "or start the cluster with RAY_AUTH_MODE=disabled") from None
        except (ConnectionError, RuntimeError) as err:
            hint = ""
            if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                # A cluster with token authentication refuses us with only "Failed to connect".
                hint = (" (if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token in "
                        "RAY_AUTH_TOKEN or ~/.ray/auth_token)")
            raise ClaraError(f"cannot join the Ray cluster at {address}: "
                             f"{str(err).splitlines()[0][:160]}{hint}") from None
        return ray
    notice("starting a local Ray cluster (give --ray ADDRESS to use a running one)")
    ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return ray


def model_spec(model: ClaraModel, base_model: str | None = None) -> dict:
    """How a worker loads the driver's model."""
    return {"path": None if model.source == "default" else model.source, "base_model": base_model,
            "dtype": dtype_name(model.dtype), "attn": model.attn,
            "fingerprint": model.fingerprint}


def compress_store_ray(store: Store, model: ClaraModel, address: str | None = "auto", batch_size: int = 32,
                       memory_dtype: str | None = None, actors: int | None = None, progress: bool = True,
                       wait: bool = True, base_model: str | None = None) -> CompressReport:
    """Compress what is pending on a Ray cluster; one commit per batch, as compress_store."""
    t0 = time.perf_counter()
    with store.writer(wait=wait) as tx:
        dtype = storage_dtype(model, memory_dtype, existing_memory_dtype(tx.view))
        bind_store_model(tx, model_info(model))
        plan = plan_compression(tx.view)  # identical texts: compressed once, as compress_store
        copy_stored_duplicates(tx, plan, dtype)
        texts, groups = plan.texts, plan.groups
        keys = np.asarray([g[0] for g in groups], dtype=np.int64)  # one representative per text
        group_of = {int(g[0]): g for g in groups}
        if not texts:
            return CompressReport(plan.pending, 0, round(time.perf_counter() - t0, 3), memory_dtype_name(dtype),
                                  duplicates=plan.duplicates)
        ray = connect(address)
        from ray import data as ray_data

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = max(1, int(resources.get("CPU", 1)))
        n_actors = actors or (gpus if gpus else max(1, cpus // 2))
        cpus_per_actor = 1 if gpus else max(1, cpus // n_actors)
        spec = {**model_spec(model, base_model), "batch_size": batch_size, "gpu": bool(gpus),
                "merged": model.merge_pays_off(len(texts), batch_size),  # the single-process job's choice
                "threads": cpus_per_actor}
        items = [{"batch": b, "keys": keys[s:s + batch_size].astype("<i8").tobytes(),
                  "texts": json.dumps(texts[s:s + batch_size])}
                 for b, s in enumerate(range(0, len(texts), batch_size))]
        ds = ray_data.from_items(items, override_num_blocks=min(len(items), 10_000))
        out = ds.map_batches(BatchCompressor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                             batch_format="numpy", concurrency=n_actors, num_cpus=cpus_per_actor,
                             num_gpus=1 if gpus else 0)  # Ray Data restarts actors and retries their tasks
        done = 0
        with progress_bar(total=len(texts), desc="compress (ray)", unit="chunk", enabled=progress) as bar:
            for row in out.iter_rows():
                part = np.frombuffer(row["keys"], dtype="<i8").astype(np.int64)
                shape = json.loads(row["shape"])
                memory = torch.frombuffer(bytearray(row["memory"]), dtype=torch.float32).reshape(shape)
                members = [group_of[int(k)] for k in part]
                rows = torch.from_numpy(np.repeat(np.arange(len(part)), [len(m) for m in members]))
                add_memory(tx, np.concatenate(members), memory[rows], dtype)
                tx.commit()
                done += 1
                bar.update(len(rows))
    return CompressReport(compressed=plan.pending, batches=done, seconds=round(time.perf_counter() - t0, 3),
                          memory_dtype=memory_dtype_name(dtype), duplicates=plan.duplicates)
