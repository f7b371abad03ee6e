"""One-line messages for the person running a job, taken from exceptions that may span many lines."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's text (Spark's errors carry whole JVM traces), or its
    type's name when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
