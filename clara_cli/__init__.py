"""clara: compress a corpus into CLaRa memory tokens, retrieve and answer from them."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ClaraModel", "ClaraStore", "load_model", "open_store", "__version__"]


def __getattr__(name: str):
    # Lazy: `import clara_cli` must stay cheap (torch/transformers load on demand).
    if name == "ClaraModel":
        from .model import ClaraModel

        return ClaraModel
    if name == "load_model":  # a checkpoint folder (ours or Apple's), or None: the default model
        from .checkpoint import load_model

        return load_model
    if name in ("open_store", "ClaraStore"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
