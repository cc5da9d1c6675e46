"""Which malloc the trainer runs on, and what to set when it is not the fast one.

A CPU training step allocates activations of a different size every micro-batch. Under glibc's
malloc a long run fragments the heap and slows down step after step. jemalloc with its default
decay hands freed pages back to the kernel, which zero-fills them again at the next touch
(43.6 M page faults in 40 scp steps). `make train-*` therefore preloads jemalloc (shipped in the
ray wheel) with JEMALLOC_CONF: pages are handed back lazily, and reusing them costs nothing
until the kernel needs the memory (docs/TRAINING.md, "Long runs and the allocator", "Page faults").
An allocator is chosen before the process starts, so `clara train` can only say what to set.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

JEMALLOC_CONF = "muzzy_decay_ms:-1,oversize_threshold:0"  # the Makefile's JEMALLOC_CONF


def jemalloc_library() -> Path | None:
    """libjemalloc.so inside the installed ray wheel, if any."""
    spec = importlib.util.find_spec("ray")
    if spec is None or spec.origin is None:
        return None
    lib = Path(spec.origin).parent / "core" / "libjemalloc.so"
    return lib if lib.is_file() else None


def _jemalloc_loaded() -> bool | None:
    """Whether jemalloc is mapped into this process; None where /proc does not say (not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            return "libjemalloc" in maps.read()
    except OSError:
        return None


def allocator() -> str:
    """This process's malloc, for benchmark lines."""
    loaded = _jemalloc_loaded()
    if not loaded:
        return "glibc malloc" if loaded is False else "unknown"
    return f"jemalloc, MALLOC_CONF={os.environ.get('MALLOC_CONF', '')!r}"


def allocator_advice() -> str | None:
    """One line for a CPU training run not on the trainer's allocator settings, else None."""
    lib, loaded = jemalloc_library(), _jemalloc_loaded()
    if lib is None or loaded is None or (loaded and JEMALLOC_CONF in os.environ.get("MALLOC_CONF", "")):
        return None
    return (f"CPU training runs faster with the allocator `make train-*` uses: "
            f"LD_PRELOAD={lib} MALLOC_CONF={JEMALLOC_CONF} clara train ...")
