"""Errors users see as one line on stderr, each with a documented exit code.

Exit codes (README "Exit codes"): 0 ok, 1 error, 2 usage, 3 partial failure
(some inputs rejected, the rest committed), 4 store busy, 5 model mismatch,
6 corrupt data, 7 no matching sources (search/ask retrieved nothing to answer from).
"""

from __future__ import annotations


class ClaraError(Exception):
    """Base class: a problem we can explain in one line."""

    exit_code = 1


class UsageError(ClaraError):
    exit_code = 2


class PartialFailure(ClaraError):
    """Some inputs were rejected; the good ones were committed."""

    exit_code = 3


class StoreBusyError(ClaraError):
    exit_code = 4


class ModelMismatchError(ClaraError):
    exit_code = 5


class CorruptDataError(ClaraError):
    exit_code = 6


class NoSourcesError(ClaraError):
    """Retrieval found nothing (above the score floor): no answer is made up without sources."""

    exit_code = 7


class MissingMemoryError(ClaraError, KeyError):
    """Asked for memory rows the store does not have (chunk not compressed, or deleted)."""

    __str__ = Exception.__str__  # KeyError would quote the message
