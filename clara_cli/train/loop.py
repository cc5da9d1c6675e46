"""The resumable trainer behind `clara train`: one stage, one output folder.

OUT is always a complete model in our format (`checkpoint.load_model(OUT)` works at any
moment) plus what resuming needs:

    OUT/clara.json, adapters-*.safetensors, token_rows.safetensors   the model (LoRA in fp32)
    OUT/trainer.pt        optimizer, scheduler, RNG states (python, numpy, torch), fp32 <MEM*> rows
    OUT/train_state.json  step, data position, settings, data digest, loss history (with
                          each step's wall seconds and tokens), done

Every checkpoint is written to a fresh temporary folder beside OUT and swapped in by
rename (OUT -> .OUT.prev, temp -> OUT), so `kill -9` at any moment leaves either the old
or the new checkpoint; rerunning the same command continues from it, and a finished run
does no work. The data order is a seeded permutation per epoch, so the position is one
integer: how many examples the run has consumed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import ClaraError, UsageError
from ..model import ClaraConfig, ClaraModel, device_name, dtype_name, resolve_device, resolve_dtype
from ..progress import notice, progress_bar
from ..store.durable import staged_folder
from .allocator import allocator_advice
from .data import STAGES, drop_dev_documents, file_digest, held_out_guard, read_records
from .stages import (
    ONE_PASS_STAGES,
    Trainable,
    choose_docs,
    compile_layers,
    compile_pays_off,
    cosine_with_min_lr,
    lora_to_fp32,
    prepare_adapters,
    trainer_speedups,
)

STATE_FORMAT = "clara-train/1"
# Paper / official-code hyper-parameters per stage. The official stage 3 runs transformers'
# "constant" schedule, which has no warmup.
STAGE_DEFAULTS = {
    "scp": {"lr": 1e-4, "schedule": "cosine", "warmup_ratio": 0.03},
    "instruct": {"lr": 1e-4, "schedule": "cosine", "warmup_ratio": 0.03},
    "e2e": {"lr": 5e-6, "schedule": "constant", "warmup_ratio": 0.0},
    # Ours (docs/TRAINING.md, "Retrieval"): the query reasoner alone, contrastive, frozen memories.
    "retrieval": {"lr": 2e-4, "schedule": "cosine", "warmup_ratio": 0.03},
    # Ours (docs/TRAINING.md, "Generator"): the decoder alone on frozen memories, mixed prompts.
    "generator": {"lr": 1e-4, "schedule": "cosine", "warmup_ratio": 0.03},
}
# Settings that may change between a run and its resumption (they do not change the result).
VOLATILE = ("out", "save_every", "keep_every", "device", "progress", "pack", "one_pass", "compile")


@dataclass
class TrainConfig:
    """Everything `clara train` takes; None means the stage's default (STAGE_DEFAULTS)."""

    stage: str
    data: str
    out: str
    init_from: str | None = None     # checkpoint to start from (a previous stage's OUT, or Apple's format)
    base_model: str | None = None    # fresh start on another base LM (default: SmolLM2-135M-Instruct)
    doc_max_length: int = 256        # fresh starts only
    compr_rate: int = 16             # fresh starts only
    lora_r: int = 16                 # fresh starts only: LoRA rank of every adapter (alpha 2r)
    steps: int | None = None         # optimizer steps; default: epochs over the data
    epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float | None = None
    min_lr_ratio: float = 0.1        # cosine ends at lr * 0.1 (official cosine_with_min_lr)
    warmup_ratio: float | None = None
    schedule: str | None = None      # cosine | constant
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mse_weight: float = 0.1
    top_k: int = 5                   # documents per question (instruct: read; e2e: selected)
    temperature: float = 0.02        # e2e differentiable top-k
    tau: float = 0.05                # retrieval: InfoNCE temperature over the whole document pool
    query_word_dropout: float = 0.0  # retrieval: drop each question word with this probability
    expand_rate: float = 0.0         # generator: share of examples whose top document is read as raw text
    dropout: bool = True             # LoRA dropout 0.1 as the paper; off is faster
    autocast: bool | None = None     # LoRA side paths in the compute dtype too (default: when not fp32)
    pack: bool = True                # sequences packed without padding (False: padded batches, as before)
    one_pass: bool = True            # packed, all stages but retrieval: a step's grad_accum micro-batches in one forward pass
    compile: bool | None = None      # torch.compile the decoder blocks (None: when the run is long enough)
    max_length: int = 1024           # generator prompt + target tokens
    save_every: int = 100
    keep_every: int | None = None    # also keep the model of every Nth step in OUT-steps/step-N
    dtype: str = "auto"
    device: str = "auto"
    seed: int = 0
    max_examples: int | None = None
    exclude_heldout: bool = True     # drop records whose documents are held-out Wikipedia paragraphs
    exclude_dev: bool = True         # leave the development split (corpora.is_dev) out of every stage

    def resolved(self) -> TrainConfig:
        if self.stage not in STAGES:
            raise UsageError(f"unknown stage {self.stage!r} (use {', '.join(STAGES)})")
        out = TrainConfig(**asdict(self))
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        if out.schedule not in ("cosine", "constant"):
            raise UsageError(f"unknown schedule {out.schedule!r} (use cosine or constant)")
        if min(out.batch_size, out.grad_accum, out.save_every, out.top_k) < 1 or (out.steps is not None and out.steps < 1):
            raise UsageError("--steps, --batch-size, --grad-accum, --save-every and --top-k must be at least 1")
        if out.keep_every is not None and out.keep_every < 1:
            raise UsageError("--keep-every must be at least 1")
        if out.steps is None and out.epochs <= 0:
            raise UsageError("--epochs must be positive")
        out.data = str(Path(out.data).resolve())
        out.init_from = str(Path(out.init_from).resolve()) if out.init_from not in (None, "default") else out.init_from
        return out

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in VOLATILE}


