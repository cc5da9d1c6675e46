"""Progress bars and notices on stderr: shown to people at a terminal, silent in pipes and cron."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr, disabled when stderr is not a terminal (or when asked)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()), leave=False)


def notice(message: str) -> None:
    """One line for the person at the terminal; never on stdout, which belongs to results."""
    print(f"clara: {message}", file=sys.stderr)
