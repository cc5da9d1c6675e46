"""JSON Lines, parsed one way everywhere (documents, questions, training data, stdin): blank
lines skipped, every problem named `FILE:LINE: malformed JSON (why)`. Each caller decides
whether a bad line stops the command (training, eval) or is rejected and skipped (ingest, ask)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UsageError


class BadJsonLine(UsageError):
    """A line that is not JSON; its message names FILE:LINE."""


def parse_json_line(line: str | bytes, where: str) -> object:
    """One line's JSON value, or BadJsonLine naming `where` (FILE:LINE)."""
    try:
        return json.loads(line)
    except ValueError as err:  # JSONDecodeError, and UnicodeDecodeError for bytes
        raise BadJsonLine(f"{where}: malformed JSON ({getattr(err, 'msg', None) or err})") from None


def json_lines(lines: Iterable[str], name: str) -> Iterator[tuple[str, str]]:
    """(FILE:LINE, line) for each non-blank line, numbered from 1."""
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield f"{name}:{number}", line


def read_json_lines(path: str | Path) -> Iterator[tuple[str, object]]:
    """(FILE:LINE, value) for each non-blank line of a UTF-8 file; the first bad line raises."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            for where, line in json_lines(f, str(path)):
                yield where, parse_json_line(line, where)
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror or err}") from None