@dataclass
class TrainResult:
    stage: str
    out: str
    step: int
    total_steps: int
    done: bool
    examples_seen: int
    records: int
    dropped_heldout: int
    epochs_done: float
    loss_first: float | None
    loss_last: float | None
    seconds: float
    examples_per_s: float
    tokens_per_s: float
    resumed_from: int
    fingerprint: str
    dtype: str
    machine: str  # the CPU's or GPU's name: the speeds above are this machine's in this dtype
    history: list = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


# ---------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, progress: bool = True, stop_after: int | None = None,
          stop_at: int | None = None) -> TrainResult:
    """Run (or resume, or skip when finished) one training stage; returns what it did.

    stop_after: stop (with a checkpoint) after that many optimizer steps in this call, as an
    interruption would; the next call resumes. stop_at: the same, at that global step."""
    cfg = cfg.resolved()
    records = read_records(cfg.data, cfg.stage, cfg.max_examples)
    dropped = 0
    if cfg.exclude_heldout:
        records, dropped = held_out_guard().filter(records)
        if dropped:
            notice(f"dropped {dropped} records whose documents are held-out Wikipedia paragraphs")
        if not records:
            raise UsageError(f"{cfg.data}: every record uses held-out documents; nothing to train on")
    if cfg.exclude_dev:
        records, dropped_dev = drop_dev_documents(records)
        if dropped_dev:
            notice(f"left out {dropped_dev} records about a development-split paragraph")
        if not records:
            raise UsageError(f"{cfg.data}: every record is about a development-split paragraph")
    digest = file_digest(cfg.data)
    n = len(records)
    total = cfg.steps or max(1, math.ceil(cfg.epochs * n / (cfg.batch_size * cfg.grad_accum)))

    out = Path(cfg.out).expanduser().resolve()
    with _lock(out):
        _recover(out)
        state = _read_state(out)
        if state is not None:
            _check_same_run(state, cfg, digest)
            if state["done"]:
                notice(f"{out} already holds the finished {cfg.stage} run ({state['step']} steps); nothing to do")
                return _result(cfg, out, state, records=n, dropped=dropped, seconds=0.0, examples=0, tokens=0,
                               resumed_from=state["step"])
            if stop_at is not None and state["step"] >= stop_at:
                notice(f"{out} is at step {state['step']}/{total} (stop at {stop_at}); nothing to do")
                return _result(cfg, out, state, records=n, dropped=dropped, seconds=0.0, examples=0, tokens=0,
                               resumed_from=state["step"])
        return _run(cfg, out, records, digest, total, state, dropped, progress, stop_after, stop_at)


