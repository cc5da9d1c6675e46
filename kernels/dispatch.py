"""Backend selection: Triton on CUDA, the Triton interpreter on CPU, else torch.

The Triton modules are imported lazily, on first use, because ``TRITON_INTERPRET=1``
is read when a kernel is *decorated*: importing them eagerly would freeze the mode
before a test or a user had a chance to set the variable.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

import torch

BACKENDS = ("triton", "interpreter", "torch")

#: Set ``CLARA_KERNELS=torch`` to force the torch reference everywhere (debugging, A/B).
FORCE_ENV = "CLARA_KERNELS"


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (Linux only)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_requested() -> bool:
    """True when the Triton interpreter is switched on in the environment."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend(device: torch.device | str | None = None) -> str:
    """Name of the backend a call on ``device`` would use: "triton", "interpreter" or "torch".

    Without an argument, the device is CUDA when one is present, else CPU.
    """
    if os.environ.get(FORCE_ENV, "").lower() == "torch" or not triton_available():
        return "torch"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if interpreter_requested():
        return "interpreter"
    if torch.device(device).type == "cuda":
        return "triton"
    return "torch"


def load_kernel_module(name: str) -> ModuleType:
    """Import ``clara_kernels.<name>`` (a Triton module) and check its mode still matches.

    A module decorated in compiled mode cannot run CPU tensors, and one decorated in
    interpreter mode would silently run CUDA tensors through the (slow) interpreter;
    both happen only if ``TRITON_INTERPRET`` changed after the first kernel call.
    """
    module = importlib.import_module(f"{__package__}.{name}")
    if module.INTERPRETED != interpreter_requested():
        raise RuntimeError(
            "TRITON_INTERPRET changed after clara_kernels' Triton kernels were first used; "
            "set it before the first call (it is read when the kernels are compiled)."
        )
    return module
