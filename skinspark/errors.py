"""The base of every job's stopping error, the configuration error, and one-line messages taken from
exceptions that span many lines (Spark's carry whole JVM traces, TensorFlow's the graph node's
definition)."""

from __future__ import annotations

import re

# Lines that open an error's text without saying what went wrong: TensorFlow's op errors start with
# "Graph execution error:" and a stack of the node's definition before the message proper.
_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "<stack traces unavailable>")
# Prefixes TensorFlow puts before the message proper on its line: the function an eager op ran in, and (in
# TensorFlow >= 2.16) the tf.data stage the error came from.
_PREFIX = re.compile(
    r"^(\{\{function_node [^}]*\}\}\s*|Error in user-defined function passed to \S+ transformation with "
    r"iterator: \S+: )+"
)


class ConfigError(ValueError):
    """A job's configuration that cannot be used: a file or override naming an unknown key or giving a
    value of the wrong type, or settings that a config's `check()` refuses. A job turns it into its own
    stopping error (or exit code 2) with the message unchanged."""


class JobError(RuntimeError):
    """A problem that stops a whole job; the message is one line meant for the person running it."""


class TableError(JobError):
    """An ingested table that cannot be read as one: no complete `_manifest.json`, or a split whose rows
    do not all arrive. Each stage that reads a table says what it means for its job (training's
    TrainInputError wraps it)."""


class ImageError(ValueError):
    """One image that cannot be turned into pixels (or read at all); `reason` is one of the
    `skinspark.schema.REASON_*` codes. Each job turns it into a row, never a stopped job."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def first_line(error: BaseException) -> str:
    """The first line of an exception's text that says something, or its type's name when it has no
    text."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    meaningful = [_PREFIX.sub("", line) for line in lines if not line.startswith(_NOISE)] or lines
    return meaningful[0] if meaningful else type(error).__name__


def typed_line(error: BaseException) -> str:
    """`Type: first line`, for reports where the kind of error matters (a rank's failure)."""
    text = first_line(error)
    name = type(error).__name__
    return name if text == name else f"{name}: {text}"