def _run(cfg: TrainConfig, out: Path, records: list, digest: str, total: int, state: dict | None,
         dropped: int, progress: bool, stop_after: int | None, stop_at: int | None = None) -> TrainResult:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu" and (advice := allocator_advice()):
        notice(advice)
    resuming = state is not None
    model = _load_start_model(cfg, out if resuming else None, device, dtype)
    prepare_adapters(model, cfg.stage, fresh_start=not resuming, seed=cfg.seed)
    model.decoder.to(device)
    model.set_attention("auto")  # Triton varlen attention on CUDA (inference passes; training takes SDPA)
    model.decoder.train(cfg.dropout)  # train mode only switches LoRA dropout on
    autocast = dtype != torch.float32 if cfg.autocast is None else cfg.autocast
    steps_ahead = total - (state["step"] if resuming else 0)
    compiled = bool(cfg.compile or (cfg.compile is None and compile_pays_off(model, device, steps_ahead)))
    if compiled:
        compile_layers(model, fall_back=cfg.compile is None)
    tm = Trainable(model, cfg.stage, autocast=autocast, packed=cfg.pack,
                   **trainer_speedups(model, device, dtype, compiled))
    one_pass = cfg.one_pass and cfg.pack and cfg.stage in ONE_PASS_STAGES
    params = tm.parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.weight_decay)
    warmup = math.ceil(total * cfg.warmup_ratio)
    if cfg.schedule == "cosine":
        def mult(s: int) -> float:
            return cosine_with_min_lr(s, total, warmup, cfg.min_lr_ratio)
    else:
        def mult(s: int) -> float:
            return min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, mult)

    if resuming:
        saved = torch.load(out / "trainer.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if tm.mem_rows is not None:
            tm.mem_rows.data.copy_(saved["mem_rows"].to(tm.mem_rows.device))
        _set_rng(saved["rng"])
        step, consumed, history = state["step"], state["consumed"], state["history"]
        elapsed_before = state.get("seconds", 0.0)
        notice(f"resuming {cfg.stage} at step {step}/{total} from {out}")
    else:
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        step, consumed, history, elapsed_before = 0, 0, [], 0.0

    if cfg.stage in ("e2e", "retrieval", "generator"):  # frozen compressor: every candidate compressed once
        docs = [d for r in records for d in (choose_docs(r, cfg.top_k) if cfg.stage == "generator" else r.docs)]
        _cache_memories(tm, docs, out, progress)
    if cfg.stage == "retrieval":
        tm.build_pool(center=model.retrieval_center is None)

    resumed_from = step
    t0, run_examples, run_tokens = time.perf_counter(), 0, 0
    bar = progress_bar(total=total, desc=f"train {cfg.stage}", unit="step", enabled=progress)
    bar.update(step)
    order = _Order(len(records), cfg.seed)
    try:
        while step < total:
            step_start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            agg: dict[str, float] = {"loss": 0.0, "lm": 0.0, "mse": 0.0}
            hits = positives = step_tokens = 0
            groups = []  # the step's micro-batches: (records, [(epoch, index)])
            for _ in range(cfg.grad_accum):
                batch = [order.at(consumed + j) for j in range(cfg.batch_size)]
                consumed += cfg.batch_size
                groups.append(([records[i] for _, i in batch], batch))
            for stats in tm.backward_step(groups, cfg, one_pass):
                for key in agg:
                    agg[key] += getattr(stats, key) / cfg.grad_accum
                hits, positives = hits + stats.hits, positives + stats.positives
                run_examples += stats.examples
                run_tokens += stats.tokens
                step_tokens += stats.tokens
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            step += 1
            rec = {"step": step, **{k: round(v, 5) for k, v in agg.items()}, "lr": lr,
                   "grad_norm": round(float(grad_norm), 4),
                   "seconds": round(time.perf_counter() - step_start, 3),  # wall time of the step
                   "tokens": step_tokens}  # its tokens: tokens/s of any stretch of a run
            if positives:
                rec["recall"] = round(hits / positives, 4)
            history.append(rec)
            seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{agg['loss']:.3f}", ex_s=f"{run_examples / seconds:.2f}")
            stopping = ((stop_after is not None and step - resumed_from >= stop_after)
                        or (stop_at is not None and step >= stop_at))
            keep = cfg.keep_every is not None and step % cfg.keep_every == 0
            if step % cfg.save_every == 0 or step == total or stopping or keep:
                _save_checkpoint(tm, out, cfg, digest, total, step, consumed, history, opt, sched,
                                 done=step == total, seconds=elapsed_before + seconds)
                if keep:
                    _keep_step(out, step)
                if progress and not sys.stderr.isatty():  # no bar in logs (nohup, cron): a line per checkpoint
                    notice(f"train {cfg.stage}: step {step}/{total}, loss {agg['loss']:.3f}, "
                           f"{run_examples / seconds:.2f} examples/s, checkpoint saved")
            if stopping:
                break
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if step >= total:
        _memories_file(out).unlink(missing_ok=True)  # finished: nothing will resume
    final = _read_state(out) or {"step": step, "consumed": consumed, "history": history, "done": False,
                                 "fingerprint": model.fingerprint, "dtype": str(dtype).replace("torch.", "")}
    return _result(cfg, out, final, records=len(records), dropped=dropped, seconds=seconds,
                   examples=run_examples, tokens=run_tokens, resumed_from=resumed_from)


def _memories_file(out: Path) -> Path:
    return out.with_name(f".{out.name}.memories.safetensors")


def _cache_memories(tm: Trainable, docs: list[str], out: Path, progress: bool) -> None:
    """The frozen compressor's memories of the stage's documents, in one deterministic pass,
    kept beside OUT until the run finishes, so that a resumed run does not compress them again
    (minutes on a CPU). The file is used when it holds the same documents and the compressor
    still gives the memory of the first document alone that it gave when the file was written
    (to bf16 noise); otherwise it is rewritten. The probe is compared with a probe, not with the
    bulk pass's row: the bulk pass runs LoRA merged into bf16 weights, which rounds differently
    (several percent apart in bf16 on the default model)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    unique = list(dict.fromkeys(docs))
    key = hashlib.sha256("\0".join(unique).encode()).hexdigest()
    path = _memories_file(out)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                same = (f.metadata() or {}).get("docs_sha256") == key and "probe" in f.keys()
                mem, saved_probe = (f.get_tensor("memory"), f.get_tensor("probe")) if same else (None, None)
        except Exception:  # a damaged file is only a cache: compress again
            mem = saved_probe = None
        if mem is not None and len(mem) == len(unique):
            probe = _probe_memory(tm, unique[0])
            if (probe - saved_probe.float()).norm() <= 0.02 * saved_probe.float().norm():
                cached = mem.to(tm.model.device, tm.model.dtype)
                tm.doc_cache = dict(zip(unique, cached, strict=True))
                notice(f"reusing the memories of {len(unique)} documents from {path.name}")
                return
    bar = progress_bar(total=len(unique), desc="compressing candidates", unit="doc", enabled=progress)
    tm.cache_documents(unique, progress=bar.update)
    bar.close()
    tmp = path.with_name(path.name + ".tmp")
    save_file({"memory": torch.stack([tm.doc_cache[t] for t in unique]).cpu().contiguous(),
               "probe": _probe_memory(tm, unique[0]).contiguous()}, str(tmp),
              metadata={"docs_sha256": key})
    os.replace(tmp, path)


def _probe_memory(tm: Trainable, doc: str) -> torch.Tensor:
    """fp32 [n_mem, h] memory of `doc` compressed alone, leaving the trainer's cache as it was
    (its order too: the retrieval pool and its center are built in that order)."""
    cache, tm.doc_cache = tm.doc_cache, {}
    try:
        tm.cache_documents([doc])
        return tm.doc_cache[doc].float().cpu()
    finally:
        tm.doc_cache = cache


class _Order:
    """The example at global position c: epoch c // N, a seeded permutation of the N records."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict[int, list[int]] = {}

    def at(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return epoch, self._cache[epoch][offset]


# ---------------------------------------------------------------------- models
def _load_start_model(cfg: TrainConfig, resume_dir: Path | None, device: torch.device, dtype: torch.dtype) -> ClaraModel:
    """The model a run starts from: its own checkpoint when resuming, else --init-from, else fresh
    adapters on the base LM. LoRA weights become fp32 masters, read back exactly from our format."""
    from ..checkpoint import _load_base, checkpoint_kind, load_model, resolve_base

    src = resume_dir or (Path(cfg.init_from) if cfg.init_from not in (None, "default") else None)
    if src is None and cfg.init_from == "default":  # the embedded default model (trained or not)
        model = load_model(None, device="cpu", dtype=dtype_name(dtype), base_model=cfg.base_model)
    elif src is None:
        from ..checkpoint import DEFAULT_BASE

        name = cfg.base_model or DEFAULT_BASE
        base_dir = resolve_base(name, None)
        decoder, tokenizer = _load_base(base_dir, dtype)
        config = ClaraConfig(base_model=name if name == DEFAULT_BASE else str(base_dir),
                             doc_max_length=cfg.doc_max_length, compr_rate=cfg.compr_rate,
                             lora_r=cfg.lora_r, lora_alpha=2 * cfg.lora_r)
        model = ClaraModel.from_base(decoder, tokenizer, config, seed=cfg.seed, trained=False, source="fresh")
        model.fingerprint = "fresh"
    else:
        model = load_model(src, device="cpu", dtype=dtype_name(dtype), base_model=cfg.base_model)
    lora_to_fp32(model)
    if src is not None and checkpoint_kind(src) == "clara":
        _restore_exact_adapters(model, src)
    return model


def _restore_exact_adapters(model: ClaraModel, path: Path) -> None:
    """load_model copies adapters into params of the compute dtype; read the stored fp32 values back."""
    from ..checkpoint import read_adapter_tensors

    params = dict(model.decoder.named_parameters())
    with torch.no_grad():
        for key, t in read_adapter_tensors(path).items():
            adapter, inner = key.split("/", 1)
            stem, kind = inner.rsplit(".", 1)
            target = params.get(f"{stem}.{adapter}.{kind}")
            if target is not None:
                target.copy_(t)


def model_fingerprint(model: ClaraModel) -> str:
    """The identity load_model will compute for this model once saved (checkpoint.fingerprint)."""
    from ..checkpoint import base_identity, checkpoint_tensors, fingerprint, resolve_base

    base_dir = resolve_base(model.config.base_model, None)
    return fingerprint(model.config, base_identity(base_dir),
                       checkpoint_tensors(model, model.n_base_tokens, full_rows=model.full_rows),
                       model.retrieval_center)


def export_model(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "bf16",
                 rank: int | None = None, expand: int | None = None) -> Path:
    """A trained OUT -> a shippable model folder: adapters and rows cast to `dtype`, no trainer state.

    `expand` records how many sources `ask` reads as raw text by default (config.expand, ours;
    None keeps the run's): a setting of the shipped model, not of its weights or fingerprint.

    With `rank`, every LoRA pair is cut to its best rank-`rank` product first (`truncate_lora`):
    a LoRA r 64 run ships at a quarter of its size. The compressor changes with it, so stores
    must be recompressed (the fingerprint says so)."""
    from ..checkpoint import load_model

    if rank is not None:
        with tempfile.TemporaryDirectory(prefix="clara-export-") as tmp:
            reduced = _write_reduced_rank(Path(src), Path(tmp) / "reduced", rank)
            return _export_loaded(load_model(reduced, device="cpu", dtype="fp32"), reduced, dst, dtype, src, expand)
    return _export_loaded(load_model(src, device="cpu", dtype="fp32"), Path(src), dst, dtype, src, expand)


def _export_loaded(model: ClaraModel, folder: Path, dst: str | os.PathLike, dtype: str,
                   src: str | os.PathLike, expand: int | None = None) -> Path:
    from ..checkpoint import save_model

    if expand is not None:
        model.config.expand = expand
    lora_to_fp32(model)
    _restore_exact_adapters(model, folder)
    target = resolve_dtype(dtype)
    for p in model.decoder.parameters():
        p.data = p.data.to(target)
    model.fingerprint = model_fingerprint(model)
    meta = json.loads((folder / "clara.json").read_text())
    extra = {k: meta[k] for k in ("training", "history", "rank_reduced") if k in meta}
    return save_model(model, dst, trained=True, extra={**extra, "exported_from": str(src)})


def truncate_lora(tensors: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """Each LoRA pair (A: r x in, B: out x r) -> the pair of rank `rank` whose product B·A is the
    best approximation of the original's (Eckart-Young: the top singular vectors of B·A), in
    fp32. The scale alpha/r must keep its value (alpha scaled by rank/r). Other tensors pass."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if ".lora_B." in key:
            continue
        if ".lora_A." not in key:
            out[key] = t
            continue
        b_key = key.replace(".lora_A.", ".lora_B.")
        a, b = t.double(), tensors[b_key].double()          # (r, in), (out, r)
        if rank >= a.shape[0]:
            raise UsageError(f"--rank {rank}: the adapters have rank {a.shape[0]} already")
        qb, rb = torch.linalg.qr(b)                          # B = Qb Rb, Qb (out, r)
        qa, ra = torch.linalg.qr(a.T)                        # A^T = Qa Ra, Qa (in, r)
        u, s, vh = torch.linalg.svd(rb @ ra.T)               # the r x r core of B·A = Qb (Rb Ra^T) Qa^T
        root = s[:rank].sqrt()
        out[b_key] = ((qb @ u[:, :rank]) * root).float().contiguous()          # (out, rank)
        out[key] = (root[:, None] * (vh[:rank] @ qa.T)).float().contiguous()   # (rank, in)
    return out


def _write_reduced_rank(src: Path, folder: Path, rank: int) -> Path:
    """A copy of model folder `src` with every adapter cut to `rank` (truncate_lora) and its config
    saying so, for load_model to read as any model of that rank."""
    from safetensors.torch import save_file

    from ..checkpoint import adapter_files, read_adapter_tensors

    meta = json.loads((src / "clara.json").read_text())
    config = meta["config"]
    old_rank = int(config["lora_r"])
    reduced = truncate_lora(read_adapter_tensors(src), rank)
    folder.mkdir(parents=True)
    for path in set(_model_files(src)) - set(adapter_files(src)):
        shutil.copy2(path, folder / path.name)
    for name in sorted({k.split("/", 1)[0] for k in reduced}):
        save_file({k: v for k, v in reduced.items() if k.split("/", 1)[0] == name},
                  str(folder / f"adapters-{name}.safetensors"))
    alpha = config["lora_alpha"] * rank / old_rank  # the same scale alpha / r
    config["lora_alpha"] = int(alpha) if alpha == int(alpha) else alpha
    config["lora_r"] = rank
    meta["rank_reduced"] = {"from": old_rank, "to": rank}
    (folder / "clara.json").write_text(json.dumps(meta, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------- checkpoints
def _save_checkpoint(tm: Trainable, out: Path, cfg: TrainConfig, digest: str, total: int, step: int,
                     consumed: int, history: list, opt, sched, *, done: bool, seconds: float) -> None:
    """Model + trainer state into a temp folder beside OUT, then swapped in by rename."""
    from ..checkpoint import write_model_files

    model = tm.model
    tm.write_back()
    model.trained = True
    model.fingerprint = model_fingerprint(model)
    with staged_folder(out, aside=_prev(out), prefix=f".{out.name}.ckpt.") as tmp:
        # the data file by name and digest: a shipped model does not carry the trainer's paths
        training = {"stage": cfg.stage, "step": step, "total_steps": total, "data": Path(cfg.data).name,
                    "data_sha256": digest, "examples_seen": consumed}
        write_model_files(model, tmp, trained=True,
                          extra={"training": training, "history": training_history(cfg.init_from, training),
                                 **rank_reduction(cfg.init_from)})
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _get_rng(),
                    "mem_rows": tm.mem_rows.detach().cpu() if tm.mem_rows is not None else None},
                   tmp / "trainer.pt")
        state = {"format": STATE_FORMAT, "stage": cfg.stage, "step": step, "total_steps": total,
                 "consumed": consumed, "done": done, "data_sha256": digest, "config": cfg.identity(),
                 "fingerprint": model.fingerprint, "dtype": dtype_name(model.dtype), "seconds": round(seconds, 2),
                 "history": history}
        (tmp / "train_state.json").write_text(json.dumps(state) + "\n")


def kept_steps_dir(out: str | os.PathLike) -> Path:
    """Where `--keep-every` keeps a run's step models: OUT-steps/step-N, beside OUT."""
    out = Path(out)
    return out.parent / f"{out.name}-steps"


def _keep_step(out: Path, step: int) -> None:
    """The model files of the checkpoint just saved (no optimizer or trainer state), copied to
    OUT-steps/step-N: a model to evaluate or export, so that a step can be chosen on the
    development split after the run has gone past it."""
    with staged_folder(kept_steps_dir(out) / f"step-{step}") as tmp:
        for path in _model_files(out):
            shutil.copy2(path, tmp / path.name)


def _model_files(folder: Path) -> list[Path]:
    """A run folder's model files: everything but the trainer's own state."""
    return [p for p in folder.iterdir() if p.is_file() and p.name not in ("trainer.pt", "train_state.json")]


def _init_meta(init_from: str | None) -> dict:
    """clara.json of the model a run starts from ({} for none, Apple's format or an untrained default)."""
    if init_from is None:
        return {}
    from ..checkpoint import DEFAULT_MODEL_DIR

    meta_file = (DEFAULT_MODEL_DIR if init_from == "default" else Path(init_from)) / "clara.json"
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def rank_reduction(init_from: str | None) -> dict:
    """{"rank_reduced": {"from", "to"}} when the model a run starts from was cut to a lower LoRA rank
    (`export --rank`): a model trained on after a cut keeps the record of it."""
    meta = _init_meta(init_from)
    return {"rank_reduced": meta["rank_reduced"]} if "rank_reduced" in meta else {}


def training_history(init_from: str | None, current: dict | None = None) -> list[dict]:
    """The training records of the model a run starts from, oldest first (its own "history"
    plus its last "training"): clara.json keeps every stage a model went through. Records of
    the `current` run itself are left out: a resumed run whose init model was exported from
    one of its own checkpoints (`--init-from default` after shipping step N) is one stage."""
    meta = _init_meta(init_from)  # {} for Apple's format or an untrained default: no records
    records = [*meta.get("history", []), *([meta["training"]] if "training" in meta else [])]

    def same_run(rec: dict) -> bool:
        keys = ("stage", "data_sha256", "total_steps")
        return current is not None and all(rec.get(k) == current.get(k) for k in keys)
    return [rec for rec in records if not same_run(rec)]


def _prev(out: Path) -> Path:
    return out.with_name(f".{out.name}.prev")


def _recover(out: Path) -> None:
    """After a crash between the two renames only .OUT.prev exists: put it back. Drop stale temps."""
    prev = _prev(out)
    if not out.exists() and prev.exists():
        os.replace(prev, out)
    elif prev.exists():
        shutil.rmtree(prev, ignore_errors=True)
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.ckpt.*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out.parent.glob(f"..{out.name}.ckpt.*"):  # save_model's own temp folders
            shutil.rmtree(stale, ignore_errors=True)


def _read_state(out: Path) -> dict | None:
    f = out / "train_state.json"
    if not f.is_file():
        if out.exists() and any(out.iterdir()):
            raise UsageError(f"{out} exists and is not a clara train output; choose another --out")
        return None
    state = json.loads(f.read_text())
    if state.get("format") != STATE_FORMAT:
        raise ClaraError(f"{f}: unknown format {state.get('format')!r}")
    return state


def _check_same_run(state: dict, cfg: TrainConfig, digest: str) -> None:
    if state["stage"] != cfg.stage:
        raise UsageError(f"{cfg.out} holds a {state['stage']} run, not {cfg.stage}; choose another --out")
    if state["data_sha256"] != digest:
        raise UsageError(f"{cfg.data} changed since {cfg.out} was started; resume needs the same data "
                         "(or choose another --out)")
    mine, theirs = cfg.identity(), dict(state["config"])
    device = resolve_device(cfg.device)
    if resolve_dtype(theirs.get("dtype", "auto"), device) == resolve_dtype(mine["dtype"], device):
        theirs["dtype"] = mine["dtype"]  # `--dtype auto` where auto is bf16 resumes a `--dtype bf16` run
    for f in fields(TrainConfig):  # a setting added after the run started: it ran with the default
        if f.default is not MISSING:
            theirs.setdefault(f.name, f.default)
    diff = [f"{k} {theirs.get(k)!r} -> {mine[k]!r}" for k in mine if theirs.get(k) != mine[k]]
    if diff:
        raise UsageError(f"{cfg.out} was started with other settings ({'; '.join(diff)}); rerun the same "
                         "command to resume, or choose another --out")


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClaraError(f"another clara train is writing {out}") from None
        yield


def _get_rng() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])]}


def _set_rng(rng: dict) -> None:
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(rng["torch"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))


def _result(cfg: TrainConfig, out: Path, state: dict, *, records: int, dropped: int, seconds: float,
            examples: int, tokens: int, resumed_from: int) -> TrainResult:
    history = state.get("history", [])
    last = [h["loss"] for h in history[-10:]]
    return TrainResult(
        stage=cfg.stage, out=str(out), step=state["step"], total_steps=state.get("total_steps", state["step"]),
        done=bool(state["done"]), examples_seen=state["consumed"], records=records, dropped_heldout=dropped,
        epochs_done=round(state["consumed"] / max(records, 1), 3),
        loss_first=history[0]["loss"] if history else None,
        loss_last=round(sum(last) / len(last), 5) if last else None,
        seconds=round(seconds, 2), examples_per_s=round(examples / seconds, 3) if seconds else 0.0,
        tokens_per_s=round(tokens / seconds, 1) if seconds else 0.0, resumed_from=resumed_from,
        fingerprint=state.get("fingerprint", ""), dtype=state.get("dtype", ""),
        machine=device_name(resolve_device(cfg.device)), history=history)
