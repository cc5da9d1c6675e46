"""Fault injection for the crash tests: named points where a test may kill the process.

``CLARA_FAULT="point:n[:action],..."`` kills this process (SIGKILL, or raises ENOSPC with
action ``enospc``) the n-th time it passes ``point``. Points are named "write", "commit",
"swap", "committed", "locked", "doc", qualified by the stage `clara update` is in
("compress/commit:3"). ``CLARA_FAULT_TRACE=FILE`` appends every point passed to FILE. When
neither is set, `fault_point` is one global test: nothing to pay in production.
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def _parse_faults(spec: str | None) -> dict[str, tuple[int, str]] | None:
    if not spec:
        return None
    faults = {}
    for part in spec.split(","):
        bits = part.strip().split(":")
        if len(bits) not in (2, 3) or not bits[1].isdigit():
            raise ValueError(f"bad CLARA_FAULT entry {part!r} (expected point:n[:kill|enospc])")
        faults[bits[0]] = (int(bits[1]), bits[2] if len(bits) == 3 else "kill")
    return faults


_FAULTS = _parse_faults(os.environ.get("CLARA_FAULT"))
_FAULT_TRACE = os.environ.get("CLARA_FAULT_TRACE") or None
_FAULT_ON = _FAULTS is not None or _FAULT_TRACE is not None
_fault_stage = ""
_fault_counts: dict[str, int] = {}


def faults_enabled() -> bool:
    """Whether a fault plan or trace is active (production runs: never)."""
    return _FAULT_ON


def configure_faults(spec: str | None, trace: str | None = None) -> None:
    """Set (or clear, with None) the fault plan in-process, e.g. in a forked test child."""
    global _FAULTS, _FAULT_TRACE, _FAULT_ON
    _FAULTS, _FAULT_TRACE = _parse_faults(spec), trace
    _FAULT_ON = _FAULTS is not None or _FAULT_TRACE is not None
    _fault_counts.clear()


def set_fault_stage(stage: str) -> None:
    """Name the pipeline stage (ingest/compress/index) that qualifies fault point names."""
    global _fault_stage
    _fault_stage = stage


def fault_point(name: str) -> None:
    """A place where tests may kill this process; free unless CLARA_FAULT(_TRACE) is set."""
    if _FAULT_ON:
        _fault_hit(name)


def _fault_hit(name: str) -> None:
    full = f"{_fault_stage}/{name}" if _fault_stage else name
    for key in {name, full}:
        _fault_counts[key] = _fault_counts.get(key, 0) + 1
    if _FAULT_TRACE:
        with open(_FAULT_TRACE, "a") as f:
            f.write(full + "\n")
    for key in (full, name):
        plan = (_FAULTS or {}).get(key)
        if plan and _fault_counts[key] == plan[0]:
            if plan[1] == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {full}>")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["configure_faults", "fault_point", "faults_enabled", "set_fault_stage"]
